package claim

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

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
// or malformed parameter is an error. Two parameters are the Client's on
// every backend: op_timeout (Options.OpTimeout, e.g. op_timeout=2s) and
// lazy (Options.Lazy, lazy=true).
//
// Open checks the server before it returns (see Connect), unless lazy:
// it connects, authenticates, and finds what the backend needs (a table,
// a schema), within ctx and the operation timeout. A wrong password or a
// missing table fails with an error wrapping ErrConfig, a server that
// cannot be reached or does not answer with one wrapping ErrUnavailable.
// Errors name the URL with its credentials redacted.
func Open(ctx context.Context, rawURL string) (*Client, error) {
	return OpenOptions(ctx, rawURL, nil)
}

// OpenOptions is Open with Options for the Client; parameters in the URL
// (op_timeout, lazy) override theirs.
func OpenOptions(ctx context.Context, rawURL string, opt *Options) (*Client, error) {
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
	var o Options
	if opt != nil {
		o = *opt
	}
	if err := clientParams(u, &o); err != nil {
		return nil, fmt.Errorf("claim: open %q: %w", RedactURL(rawURL), err)
	}
	// The driver's own connecting (where it dials at open) is bounded
	// like the check that follows.
	octx, cancel := context.WithTimeout(ctx, cmpOr(o.OpTimeout, DefaultOpTimeout))
	defer cancel()
	d, err := op.OpenURL(octx, u)
	if err != nil {
		// The open's bound, or the driver's own connect timeout (which may
		// fire first when the two are equal), is unavailability; a
		// configuration error stays one.
		if ctx.Err() == nil && !errors.Is(err, ErrConfig) && !errors.Is(err, ErrUnavailable) &&
			(octx.Err() != nil || errors.Is(err, context.DeadlineExceeded)) {
			err = fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("claim: open %q: %w", RedactURL(rawURL), err)
	}
	c, err := connect(ctx, d, &o)
	if err != nil {
		return nil, fmt.Errorf("claim: open %q: ping: %w", RedactURL(rawURL), err)
	}
	return c, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// clientParams reads the Client's own parameters into o: op_timeout,
// taken out of u's query, and lazy, left in it for the driver
// (driver.Params.Lazy). A query that does not parse
// is left whole for the driver to report.
func clientParams(u *url.URL, o *Options) error {
	if u.RawQuery == "" {
		return nil
	}
	if _, err := url.ParseQuery(u.RawQuery); err != nil {
		return nil
	}
	var keep []string
	for _, kv := range strings.Split(u.RawQuery, "&") {
		k, v, _ := strings.Cut(kv, "=")
		k, _ = url.QueryUnescape(k)
		v, _ = url.QueryUnescape(v)
		switch k {
		case "op_timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return fmt.Errorf("URL parameter op_timeout=%q: want a positive duration such as 2s", v)
			}
			o.OpTimeout = d
		case "lazy":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return fmt.Errorf("URL parameter lazy=%q: want true or false", v)
			}
			o.Lazy = b
			keep = append(keep, kv) // also for the driver: driver.Params.Lazy
		default:
			keep = append(keep, kv)
		}
	}
	u.RawQuery = strings.Join(keep, "&")
	return nil
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
