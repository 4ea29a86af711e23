package claim

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// URLOpener opens a Backend from a URL. Backends register one per scheme
// with Register, from an init function, without dialling anything.
type URLOpener interface {
	OpenBackendURL(ctx context.Context, u *url.URL) (Backend, error)
}

// URLOpenerFunc adapts a function to URLOpener.
type URLOpenerFunc func(ctx context.Context, u *url.URL) (Backend, error)

// OpenBackendURL calls f.
func (f URLOpenerFunc) OpenBackendURL(ctx context.Context, u *url.URL) (Backend, error) {
	return f(ctx, u)
}

var (
	registryMu sync.RWMutex
	registry   = map[string]URLOpener{}
)

// Register makes a backend available under scheme to Open. It panics if
// scheme is empty, opener is nil, or scheme is already registered: those
// are programming errors, found at init.
func Register(scheme string, opener URLOpener) {
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

// Open opens the backend named by rawURL's scheme, which must have been
// registered, typically by a blank import of the backend's package:
//
//	import _ "github.com/stampede-go/stampede/claim/redis"
//	b, err := claim.Open(ctx, "redis://localhost:6379/0")
//
// Errors name the URL with its credentials redacted.
func Open(ctx context.Context, rawURL string) (Backend, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the URL, secrets included: report only the kind.
		return nil, fmt.Errorf("claim: open: malformed URL %q", RedactURL(rawURL))
	}
	registryMu.RLock()
	op, ok := registry[u.Scheme]
	registryMu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("claim: open %q: unknown scheme %q (registered: %s; did you import the backend's package?)",
			RedactURL(rawURL), u.Scheme, strings.Join(Schemes(), ", "))
	}
	b, err := op.OpenBackendURL(ctx, u)
	if err != nil {
		return nil, fmt.Errorf("claim: open %q: %w", RedactURL(rawURL), err)
	}
	return b, nil
}

// secretParam reports whether a query parameter name may hold a secret.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"token", "pass", "secret", "auth", "key", "credential", "signature"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// RedactURL returns rawURL with its password, every query parameter that
// may hold a secret (token, password, secret, auth, key, ...), and the
// password of any URL-valued parameter (endpoint=http://u:pw@h) replaced by
// "xxxxx". A URL that does not parse is replaced whole.
func RedactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<malformed URL>"
	}
	return Redact(u)
}

// Redact is RedactURL for a parsed URL.
func Redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, has := c.User.Password(); has {
			c.User = url.UserPassword(c.User.Username(), "xxxxx")
		}
	}
	if c.RawQuery != "" {
		q := c.Query()
		for k, vs := range q {
			for i, v := range vs {
				switch {
				case secretParam(k):
					vs[i] = "xxxxx"
				case strings.Contains(v, "@"):
					vs[i] = redactValue(v)
				}
			}
		}
		c.RawQuery = q.Encode()
	}
	return c.String()
}

// redactValue redacts a parameter value holding an '@': a URL-valued
// parameter (an endpoint) may carry credentials of its own. A well-formed
// http://USER:PASSWORD@HOST/... keeps all but its password; anything else
// (a URL that does not parse, or whose '@' is not the end of its user
// info, as when a password holds '#', '/' or a space) is hidden whole.
func redactValue(v string) string {
	inner, err := url.Parse(v)
	if err == nil && inner.User != nil && strings.Count(v, "@") == 1 {
		_, rest, _ := strings.Cut(v, "://")
		if at := strings.IndexByte(rest, '@'); at >= 0 && !strings.ContainsAny(rest[:at], "/?#") {
			return Redact(inner)
		}
	}
	return "xxxxx"
}

// Params reads a URL's query parameters for a URLOpener: every parameter
// the opener reads is marked used, and Err reports the first malformed
// value or any parameter nobody read (an unknown parameter is an error,
// never ignored).
type Params struct {
	v    url.Values
	used map[string]bool
	err  error
}

// NewParams wraps u's query.
func NewParams(u *url.URL) *Params {
	return &Params{v: u.Query(), used: map[string]bool{}}
}

func (p *Params) get(name string) (string, bool) {
	p.used[name] = true
	vs, ok := p.v[name]
	if !ok || len(vs) == 0 {
		return "", false
	}
	if len(vs) > 1 && p.err == nil {
		p.err = fmt.Errorf("URL parameter %q given %d times", name, len(vs))
	}
	return vs[0], true
}

func (p *Params) fail(name, val, want string) {
	if p.err == nil {
		shown := val
		if secretParam(name) {
			shown = "xxxxx"
		}
		p.err = fmt.Errorf("URL parameter %s=%q: want %s", name, shown, want)
	}
}

// String returns the parameter, or def if absent.
func (p *Params) String(name, def string) string {
	if s, ok := p.get(name); ok {
		return s
	}
	return def
}

// Duration returns the parameter parsed by time.ParseDuration, or def.
func (p *Params) Duration(name string, def time.Duration) time.Duration {
	s, ok := p.get(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		p.fail(name, s, "a non-negative duration such as 250ms")
		return def
	}
	return d
}

// Int returns the parameter as a non-negative int, or def.
func (p *Params) Int(name string, def int) int {
	s, ok := p.get(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		p.fail(name, s, "a non-negative integer")
		return def
	}
	return n
}

// Bool returns the parameter parsed by strconv.ParseBool, or def.
func (p *Params) Bool(name string, def bool) bool {
	s, ok := p.get(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		p.fail(name, s, "true or false")
		return def
	}
	return b
}

// Err returns the first malformed value, or an error naming the parameters
// that were given but never read.
func (p *Params) Err() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for k := range p.v {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return fmt.Errorf("unknown URL parameter(s): %s", strings.Join(unknown, ", "))
	}
	return nil
}
