package driver

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// URLOpener opens a Driver from a URL. Drivers register one per scheme
// with claim.Register, from an init function. OpenURL reads u's query with
// NewParams, so an unknown or malformed parameter is an error; its errors
// never contain u's password or secret-named parameters (see Redact).
// claim.Open wraps the Driver in a *claim.Client.
type URLOpener interface {
	OpenURL(ctx context.Context, u *url.URL) (Driver, error)
}

// Params reads a URL's query parameters for a URLOpener: every parameter
// the opener reads is marked used, and Err reports the first malformed
// value, a query that does not parse (a ';' separator, a bad escape), or
// any parameter nobody read: an unknown parameter is an error, never
// ignored. Every driver spells the parameters it shares with others the
// same way: prefix, maxvalue, dial_timeout, clock_skew, and the TLS ones
// read by TLS.
type Params struct {
	v    url.Values
	used map[string]bool
	err  error
}

// NewParams wraps u's query.
func NewParams(u *url.URL) *Params {
	v, err := url.ParseQuery(u.RawQuery)
	// lazy is the client's parameter, left in the query for the drivers
	// that dial at open (Lazy); the others need not read it.
	p := &Params{v: v, used: map[string]bool{"lazy": true}}
	if err != nil {
		// url's error quotes the query, which may hold a secret.
		p.err = fmt.Errorf("URL query does not parse (parameters are separated by '&', values escaped): %s", queryProblem(err))
	}
	return p
}

// queryProblem names what is wrong with a query without repeating it.
func queryProblem(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "semicolon"):
		return "a ';' separator"
	case strings.Contains(s, "escape"):
		return "a malformed %-escape"
	}
	return "malformed"
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

// Lazy reports the client's lazy parameter (claim.Options.Lazy): the
// Client will not check the server at open, so a driver that dials or
// creates its tables in OpenURL should connect on first use instead. The
// client has already checked the parameter's value.
func (p *Params) Lazy() bool {
	b, _ := strconv.ParseBool(p.v.Get("lazy"))
	return b
}

// Has reports whether the parameter was given (and marks it used).
func (p *Params) Has(name string) bool {
	_, ok := p.get(name)
	return ok
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

// TLS reads the TLS parameters every driver spells the same way: cacert
// (PEM file of the CAs to trust instead of the system roots), cert and key
// (PEM files of a client certificate and its key, both or neither),
// servername (default serverName) and skip_verify (testing only). If
// enabled is false (a plain scheme), giving any of them is an error and
// the result is nil. Errors name files, never their contents.
func (p *Params) TLS(enabled bool, serverName string) (*tls.Config, error) {
	f := TLSFiles{
		CA: p.String("cacert", ""), Cert: p.String("cert", ""), Key: p.String("key", ""),
		ServerName: p.String("servername", ""), SkipVerify: p.Bool("skip_verify", false),
	}
	if !enabled {
		if !f.Empty() {
			return nil, fmt.Errorf("URL parameters cacert, cert, key, servername and skip_verify need TLS (the backend's TLS scheme, or tls=true where it has none)")
		}
		return nil, nil
	}
	if f.ServerName == "" {
		f.ServerName = serverName
	}
	c, err := f.Config()
	if err != nil {
		return nil, fmt.Errorf("URL TLS parameters: %w", err)
	}
	return c, nil
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

// Redact is RedactURL for a parsed URL. A query that does not parse is
// replaced whole.
func Redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		if _, has := c.User.Password(); has {
			c.User = url.UserPassword(c.User.Username(), "xxxxx")
		}
	}
	if c.RawQuery != "" {
		q, err := url.ParseQuery(c.RawQuery)
		if err != nil {
			c.RawQuery = "xxxxx"
			return c.String()
		}
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
