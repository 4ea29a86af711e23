package zookeeper

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens zookeeper:// URLs.
type URLOpener struct{}

// OpenURL implements driver.URLOpener. It connects and creates the root
// nodes (bounded by ctx), so a wrong address or credentials fail here.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	c, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	d := &dialer{tls: c.tls, timeout: c.dialTimeout}
	conn, _, err := zk.Connect(c.servers, c.session, zk.WithDialer(d.dial), zk.WithLogger(quiet), zk.WithLogInfo(false))
	if err != nil {
		return nil, fmt.Errorf("zookeeper: connect: %w", err)
	}
	b, err := newBackend(conn, c.opt, d)
	if err == nil && c.auth != nil {
		if err = b.do(ctx, func() error { return conn.AddAuth("digest", c.auth) }); err != nil {
			err = fmt.Errorf("zookeeper: digest auth: %w", err)
		}
	}
	if err == nil {
		if err = b.prepare(ctx); err != nil {
			err = fmt.Errorf("zookeeper: create root %s: %w", b.root, err)
		}
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return b, nil
}

// urlConfig is what a URL says.
type urlConfig struct {
	servers     []string
	session     time.Duration
	dialTimeout time.Duration // 0: go-zk's (1s)
	auth        []byte        // "user:password" for digest auth, or nil
	tls         *tls.Config
	opt         Options
}

func parseURL(u *url.URL) (urlConfig, error) {
	p := driver.NewParams(u)
	c := urlConfig{opt: Options{
		Prefix:      p.String("prefix", DefaultPrefix),
		MaxValueLen: p.Int("maxvalue", 0),
		MessageLife: p.Duration("messagelife", 0),
	}}
	c.session = p.Duration("session", DefaultSessionTimeout)
	c.dialTimeout = p.Duration("dial_timeout", 0)
	acl := p.String("acl", "")
	// ZooKeeper has no TLS scheme: tls=true enables the shared TLS
	// parameters. No server name is passed, so that, unless servername
	// is given, each HOST's certificate is verified against HOST (dial).
	tc, tlsErr := p.TLS(p.Bool("tls", false), "")
	if err := cmp.Or(p.Err(), tlsErr); err != nil {
		return c, fmt.Errorf("zookeeper: %w", err)
	}
	c.tls = tc
	if u.Opaque != "" || u.Fragment != "" {
		return c, errors.New("zookeeper: malformed URL: want zookeeper://HOST[:PORT][,HOST[:PORT]...][/CHROOT]")
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h == "" {
			h = "127.0.0.1"
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "2181")
		}
		c.servers = append(c.servers, h)
	}
	if chroot := strings.Trim(u.Path, "/"); chroot != "" {
		c.opt.Prefix = chroot + "/" + strings.Trim(c.opt.Prefix, "/")
	}
	if u.User != nil {
		pw, _ := u.User.Password()
		c.auth = []byte(u.User.Username() + ":" + pw)
	}
	switch {
	case acl == "creator" && c.auth == nil:
		return c, errors.New("zookeeper: acl=creator needs USER:PASSWORD@ in the URL")
	case acl == "creator" || acl == "" && c.auth != nil:
		c.opt.ACL = zk.AuthACL(zk.PermAll)
	case acl != "" && acl != "open":
		return c, fmt.Errorf("zookeeper: URL parameter acl=%q: want open or creator", acl)
	}
	_, err := validPrefix(c.opt.Prefix)
	return c, err
}

// dialer lets Close drop the connection without ending the session:
// go-zk's Close sends closeSession, which would delete the leases'
// ephemeral nodes. Once dropped, no dial succeeds and every write fails
// locally, so that closeSession fails (and go-zk's Close returns at once)
// and the server only sees the TCP connection go away.
type dialer struct {
	tls     *tls.Config   // nil: plain TCP
	timeout time.Duration // bounds each dial and TLS handshake (0: go-zk's)
	dropped atomic.Bool
}

var errDropped = errors.New("zookeeper: driver closed")

func (d *dialer) dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	if d.dropped.Load() {
		return nil, errDropped
	}
	nd := &net.Dialer{Timeout: cmp.Or(d.timeout, timeout)}
	var c net.Conn
	var err error
	if d.tls != nil {
		// secureClientPort: TLS from the first byte, the handshake
		// bounded by timeout too.
		c, err = tls.DialWithDialer(nd, network, addr, d.tls)
	} else {
		c, err = nd.Dial(network, addr)
	}
	if err != nil {
		return nil, err
	}
	if d.dropped.Load() {
		c.Close()
		return nil, errDropped
	}
	return &dropConn{Conn: c, d: d}, nil
}

type dropConn struct {
	net.Conn
	d *dialer
}

func (c *dropConn) Write(p []byte) (int, error) {
	if c.d.dropped.Load() {
		c.Conn.Close()
		return 0, errDropped
	}
	return c.Conn.Write(p)
}

// quiet is go-zk's logger: the driver returns errors instead.
var quiet = log.New(io.Discard, "", 0)
