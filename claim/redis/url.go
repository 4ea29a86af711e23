package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/tlsfiles"
)

// URLOpener opens redis:// and rediss:// URLs (see the package doc). It
// never dials: the client connects on first use.
type URLOpener struct{}

// OpenBackendURL implements claim.URLOpener.
func (*URLOpener) OpenBackendURL(_ context.Context, u *url.URL) (claim.Backend, error) {
	uo, opt, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	var rdb goredis.UniversalClient
	if uo.cluster {
		rdb = goredis.NewClusterClient(uo.cluster2())
	} else {
		rdb = goredis.NewClient(&uo.Options)
	}
	b, err := New(rdb, opt)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	return b, nil
}

type urlOptions struct {
	goredis.Options
	cluster bool
	addrs   []string
}

func (o *urlOptions) cluster2() *goredis.ClusterOptions {
	return &goredis.ClusterOptions{
		Addrs: o.addrs, ClientName: o.ClientName, Protocol: o.Protocol, ContextTimeoutEnabled: o.ContextTimeoutEnabled,
		Username: o.Username, Password: o.Password, MaxRetries: o.MaxRetries,
		DialTimeout: o.DialTimeout, ReadTimeout: o.ReadTimeout, WriteTimeout: o.WriteTimeout,
		PoolSize: o.PoolSize, MinIdleConns: o.MinIdleConns, TLSConfig: o.TLSConfig,
	}
}

// parseURL maps a URL to go-redis options and Options. Its errors name
// parameters and values, never the URL or its password.
func parseURL(u *url.URL) (*urlOptions, *Options, error) {
	if u.Scheme != Scheme && u.Scheme != TLSScheme {
		return nil, nil, fmt.Errorf("redis: URL scheme %q: want %s or %s", u.Scheme, Scheme, TLSScheme)
	}
	p := claim.NewParams(u)
	opt := &Options{
		Prefix:              p.String("prefix", ""),
		MaxValueLen:         p.Int("maxvalue", 0),
		HealthCheckInterval: p.Duration("health_check", 0),
		CloseClient:         true,
	}
	o := &urlOptions{}
	// Calls end at their context's deadline, not only at ReadTimeout /
	// WriteTimeout (the claim contract; KeepAlive bounds renewals so).
	o.ContextTimeoutEnabled = true
	o.ClientName = p.String("client_name", "")
	o.PoolSize = p.Int("pool_size", 0)
	o.MinIdleConns = p.Int("min_idle_conns", 0)
	o.MaxRetries = p.Int("max_retries", 0)
	o.Protocol = p.Int("protocol", 3)
	o.DialTimeout = p.Duration("dial_timeout", 0)
	o.ReadTimeout = p.Duration("read_timeout", 0)
	o.WriteTimeout = p.Duration("write_timeout", 0)
	tf := tlsfiles.Files{
		CA: p.String("cacert", ""), Cert: p.String("cert", ""), Key: p.String("key", ""),
		ServerName: p.String("servername", ""), SkipVerify: p.Bool("skip_verify", false),
	}
	o.cluster = p.Bool("cluster", false)
	addrs := p.String("addrs", "")
	if err := p.Err(); err != nil {
		return nil, nil, fmt.Errorf("redis: %w", err)
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = -1 // go-redis: -1 disables retries
	}
	if o.Protocol != 2 && o.Protocol != 3 {
		return nil, nil, fmt.Errorf("redis: URL parameter protocol=%d: want 2 or 3", o.Protocol)
	}
	if strings.ContainsAny(opt.Prefix, "{}") {
		return nil, nil, fmt.Errorf("redis: URL parameter prefix=%q: must not contain '{' or '}'", opt.Prefix)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "localhost"
	}
	if port == "" {
		port = "6379"
	}
	o.Addr = net.JoinHostPort(host, port)
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	if path := strings.Trim(u.Path, "/"); path != "" {
		db, err := strconv.Atoi(path)
		if err != nil || db < 0 {
			return nil, nil, fmt.Errorf("redis: URL path %q: want /DB, a database number", u.Path)
		}
		o.DB = db
	}
	if u.Scheme == TLSScheme {
		if tf.ServerName == "" {
			tf.ServerName = host
		}
		tc, err := tf.Config()
		if err != nil {
			return nil, nil, fmt.Errorf("redis: URL TLS parameters: %w", err)
		}
		o.TLSConfig = tc
	} else if !tf.Empty() {
		return nil, nil, errors.New("redis: URL parameters cacert, cert, key, servername and skip_verify apply to rediss:// only")
	}
	if addrs != "" && !o.cluster {
		return nil, nil, errors.New("redis: URL parameter addrs needs cluster=true")
	}
	if o.cluster {
		if o.DB != 0 {
			return nil, nil, errors.New("redis: a cluster has only database 0")
		}
		o.addrs = []string{o.Addr}
		for _, a := range strings.Split(addrs, ",") {
			if a = strings.TrimSpace(a); a != "" {
				if _, _, err := net.SplitHostPort(a); err != nil {
					return nil, nil, fmt.Errorf("redis: URL parameter addrs: %q is not HOST:PORT", a)
				}
				o.addrs = append(o.addrs, a)
			}
		}
	}
	return o, opt, nil
}
