package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens etcd:// and etcds:// URLs (see the package doc). Opening
// dials (and authenticates) once, asks the server for its minimum lease
// TTL unless minttl is given, and the driver's Close closes the client.
type URLOpener struct{}

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	cfg, opt, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: connect: %w", err)
	}
	if opt.MinTTL == 0 {
		if opt.MinTTL, err = askMinTTL(ctx, cli, cfg.DialTimeout); err != nil {
			cli.Close()
			return nil, fmt.Errorf("etcd: asking the server for its minimum lease TTL: %w", err)
		}
	}
	b, err := newBackend(cli, opt, true)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return b, nil
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
