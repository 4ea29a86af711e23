package claim

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"github.com/stampede-go/stampede/claim/driver"
)

var (
	registryMu sync.RWMutex
	registry   = map[string]driver.URLOpener{}
)

// Register makes a backend available under scheme to Open. Backend
// packages call it from an init function, without dialling anything. It
// panics if scheme is empty, opener is nil, or scheme is already
// registered: those are programming errors, found at init.
func Register(scheme string, opener driver.URLOpener) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if scheme == "" || opener == nil {
		panic("claim: Register with empty scheme or nil opener")
	}
	if _, dup := registry[scheme]; dup {
		panic("claim: Register called twice for scheme " + scheme)
	}
	registry[scheme] = opener
}

// Schemes returns the registered schemes, sorted.
func Schemes() []string {
	registryMu.RLock()
	defer registryMu.RUnlock()
	out := make([]string, 0, len(registry))
	for s := range registry {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// Open opens a Client on the backend named by rawURL's scheme, which must
// have been registered, typically by a blank import of the backend's
// package:
//
//	import _ "github.com/stampede-go/stampede/claim/redis"
//	c, err := claim.Open(ctx, "redis://localhost:6379/0")
//
// Each backend's package documents its URL form and parameters; an unknown
// or malformed parameter is an error. Errors name the URL with its
// credentials redacted.
func Open(ctx context.Context, rawURL string) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, secrets included: report only the kind.
		return nil, fmt.Errorf("claim: open %q: malformed URL: %s", RedactURL(rawURL), urlProblem(err))
	}
	registryMu.RLock()
	op, ok := registry[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("claim: open %q: unknown scheme %q (registered: %s; did you import the backend's package?)",
			RedactURL(rawURL), u.Scheme, strings.Join(Schemes(), ", "))
	}
	d, err := op.OpenURL(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("claim: open %q: %w", RedactURL(rawURL), err)
	}
	return NewClient(d, nil), nil
}

// urlProblem says what url.Parse disliked, without the URL.
func urlProblem(err error) string {
	if ue, ok := err.(*url.Error); ok {
		err = ue.Err
	}
	s := err.Error()
	// url's inner errors quote the offending part, which may be a
	// password: keep only their kind.
	if i := strings.IndexByte(s, '"'); i > 0 {
		s = strings.TrimSpace(s[:i])
	}
	return s
}

// RedactURL returns rawURL with its password, every query parameter that
// may hold a secret (token, password, secret, auth, key, ...), and the
// password of any URL-valued parameter (endpoint=http://u:pw@h) replaced by
// "xxxxx". A URL that does not parse is replaced whole.
func RedactURL(rawURL string) string { return driver.RedactURL(rawURL) }
