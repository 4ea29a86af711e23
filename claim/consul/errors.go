package consul

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
)

// errNotConsul: an answer without the X-Consul-Index header every
// answer of Consul's KV API carries.
var errNotConsul = errors.New("the server is not a Consul agent (no X-Consul-Index in its answer)")

// errUnreadable: a read-only transaction whose answer lacks results,
// which Consul leaves out when the token may not read them.
var errUnreadable = errors.New("the ACL token may not read the key prefix (Consul left the keys out of its answer)")

// maxBody is how much of an unexpected reply's body an error keeps.
const maxBody = 256

// classify maps an error of consul/api: a configuration error (isConfig,
// and HTTP 400 or 404 from Consul's API) wraps driver.ErrConfig; a 413 (a
// request over the server's limits) driver.ErrTooLarge; anything else is
// returned as is (the client takes it for unavailability). A long reply
// body is cut short.
func classify(err error) error {
	if err == nil || errors.Is(err, driver.ErrConfig) || errors.Is(err, driver.ErrTooLarge) {
		return err
	}
	var se capi.StatusError
	if errors.As(err, &se) {
		if _, direct := err.(capi.StatusError); direct && len(se.Body) > maxBody {
			se.Body = se.Body[:maxBody] + "..."
			err = se
		}
		switch se.Code {
		case http.StatusRequestEntityTooLarge:
			return fmt.Errorf("%w (%w)", driver.ErrTooLarge, err)
		case http.StatusNotFound:
			// Consul's KV and transaction APIs never answer 404 for a
			// write or a transaction, and answer a read of an absent key
			// with 404 and X-Consul-Index (checked by index).
			return driver.Misconfigured(fmt.Errorf("the server is not a Consul agent (HTTP 404 for Consul's API): %w", err))
		case http.StatusBadRequest:
			// The driver's requests are well formed: a server that
			// refuses them so is of another kind, or refuses something
			// the URL asked for. Asking again will not help.
			return driver.Misconfigured(fmt.Errorf("the server refuses the driver's requests (HTTP 400): %w", err))
		}
	}
	if isConfig(err) {
		return driver.Misconfigured(err)
	}
	return err
}

// isConfig reports whether err is one that waiting will not fix: HTTP 401
// (a proxy's basic auth) or 403 (an ACL token that is unknown, "ACL not
// found", or lacks a permission, "Permission denied"), a reply that is
// not HTTP, or not Consul's JSON, a server that speaks before it is asked,
// a plain-HTTP agent at a consuls:// URL, or a TLS handshake that failed
// for its certificates or versions.
func isConfig(err error) bool {
	var se capi.StatusError
	if errors.As(err, &se) {
		return se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden
	}
	var (
		syntax *json.SyntaxError
		typ    *json.UnmarshalTypeError
	)
	if errors.As(err, &syntax) || errors.As(err, &typ) || driver.TLSRefused(err) {
		return true
	}
	if speaksFirst(err) {
		return true
	}
	// net/http names these in text only.
	msg := err.Error()
	for _, s := range [...]string{
		"server gave HTTP response to HTTPS client",
		"malformed HTTP response",
		"malformed HTTP status code",
		"malformed HTTP version",
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// speaksFirst reports net/http's error for a connection on which the
// server sent bytes before any request (readLoopPeekFailLocked, wrapping
// no error: a connection that failed wraps its cause): a server of
// another kind, which greets its clients (or answers before it has read
// the request).
func speaksFirst(err error) bool {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if strings.HasPrefix(e.Error(), "readLoopPeekFailLocked") && errors.Unwrap(e) == nil {
			return true
		}
	}
	return false
}

// indexed checks a read's QueryMeta: Consul's KV API always sends
// X-Consul-Index (at least 1); an answer without it (a 404 from another
// HTTP server reads as an absent key) is errNotConsul.
func indexed(meta *capi.QueryMeta) error {
	if meta == nil || meta.LastIndex == 0 {
		return driver.Misconfigured(errNotConsul)
	}
	return nil
}
