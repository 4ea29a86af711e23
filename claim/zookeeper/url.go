package zookeeper

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens zookeeper:// URLs.
type URLOpener struct{}

// OpenURL implements driver.URLOpener. It starts go-zk's connection,
// which establishes the session in the background, and returns at once:
// the Client's check (Ping) that follows, unless lazy=true, waits for the
// session, authenticates it and checks the root nodes, or the first call
// does (lazy=true: go-zk still connects in the background from here on,
// but nothing waits for it and nothing is sent until the first call).
func (*URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	c, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	d := &dialer{tls: c.tls, timeout: c.dialTimeout, hosts: &hostList{DNSHostProvider: zk.NewDNSHostProvider()}, aliens: make(chan struct{})}
	b, err := newBackend(c.opt, d)
	if err != nil {
		return nil, err
	}
	b.auth = c.auth
	conn, _, err := zk.Connect(c.servers, c.session, zk.WithDialer(d.dial), zk.WithHostProvider(d.hosts),
		zk.WithEventCallback(b.sessionEvent), zk.WithLogger(quiet), zk.WithLogInfo(false))
	if err != nil {
		return nil, fmt.Errorf("zookeeper: connect: %w", err)
	}
	b.conn = conn
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

// dialer dials go-zk's connections of a Client opened from a URL. It
// lets Close drop the connection without ending the session: go-zk's
// Close sends closeSession, which would delete the session's ephemeral
// nodes (its fair waiters' queue entries; leases were ephemeral too
// before they became persistent, and this kept them to their TTL, as a
// crashed process's). Once dropped, no dial succeeds and every write fails locally, so
// that closeSession fails (and go-zk's Close returns at once) and the
// server only sees the TCP connection go away. It also bounds each
// session handshake (handshakeTimeout), and tells a server of another
// kind from ZooKeeper by its answer to the handshake (alien).
type dialer struct {
	tls     *tls.Config   // nil: plain TCP
	timeout time.Duration // bounds each dial and TLS handshake (0: go-zk's)
	hosts   *hostList
	dropped atomic.Bool

	mu      sync.Mutex
	cur     *dropConn     // the connection last dialled
	strange int           // handshakes in a row answered by something else than ZooKeeper
	last    error         // the last of them
	aliens  chan struct{} // closed while alien reports an error
}

var errDropped = errors.New("zookeeper: driver closed")

// handshakeTimeout bounds ZooKeeper's session handshake on a connection
// (go-zk allows 20/3 × the session timeout: 200 s with the default), or
// dial_timeout if longer.
const handshakeTimeout = 5 * time.Second

// maxConnectResponse bounds the length a ZooKeeper server announces for
// its answer to the session handshake (36 or 37 bytes: version, timeout,
// session ID, password, read-only flag). Other servers' first bytes read
// as a length are far larger ("HTTP" is 1.2 GB) or far smaller.
const (
	minConnectResponse = 16
	maxConnectResponse = 512
)

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
		d.answered(nil)
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.dropped.Load() {
		c.Close()
		return nil, errDropped
	}
	dc := &dropConn{Conn: c, d: d, addr: addr, deadline: time.Now().Add(max(d.timeout, handshakeTimeout))}
	dc.handshake.Store(true)
	d.cur = dc
	return dc, nil
}

// drop makes every later dial and write fail, and closes the current
// connection if its session handshake is in progress (so that it ends
// now; an established connection is left to go-zk's Close, whose
// closeSession then fails at once).
func (d *dialer) drop() {
	d.dropped.Store(true)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != nil && d.cur.handshake.Load() {
		d.cur.Conn.Close()
	}
}

// answered records how a connection attempt ended: err is nil for a
// server that answered like ZooKeeper (or could not be reached), or the
// reason it is not ZooKeeper.
func (d *dialer) answered(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	was := d.alienLocked() != nil
	if err == nil {
		d.strange, d.last = 0, nil
	} else {
		d.strange++
		d.last = err
	}
	switch now := d.alienLocked() != nil; {
	case now && !was:
		close(d.aliens)
	case was && !now:
		d.aliens = make(chan struct{})
	}
}

