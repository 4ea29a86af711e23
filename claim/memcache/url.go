package memcache

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"strings"

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
		Prefix:  p.String("prefix", DefaultPrefix),
		PollMin: p.Duration("poll_min", 0),
		PollMax: p.Duration("poll_max", 0),
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
		c.DialContext = (&tls.Dialer{Config: tc}).DialContext
	}
	b, err := newBackend(c, o)
	if err != nil {
		return nil, err
	}
	b.own = true
	return b, nil
}
