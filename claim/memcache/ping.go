package memcache

import (
	"context"
	"errors"
	"strconv"
	"strings"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
)

// Ping implements driver.Pinger: a version command to every server (one
// round trip each, one after the other), which dials it (and so makes the
// TLS handshake, client certificate included) and checks that it answers
// as memcached does.
func (b *backend) Ping(ctx context.Context) error {
	return do0(ctx, b, b.c.Ping)
}

// classify wraps with driver.ErrConfig (Misconfigured) the errors that
// say the servers are not what this client was configured for, keeping
// gomemcache's error underneath:
//
//   - a reply that does not parse as memcached's text protocol: another
//     kind of server at the address (gomemcache's "unexpected response
//     line", "unexpected line in get response", "corrupt get result",
//     or a counter reply that is not a number, *strconv.NumError);
//     memcached's own SERVER_ERROR and CLIENT_ERROR replies are not,
//     nor its "ERROR Too many open connections" (unavailability);
//   - TLS refused: a certificate that does not verify
//     (*tls.CertificateVerificationError), a server that does not speak
//     TLS (tls.RecordHeaderError), an alert from the server such as
//     "certificate required" (*net.OpError "remote error");
//   - no server to talk to (gomemcache.ErrNoServers: an empty list, or
//     addresses gomemcache.New could not resolve; it never retries).
//
// Anything else (refused or dropped connections, timeouts) is left to
// the client to report as unavailability.
func classify(err error) error {
	if err == nil || errors.Is(err, driver.ErrConfig) {
		return err
	}
	if notMemcached(err) || driver.TLSRefused(err) || errors.Is(err, gomemcache.ErrNoServers) {
		return driver.Misconfigured(err)
	}
	return err
}

// notMemcached reports a reply gomemcache could not parse.
func notMemcached(err error) bool {
	var ne *strconv.NumError
	if errors.As(err, &ne) {
		return true
	}
	msg := err.Error()
	if strings.Contains(msg, "SERVER_ERROR") || strings.Contains(msg, "CLIENT_ERROR") ||
		strings.Contains(msg, "Too many open connections") {
		// memcached's own replies: a refusal, not another server.
		return false
	}
	return strings.HasPrefix(msg, "memcache: unexpected ") || strings.HasPrefix(msg, "memcache: corrupt get result")
}
