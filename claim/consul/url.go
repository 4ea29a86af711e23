package consul

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens consul:// and consuls:// URLs (see the package doc).
type URLOpener struct {
	// TLS selects HTTPS (the consuls scheme).
	TLS bool
}

// tlsParams are the URL parameters driver.Params.TLS reads.
var tlsParams = []string{"cacert", "cert", "key", "servername", "skip_verify"}

// DialTimeout bounds each connection a URL-opened Client makes to the
// agent, TCP and TLS handshake each: claim.DefaultOpTimeout, no longer
// than the Client's own bound on a call (which, through the request's
// context, also bounds them).
const DialTimeout = claim.DefaultOpTimeout

// OpenURL implements driver.URLOpener. It does not dial (claim.Open then
// checks the agent with Ping, unless lazy=true).
func (o *URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	p := driver.NewParams(u)
	cfg := capi.DefaultConfig()
	if u.Host != "" {
		cfg.Address = u.Host
	}
	if tok := p.String("token", ""); tok != "" {
		cfg.Token, cfg.TokenFile = tok, ""
	}
	cfg.Datacenter = p.String("dc", cfg.Datacenter)
	if u.User != nil {
		pw, _ := u.User.Password()
		cfg.HttpAuth = &capi.HttpBasicAuth{Username: u.User.Username(), Password: pw}
	}
	opt := Options{
		Prefix:      p.String("prefix", ""),
		ClockSkew:   p.Duration("clock_skew", 0),
		MaxValueLen: p.Int("maxvalue", 0),
		WaitTime:    p.Duration("wait", 0),
		MaxWatches:  p.Int("maxwatches", 0),
	}
	if p.Has("clock_skew") && opt.ClockSkew == 0 {
		opt.ClockSkew = -1 // clock_skew=0 asked for no margin
	}
	maxConns := cmp.Or(p.Int("maxconns", 0), DefaultMaxConns)
	tlsConfig, err := p.TLS(o.TLS, u.Hostname())
	if err == nil {
		err = p.Err()
	}
	if err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("consul: URL path %q: the key prefix is a parameter now, use ?prefix=", u.Path)
	}
	if o.TLS {
		cfg.Scheme = "https"
		if !slices.ContainsFunc(tlsParams, u.Query().Has) {
			tlsConfig = nil // none in the URL: Consul's CONSUL_* variables decide, as before
		}
	}
	// Two clients with transports of our own: one for the blocking
	// queries (at most MaxWatches connections, each held by one query),
	// one for everything else (at most maxconns), so waiting never takes
	// the connections claims need, the driver's connections to one agent
	// are bounded (Consul refuses a client address more than
	// http_max_conns_per_client), and Close can drop idle connections.
	client := func(conns int) (*capi.Client, *http.Transport, error) {
		c := *cfg
		// DefaultConfig's transport has no TLS config, but its Clone has
		// one (for HTTP/2): drop it, so that consul/api builds its own from
		// cfg.TLSConfig, unless the URL gave one.
		tr := cfg.Transport.Clone()
		tr.TLSClientConfig = nil
		if tlsConfig != nil {
			tr.TLSClientConfig = tlsConfig.Clone()
		}
		tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost = conns, conns
		tr.DialContext = (&net.Dialer{Timeout: DialTimeout, KeepAlive: 30 * time.Second}).DialContext
		tr.TLSHandshakeTimeout = DialTimeout
		c.Transport = tr
		cl, err := capi.NewClient(&c)
		if err != nil {
			// Consul's errors name files, never the token.
			return nil, nil, fmt.Errorf("consul: client: %w", err)
		}
		return cl, tr, nil
	}
	c, tr, err := client(maxConns)
	if err != nil {
		return nil, err
	}
	wc, wtr, err := client(cmp.Or(opt.MaxWatches, DefaultMaxWatches))
	if err != nil {
		return nil, err
	}
	b, err := newBackend(c, opt)
	if err != nil {
		return nil, err
	}
	b.watchKV = wc.KV()
	b.cleanup = func() { tr.CloseIdleConnections(); wtr.CloseIdleConnections() }
	return b, nil
}
