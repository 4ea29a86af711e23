package redis

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens redis:// and rediss:// URLs (see the package doc). It
// never dials: go-redis connects on first use, and claim.Open checks the
// server then (the driver's Ping), unless lazy=true.
type URLOpener struct{}

// OpenURL implements driver.URLOpener. It does no I/O, so lazy=true
// (driver.Params.Lazy) needs nothing of it.
func (*URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	uo, opt, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	rdb := goredis.NewUniversalClient(uo) // a *ClusterClient if IsClusterMode
	b, err := newBackend(rdb, &opt)
	if err != nil {
		_ = rdb.Close()
		return nil, err
	}
	b.owns.Store(true)
	return b.driver(), nil
}

// DefaultDialTimeout bounds each connection attempt of a client opened
// by URL (dial, TLS handshake) unless dial_timeout says otherwise; every
// call is bounded by its context's deadline as well.
const DefaultDialTimeout = 5 * time.Second

// dialer is the go-redis Dialer of a client opened by URL: go-redis's own
// does the TLS handshake with tls.DialWithDialer, which no context
// bounds, only DialTimeout; here ctx bounds the handshake too. tc nil
// means plain TCP.
func dialer(timeout time.Duration, tc *tls.Config) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err != nil || tc == nil {
			return c, err
		}
		conn := tls.Client(c, tc)
		if err := conn.HandshakeContext(ctx); err != nil {
			_ = c.Close()
			return nil, err
		}
		return conn, nil
	}
}

// parseURL maps a URL to go-redis options and Options. Its errors name
// parameters and values, never the URL or its password.
func parseURL(u *url.URL) (*goredis.UniversalOptions, Options, error) {
	if u.Scheme != Scheme && u.Scheme != TLSScheme {
		return nil, Options{}, fmt.Errorf("redis: URL scheme %q: want %s or %s", u.Scheme, Scheme, TLSScheme)
	}
	p := driver.NewParams(u)
	opt := Options{
		Prefix:              p.String("prefix", ""),
		MaxValueLen:         p.Int("maxvalue", 0),
		HealthCheckInterval: p.Duration("health_check", 0),
		WaitReplicas:        p.Int("wait_replicas", 0),
		WaitTimeout:         p.Duration("wait_timeout", 0),
		CloseClient:         true,
	}
	o := &goredis.UniversalOptions{
		// Calls end at their context's deadline, not only at ReadTimeout /
		// WriteTimeout (the claim contract; KeepAlive bounds renewals so).
		ContextTimeoutEnabled: true,
		ClientName:            p.String("client_name", ""),
		PoolSize:              p.Int("pool_size", 0),
		MinIdleConns:          p.Int("min_idle_conns", 0),
		MaxRetries:            p.Int("max_retries", 0),
		Protocol:              p.Int("protocol", 3),
		DialTimeout:           p.Duration("dial_timeout", DefaultDialTimeout),
		ReadTimeout:           p.Duration("read_timeout", 0),
		WriteTimeout:          p.Duration("write_timeout", 0),
		IsClusterMode:         p.Bool("cluster", false),
		MasterName:            p.String("master", ""),
		SentinelUsername:      p.String("sentinel_user", ""),
		SentinelPassword:      p.String("sentinel_password", ""),
		// One dial per attempt (go-redis's default is 5, 100 ms apart): a
		// server that is down is reported at once.
		DialerRetries: 1,
	}
	addrs := p.String("addrs", "")
	host := cmp.Or(u.Hostname(), "localhost")
	tc, tlsErr := p.TLS(u.Scheme == TLSScheme, host)
	if err := cmp.Or(p.Err(), tlsErr); err != nil {
		return nil, Options{}, fmt.Errorf("redis: %w", err)
	}
	o.TLSConfig = tc
	if p.Has("wait_timeout") && opt.WaitReplicas == 0 {
		return nil, Options{}, errors.New("redis: URL parameter wait_timeout needs wait_replicas")
	}
	o.Dialer = dialer(o.DialTimeout, tc)
	if o.MaxRetries == 0 {
		o.MaxRetries = -1 // go-redis: -1 disables retries
	}
	if o.Protocol != 2 && o.Protocol != 3 {
		return nil, Options{}, fmt.Errorf("redis: URL parameter protocol=%d: want 2 or 3", o.Protocol)
	}
	sentinel := p.Has("master")
	if sentinel && o.MasterName == "" {
		return nil, Options{}, errors.New("redis: URL parameter master: want the Sentinels' name of the master, not empty")
	}
	if !sentinel && (p.Has("sentinel_user") || p.Has("sentinel_password")) {
		return nil, Options{}, errors.New("redis: URL parameters sentinel_user and sentinel_password need master=NAME")
	}
	if sentinel && o.IsClusterMode {
		return nil, Options{}, errors.New("redis: URL parameters master (Sentinel) and cluster=true exclude each other")
	}
	if o.IsClusterMode && opt.WaitReplicas > 0 {
		return nil, Options{}, errors.New("redis: URL parameter wait_replicas is not supported with cluster=true (WAIT must follow the write on its master's connection)")
	}
	port := "6379"
	if sentinel {
		port = "26379" // HOST:PORT is a Sentinel
	}
	o.Addrs = []string{net.JoinHostPort(host, cmp.Or(u.Port(), port))}
	if u.User != nil {
		o.Username = u.User.Username()
		o.Password, _ = u.User.Password()
	}
	if path := strings.Trim(u.Path, "/"); path != "" {
		db, err := strconv.Atoi(path)
		if err != nil || db < 0 {
			return nil, Options{}, fmt.Errorf("redis: URL path %q: want /DB, a database number", u.Path)
		}
		o.DB = db
	}
	if addrs != "" && !o.IsClusterMode && !sentinel {
		return nil, Options{}, errors.New("redis: URL parameter addrs needs cluster=true or master=NAME (Sentinel)")
	}
	if o.IsClusterMode || sentinel {
		if o.IsClusterMode && o.DB != 0 {
			return nil, Options{}, errors.New("redis: a cluster has only database 0")
		}
		for _, a := range strings.Split(addrs, ",") {
			if a = strings.TrimSpace(a); a != "" {
				if _, _, err := net.SplitHostPort(a); err != nil {
					return nil, Options{}, fmt.Errorf("redis: URL parameter addrs: %q is not HOST:PORT", a)
				}
				o.Addrs = append(o.Addrs, a)
			}
		}
	}
	return o, opt, nil
}
