package etcd

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/connectivity"

	"github.com/stampede-go/stampede/claim/driver"
)

// dialing is a connect under way (clientv3.New, which authenticates when
// the URL has a user): every call that needs the client waits for the
// same one, or for its own ctx.
type dialing struct {
	done chan struct{}
	cli  *clientv3.Client
	err  error
}

// client returns the etcd client, making it first if OpenURL left that to
// the first call (lazy=true, or a connect that failed): one connect at a
// time, bounded by ctx for the caller and by the dial timeout (and Close)
// for the connect itself, which goes on for the next caller if ctx ends
// first. Its errors are classified (fail).
func (b *backend) client(ctx context.Context) (*clientv3.Client, error) {
	if cli := b.cli.Load(); cli != nil {
		if k := b.kind.wrong(); k != nil && cli.ActiveConnection().GetState() == connectivity.TransientFailure {
			// The last connection met a server of another kind, and none
			// works: a call would only wait out its deadline.
			return nil, driver.Misconfigured(k)
		}
		return cli, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, driver.ErrClosed
	}
	if cli := b.cli.Load(); cli != nil {
		b.mu.Unlock()
		return cli, nil
	}
	d := b.dialing
	if d == nil && b.refused != nil && time.Since(b.refusedAt) < reconnectRefused {
		err := b.refused
		b.mu.Unlock()
		return nil, err
	}
	if d == nil {
		d = &dialing{done: make(chan struct{})}
		b.dialing = d
		b.wg.Add(1)
		go b.connect(d)
	}
	b.mu.Unlock()
	gctx, release := b.kind.guard(ctx)
	defer release()
	select {
	case <-d.done:
		if d.err != nil {
			return nil, b.fail(ctx, fmt.Errorf("connect: %w", d.err))
		}
		return d.cli, nil
	case <-gctx.Done():
		return nil, b.fail(ctx, fmt.Errorf("connect: %w", gctx.Err()))
	}
}

// reconnectRefused is how long a connect refused for a configuration
// error (a wrong password) answers every call before the next attempt:
// each attempt costs the server a password hash, and a cache in front of
// a misconfigured backend may call it for every request.
const reconnectRefused = time.Second

// connect makes the etcd client of b.cfg for d (see client).
func (b *backend) connect(d *dialing) {
	defer b.wg.Done()
	cli, err := clientv3.New(*b.cfg)
	b.mu.Lock()
	b.dialing = nil
	b.refused = nil
	switch {
	case isConfig(err):
		b.refused, b.refusedAt = fmt.Errorf("connect: %w", driver.Misconfigured(err)), time.Now()
	case err != nil:
	case b.closed:
		err = driver.ErrClosed
	default:
		b.cli.Store(cli)
		b.monitor(cli)
		cli = nil
	}
	d.cli, d.err = b.cli.Load(), err
	close(d.done)
	b.mu.Unlock()
	if cli != nil {
		cli.Close() // made while Close ran
	}
}

// connected reports whether the etcd client has a working connection.
func (b *backend) connected() bool {
	cli := b.cli.Load()
	return cli != nil && cli.ActiveConnection().GetState() == connectivity.Ready
}

// monitor watches cli's connection until Close: when it fails and the
// client cannot reconnect at once (gRPC's TRANSIENT_FAILURE), it wakes the
// subscribers of every watched key, so that waiters re-check (and meet
// the error, or take over) instead of waiting for a wake-up that cannot
// come until the connection is back. (The etcd client re-watches by
// itself once it is, from the revision each watch had reached, so nothing
// is missed in between.) Called with b.mu held, or before b is shared.
func (b *backend) monitor(cli *clientv3.Client) {
	conn := cli.ActiveConnection()
	if conn == nil {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		for st := conn.GetState(); conn.WaitForStateChange(b.ctx, st); {
			if st = conn.GetState(); st == connectivity.TransientFailure {
				b.connLost()
			}
		}
	}()
}

