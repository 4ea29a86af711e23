package memcache

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens memcache:// URLs (see the package documentation).
// Registration dials nothing; neither does opening (gomemcache connects on
// first use).
type URLOpener struct{}

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	if u.User != nil {
		return nil, errors.New("memcache: URL user info not supported (gomemcache has no SASL)")
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("memcache: URL path %q not allowed", u.Path)
	}
	var servers []string
	for _, s := range strings.Split(u.Host, ",") {
		if s == "" {
			continue
		}
		if !strings.Contains(s, ":") {
			s += ":11211"
		}
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return nil, errors.New("memcache: URL names no server")
	}
	p := driver.NewParams(u)
	o := Options{
		Prefix:    p.String("prefix", DefaultPrefix),
		ClockSkew: p.Duration("clock_skew", 0),
		PollMin:   p.Duration("poll_min", 0),
		PollMax:   p.Duration("poll_max", 0),
		PollFixed: !p.Bool("poll_learn", true),
	}
	if n := p.Int("maxvalue", 0); n > 0 {
		o.ItemSizeMax = n + itemOverhead
	}
	c := gomemcache.New(servers...)
	c.Timeout = p.Duration("io_timeout", DefaultTimeout)
	c.MaxIdleConns = p.Int("max_idle_conns", DefaultMaxIdleConns)
	// No default server name: each address dialled names its own.
	tc, tlsErr := p.TLS(p.Bool("tls", false), "")
	if err := cmp.Or(p.Err(), tlsErr); err != nil {
		return nil, fmt.Errorf("memcache: %w", err)
	}
	if tc != nil {
		// memcached 1.6 built with TLS, started with -Z (--enable-ssl).
		c.DialContext = tlsDialer(tc, min(certProbe, cmp.Or(c.Timeout, gomemcache.DefaultTimeout)))
	}
	b, err := newBackend(c, o)
	if err != nil {
		return nil, err
	}
	b.own = true
	return b, nil
}

// certProbe bounds tlsDialer's wait for the server's verdict on a
// connection without a client certificate.
const certProbe = 100 * time.Millisecond

// tlsDialer dials with TLS configured by tc. With TLS 1.3 the server
// judges the client's certificate after the client's side of the
// handshake is done, so a refusal reaches the client as an alert on its
// first read, or as a reset connection if its first request crossed the
// alert. When the server asked for a client certificate and tc has none
// to give, the dialer waits up to probe for that alert before handing
// the connection on, so a refusal fails the dial with "certificate
// required" (an ErrConfig, see classify) rather than a reset (which
// reads as unavailability). memcached sends nothing before a request: a
// wait that ends by the deadline is a connection accepted.
func tlsDialer(tc *tls.Config, probe time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		cfg := tc.Clone()
		var unanswered atomic.Bool // asked for a certificate, none given
		if len(cfg.Certificates) == 0 && cfg.GetClientCertificate == nil {
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				unanswered.Store(true)
				return &tls.Certificate{}, nil
			}
		}
		conn, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, network, addr)
		if err != nil || !unanswered.Load() || probe <= 0 {
			return conn, err
		}
		_ = conn.SetReadDeadline(time.Now().Add(probe))
		var one [1]byte
		_, err = conn.Read(one[:])
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			_ = conn.SetReadDeadline(time.Time{})
			return conn, nil
		}
		conn.Close()
		if err == nil {
			err = errors.New("memcache: the server sent data before any request")
		}
		return nil, err
	}
}