// alien returns why the servers are not ZooKeeper servers if every
// server of the last round over the list (go-zk's host provider)
// answered the session handshake like something else, or nil.
func (d *dialer) alien() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.alienLocked()
}

func (d *dialer) alienLocked() error {
	if d.last == nil || d.strange < d.hosts.Len() {
		return nil
	}
	return d.last
}

// aliensSeen returns a channel that is closed while alien reports an
// error, and that error if it does now.
func (d *dialer) aliensSeen() (<-chan struct{}, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.aliens, d.alienLocked()
}

// dropConn is a connection of dialer: its writes fail once dropped,
// and until the session handshake is read, its deadlines are at most
// the handshake's, and the length of the server's answer is checked.
type dropConn struct {
	net.Conn
	d    *dialer
	addr string

	handshake atomic.Bool // until the answer to the session handshake is read
	deadline  time.Time   // the handshake's
	head      []byte      // the first bytes of the answer (go-zk's connecting goroutine only)
	left      int         // bytes of the answer still to read, once head is complete (likewise)
}

func (c *dropConn) Write(p []byte) (int, error) {
	if c.d.dropped.Load() {
		c.Conn.Close()
		return 0, errDropped
	}
	return c.Conn.Write(p)
}

func (c *dropConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.handshake.Load() {
		return n, err
	}
	if n == 0 {
		if err != nil {
			c.d.answered(nil) // no answer: not a sign of another kind of server
		}
		return n, err
	}
	got := p[:n]
	if len(c.head) < 4 {
		k := min(4-len(c.head), len(got))
		c.head = append(c.head, got[:k]...)
		got = got[k:]
		if len(c.head) < 4 {
			return n, err
		}
		l := int(binary.BigEndian.Uint32(c.head))
		if l < minConnectResponse || l > maxConnectResponse {
			bad := fmt.Errorf("%s is not a ZooKeeper server (it answered the session handshake with %q)", c.addr, c.head)
			c.d.answered(bad)
			c.Conn.Close()
			return 0, bad
		}
		c.left = l
	}
	c.left -= len(got)
	if c.left <= 0 {
		c.handshake.Store(false)
		c.d.answered(nil)
	}
	return n, err
}

// SetDeadline, SetReadDeadline and SetWriteDeadline keep the handshake's
// bound until it is read (go-zk sets 20/3 × the session timeout, and
// clears the read deadline before it reads the body).
func (c *dropConn) SetDeadline(t time.Time) error { return c.Conn.SetDeadline(c.bound(t)) }

func (c *dropConn) SetReadDeadline(t time.Time) error { return c.Conn.SetReadDeadline(c.bound(t)) }

func (c *dropConn) SetWriteDeadline(t time.Time) error { return c.Conn.SetWriteDeadline(c.bound(t)) }

func (c *dropConn) bound(t time.Time) time.Time {
	if c.handshake.Load() && (t.IsZero() || t.After(c.deadline)) {
		return c.deadline
	}
	return t
}

// hostList is go-zk's host provider (DNSHostProvider), telling the
// driver when go-zk is about to pause a second before its next connection
// attempt: it has tried every server since the last connection
// (retryStart), which with a single server is at once.
type hostList struct {
	*zk.DNSHostProvider
	pausing atomic.Bool // the last Next's retryStart
}

// Next implements zk.HostProvider.
func (h *hostList) Next() (server string, retryStart bool) {
	server, retryStart = h.DNSHostProvider.Next()
	h.pausing.Store(retryStart)
	return server, retryStart
}

// quiet is go-zk's logger: the driver returns errors instead.
var quiet = log.New(io.Discard, "", 0)