// connLost wakes the subscribers of every watched key (see monitor).
func (b *backend) connLost() {
	b.mu.Lock()
	wakes := make([]func(), 0, len(b.lost))
	for _, w := range b.lost {
		wakes = append(wakes, w)
	}
	b.mu.Unlock()
	b.connLosses.Add(1)
	for _, w := range wakes {
		w()
	}
}

// kindCheck tells, from the first bytes each connection the etcd client
// makes receives, whether the server at the address speaks gRPC at all:
// an HTTP/2 server opens with a SETTINGS frame, a TLS server with a TLS
// record. Anything else (an HTTP/1 reply, a Redis error line) is a
// server of another kind: the calls that then fail to reach the server
// fail with ErrConfig, naming what answered, instead of waiting out their
// deadline as unavailability. A connection that closes or stays silent
// says nothing; one that opens as it should clears the verdict.
type kindCheck struct {
	tls     bool
	d       net.Dialer
	verdict atomic.Pointer[error] // nil: none, or the server answered as etcd would

	mu      sync.Mutex
	next    int
	waiters map[int]context.CancelCauseFunc // guard's contexts
}

// wrong returns the last connection's verdict: nil, or what answered
// instead of etcd. Safe on a nil kindCheck (New's client is not checked).
func (k *kindCheck) wrong() error {
	if k == nil {
		return nil
	}
	if p := k.verdict.Load(); p != nil {
		return *p
	}
	return nil
}

// dial is the etcd client's gRPC dialer (grpc.WithContextDialer).
func (k *kindCheck) dial(ctx context.Context, addr string) (net.Conn, error) {
	c, err := k.d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &kindConn{Conn: c, k: k, addr: addr}, nil
}

// kindConn reads the first bytes of a connection for its kindCheck.
type kindConn struct {
	net.Conn
	k    *kindCheck
	addr string
	head []byte
	done bool // Read's own: gRPC reads a connection from one goroutine
}

// headLen is how much of the server's first bytes the check needs: an
// HTTP/2 frame header is 9 bytes, its type the fourth.
const headLen = 4

func (c *kindConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if !c.done {
		c.head = append(c.head, p[:n]...)
		if len(c.head) >= headLen || (c.k.tls && len(c.head) > 0) {
			c.done = true
			c.k.judge(c.addr, c.head)
		}
	}
	return n, err
}

// judge records the verdict on a connection whose server sent head first
// (at least headLen bytes, or one over TLS).
func (k *kindCheck) judge(addr string, head []byte) {
	var ok bool
	if k.tls {
		ok = head[0] == 0x16 || head[0] == 0x15 // a TLS handshake record, or an alert
	} else {
		ok = head[3] == 0x4 // an HTTP/2 SETTINGS frame
	}
	if ok {
		k.verdict.Store(nil)
		return
	}
	err := fmt.Errorf("the server at %s is not etcd (it does not speak gRPC%s: its first bytes are %s)",
		addr, map[bool]string{true: " over TLS"}[k.tls], quoteHead(head))
	k.verdict.Store(&err)
	k.mu.Lock()
	for _, cancel := range k.waiters {
		cancel(err)
	}
	k.mu.Unlock()
}

// guard returns ctx, also cancelled as soon as a connection finds a
// server of another kind (so that a call waiting for a usable connection
// need not wait out its deadline), and the function that releases it.
// Safe on a nil kindCheck: ctx itself.
func (k *kindCheck) guard(ctx context.Context) (context.Context, func()) {
	if k == nil {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	k.mu.Lock()
	if k.waiters == nil {
		k.waiters = map[int]context.CancelCauseFunc{}
	}
	id := k.next
	k.next++
	k.waiters[id] = cancel
	k.mu.Unlock()
	return ctx, func() {
		k.mu.Lock()
		delete(k.waiters, id)
		k.mu.Unlock()
		cancel(nil)
	}
}

// quoteHead shows the start of what a server sent, for an error message.
func quoteHead(head []byte) string {
	if len(head) > 16 {
		head = head[:16]
	}
	return fmt.Sprintf("%q", head)
}
