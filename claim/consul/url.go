package consul

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
)

// URLOpener opens consul:// and consuls:// URLs (see the package doc).
type URLOpener struct {
	// TLS selects HTTPS (the consuls scheme).
	TLS bool
}

// OpenBackendURL implements claim.URLOpener. It does not dial.
func (o *URLOpener) OpenBackendURL(_ context.Context, u *url.URL) (claim.Backend, error) {
	p := claim.NewParams(u)
	cfg := capi.DefaultConfig()
	if u.Host != "" {
		cfg.Address = u.Host
	}
	if tok := p.String("token", ""); tok != "" {
		cfg.Token, cfg.TokenFile = tok, ""
	}
	cfg.Datacenter = p.String("dc", cfg.Datacenter)
	if p.Bool("tls", o.TLS) {
		cfg.Scheme = "https"
	}
	cfg.TLSConfig.CAFile = p.String("cafile", cfg.TLSConfig.CAFile)
	cfg.TLSConfig.CertFile = p.String("certfile", cfg.TLSConfig.CertFile)
	cfg.TLSConfig.KeyFile = p.String("keyfile", cfg.TLSConfig.KeyFile)
	cfg.TLSConfig.InsecureSkipVerify = p.Bool("insecure", cfg.TLSConfig.InsecureSkipVerify)
	if u.User != nil {
		pw, _ := u.User.Password()
		cfg.HttpAuth = &capi.HttpBasicAuth{Username: u.User.Username(), Password: pw}
	}
	opt := &Options{
		Prefix:      u.Path,
		ClockSkew:   p.Duration("skew", 0),
		MaxValueLen: p.Int("maxvalue", 0),
		WaitTime:    p.Duration("wait", 0),
		MaxWatches:  p.Int("maxwatches", 0),
	}
	maxConns := p.Int("maxconns", 0)
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("consul: %w", err)
	}
	if _, ok := u.Query()["skew"]; ok && opt.ClockSkew == 0 {
		opt.ClockSkew = -1 // skew=0 asked for no margin
	}
	if maxConns == 0 {
		maxConns = DefaultMaxConns
	}
	maxWatches := opt.MaxWatches
	if maxWatches == 0 {
		maxWatches = DefaultMaxWatches
	}
	// Two clients with transports of our own: one for the blocking
	// queries (at most MaxWatches connections, each held by one query),
	// one for everything else (at most maxconns), so waiting never takes
	// the connections claims need, the Backend's connections to one agent
	// are bounded (Consul refuses a client address more than
	// http_max_conns_per_client), and Close can drop idle connections.
	base := cfg.Transport
	if base == nil {
		base = http.DefaultTransport.(*http.Transport)
	}
	// Clone gives the copy a TLS config (for HTTP/2) where base had none;
	// the client must then still build its own from cfg.TLSConfig.
	noTLS := base.TLSClientConfig == nil
	client := func(conns int) (*capi.Client, *http.Transport, error) {
		c := *cfg
		tr := base.Clone()
		if noTLS {
			tr.TLSClientConfig = nil
		}
		tr.MaxConnsPerHost, tr.MaxIdleConnsPerHost = conns, conns
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
	b, err := New(c, opt)
	if err != nil {
		return nil, err
	}
	cleanup := tr.CloseIdleConnections
	if maxWatches > 0 {
		wc, wtr, err := client(maxWatches)
		if err != nil {
			return nil, err
		}
		b.watchKV = wc.KV()
		cleanup = func() { tr.CloseIdleConnections(); wtr.CloseIdleConnections() }
	}
	b.cleanup = cleanup
	return b, nil
}
