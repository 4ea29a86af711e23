package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens etcd:// and etcds:// URLs (see the package doc). Opening
// connects (and authenticates, when the URL has a user) and asks the
// server for its minimum lease TTL unless minttl is given, within ctx and
// dial_timeout; with lazy=true it does neither, and the first call
// connects. The driver's Close closes the client.
type URLOpener struct{}

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	cfg, opt, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	kind := dialOptions(&cfg)
	b, err := newBackend(nil, &cfg, opt)
	if err != nil {
		return nil, err
	}
	b.kind = kind
	if driver.NewParams(u).Lazy() {
		return b, nil
	}
	cli, err := b.client(ctx)
	if err == nil && opt.MinTTL == 0 {
		var ttl time.Duration
		gctx, release := kind.guard(ctx)
		ttl, err = askMinTTL(gctx, cli, cfg.DialTimeout)
		release()
		if err != nil {
			err = fmt.Errorf("asking the server for its minimum lease TTL: %w", b.fail(ctx, err))
		}
		b.minTTL = ceilSeconds(ttl)
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("etcd: %w", err)
	}
	return b, nil
}

// Connection settings of a URL-opened client.
const (
	// keepAliveTime is how long a connection with watches or lease
	// keep-alives on it may stay silent before the client pings the
	// server (etcd refuses pings more frequent than every 5 s); a ping
	// unanswered within the dial timeout closes the connection, so a
	// peer gone without a word is noticed.
	keepAliveTime = 10 * time.Second
	// reconnectMax caps gRPC's backoff between connection attempts
	// (2 minutes by default), so a client finds its server again within
	// seconds of its return.
	reconnectMax = 5 * time.Second
)

// dialOptions completes a URL's client config: each connection attempt
// bounded by the dial timeout, reconnection backoff capped at
// reconnectMax, keep-alive pings, and, unless an HTTPS proxy from the
// environment is in the way (gRPC dials through it only with its own
// dialer), a dialer that checks what the server speaks, which it returns
// (nil when none).
func dialOptions(cfg *clientv3.Config) *kindCheck {
	cfg.DialKeepAliveTime, cfg.DialKeepAliveTimeout = keepAliveTime, cfg.DialTimeout
	bo := backoff.DefaultConfig
	bo.MaxDelay = reconnectMax
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: cfg.DialTimeout}))
	for _, ep := range cfg.Endpoints {
		eu, err := url.Parse(ep)
		if err != nil {
			return nil
		}
		if p, err := http.ProxyFromEnvironment(&http.Request{URL: &url.URL{Scheme: "https", Host: eu.Host}}); p != nil || err != nil {
			return nil
		}
	}
	k := &kindCheck{tls: cfg.TLS != nil, d: net.Dialer{Timeout: cfg.DialTimeout}}
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithContextDialer(k.dial))
	return k
}

// askMinTTL learns the server's minimum lease TTL, within timeout (0:
// DefaultDialTimeout): the server grants max(asked, minimum) for a
// 1-second lease, which is then revoked.
func askMinTTL(ctx context.Context, cli *clientv3.Client, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, cmp.Or(timeout, DefaultDialTimeout))
	defer cancel()
	g, err := cli.Grant(ctx, 1)
	if err != nil {
		return 0, err
	}
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		return 0, err
	}
	return time.Duration(g.TTL) * time.Second, nil
}

// parseURL turns an etcd:// or etcds:// URL into a client config and
// Options. Its errors never contain the password.
func parseURL(u *url.URL) (clientv3.Config, Options, error) {
	var cfg clientv3.Config
	tlsOn := u.Scheme == TLSScheme
	if u.Scheme != Scheme && !tlsOn {
		return cfg, Options{}, fmt.Errorf("etcd: URL scheme %q: want %s or %s", u.Scheme, Scheme, TLSScheme)
	}
	if u.Opaque != "" || u.Fragment != "" {
		return cfg, Options{}, errors.New("etcd: malformed URL: want etcd://host:port[,host:port]?prefix=NAME")
	}
	if u.Path != "" && u.Path != "/" {
		return cfg, Options{}, fmt.Errorf("etcd: URL path %q: give the key prefix as ?prefix=NAME", u.Path)
	}
	p := driver.NewParams(u)
	cfg.DialTimeout = p.Duration("dial_timeout", DefaultDialTimeout)
	opt := Options{
		Prefix:      p.String("prefix", ""),
		MinTTL:      p.Duration("minttl", 0),
		MaxValueLen: p.Int("maxvalue", 0),
	}
	// An empty server name lets gRPC verify each endpoint by its own host.
	tc, err := p.TLS(tlsOn, "")
	if err = cmp.Or(p.Err(), err); err != nil {
		return cfg, opt, fmt.Errorf("etcd: %w", err)
	}
	cfg.TLS = tc
	cfg.Username = u.User.Username() // nil-safe, like Password
	cfg.Password, _ = u.User.Password()
	if cfg.Password != "" && cfg.Username == "" {
		return cfg, opt, errors.New("etcd: password given without a user name")
	}
	scheme := "http://"
	if tlsOn {
		scheme = "https://"
	}
	hosts := cmp.Or(u.Host, "127.0.0.1")
	for h := range strings.SplitSeq(hosts, ",") {
		if h == "" {
			return cfg, opt, fmt.Errorf("etcd: empty host in %q", hosts)
		}
		if _, port, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "2379")
		} else if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return cfg, opt, fmt.Errorf("etcd: bad port in host %q", h)
		}
		cfg.Endpoints = append(cfg.Endpoints, scheme+h)
	}
	cfg.Logger = zap.NewNop()
	return cfg, opt, nil
}
