package zookeeper

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers.
const Scheme = "zookeeper"

const (
	// DefaultPrefix is the root znode (under the chroot) when
	// Options.Prefix is empty.
	DefaultPrefix = "stampede"
	// DefaultSessionTimeout is the session timeout of connections opened
	// from URLs.
	DefaultSessionTimeout = 30 * time.Second
	// DefaultMaxValueLen is the largest value Commit and Set (and message
	// Publish) accept by default: ZooKeeper's default jute.maxbuffer
	// (1 MiB - 1; a larger request makes the server drop the connection)
	// less room for the paths and the multi-op around the value.
	DefaultMaxValueLen = 1<<20 - 64<<10
	// DefaultMessageLife is how long a published message stays readable.
	DefaultMessageLife = 30 * time.Second

	maxKeyLen   = 255
	valueHeader = 9 // format byte + 8-byte TTL in milliseconds
	attempts    = 3 // CAS rounds of TryClaim, Commit and Set against racing writers
)

func init() { claim.Register(Scheme, &URLOpener{}) }

// safeName reports whether b may appear in a znode name as is.
func safeName(b byte) bool { return driver.PrintableASCII(b) && b != '/' }

// keys maps any key to at most maxKeyLen bytes of printable ASCII without
// '/', a valid znode name (never "." or "..": it starts with '=' or '#').
var keys = driver.KeyEncoder{MaxLen: maxKeyLen, Safe: safeName}

// Options configure the driver behind the Client New returns. nil means
// defaults; every zero field is a documented default.
type Options struct {
	// Prefix is the znode path, relative to "/", under which the driver
	// keeps all its nodes (e.g. "apps/orders/stampede"). Empty means
	// DefaultPrefix. Every process sharing keys must use the same prefix.
	Prefix string
	// ACL is set on every znode the driver creates. nil means
	// zk.WorldACL(zk.PermAll).
	ACL []zk.ACL
	// MaxValueLen is the largest value (and published message) accepted
	// (0: DefaultMaxValueLen). Raise it only together with the server's
	// jute.maxbuffer.
	MaxValueLen int
	// MessageLife is how long a published message stays readable before
	// its publisher deletes it (0: DefaultMessageLife). A subscriber that
	// falls further behind than half of it is sent a reset.
	MessageLife time.Duration
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one process's connection to a ZooKeeper ensemble: a
// driver.Driver with a native topic bus. It is safe for concurrent use.
type backend struct {
	driver.ClaimFunc // b.tryClaim: TryClaim and TryClaimRead

	conn    *zk.Conn
	own     *dialer // non-nil if Close must drop conn
	auth    []byte  // "user:password" from the URL for digest auth, or nil
	root    string
	acl     []zk.ACL
	maxVal  int
	msgLife time.Duration
	done    chan struct{} // closed by Close

	authed  atomic.Bool   // auth was added to the session
	ready   atomic.Bool   // authenticated, and the root nodes exist and take our writes (setup)
	checkMu chan struct{} // one check (setup, Ping) at a time, waited for within ctx

	sessMu  sync.Mutex
	sess    sessionState // notify.go
	polling sync.Once    // starts pollSession, for New's connection

	mu      sync.Mutex
	closed  bool
	calls   sync.WaitGroup      // call's goroutines
	wg      sync.WaitGroup      // the driver's own goroutines
	watches map[string]*watcher // key -> its existence watch
	topics  map[string]*watcher // topic -> its child watch
	grants  map[string]*watcher // key -> its grant watch (queue.go)
	tracks  map[string]*tracker // key -> its queue, kept read while held (track.go)
	waiting map[string]struct{} // holders this process queued (track.go)
	pub     []published         // own messages, oldest first
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
)

// New returns a Client using the caller's own connection (servers, auth,
// session timeout and dialer are the caller's). Neither the Client's
// Close nor a failed New closes conn.
//
// New checks the server before it returns (claim.Connect: the Client's
// Ping, within the operation timeout, Options.Client.OpTimeout): it waits
// for the session, and creates the root nodes if missing, or proves it
// may write there (see Ping). An ACL that refuses the connection's
// credentials fails it with an error wrapping claim.ErrConfig; a session
// that is not established in time, with one wrapping
// claim.ErrUnavailable. With Options.Client.Lazy, New does no I/O: the
// first call does that check.
func New(conn *zk.Conn, opt *Options) (*claim.Client, error) {
	if conn == nil {
		return nil, errors.New("zookeeper: New: nil connection")
	}
	if opt == nil {
		opt = &Options{}
	}
	b, err := newBackend(*opt, nil)
	if err != nil {
		return nil, err
	}
	b.conn = conn
	c, err := claim.Connect(context.Background(), b, opt.Client)
	if err != nil {
		return nil, fmt.Errorf("zookeeper: New: %w", err)
	}
	return c, nil
}

// newBackend returns the driver for o, without its connection yet (the
// caller sets conn before any call).
func newBackend(o Options, own *dialer) (*backend, error) {
	prefix, err := validPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	if o.MaxValueLen < 0 || o.MessageLife < 0 {
		return nil, errors.New("zookeeper: negative MaxValueLen or MessageLife")
	}
	b := &backend{
		own: own, root: "/" + prefix, acl: o.ACL,
		checkMu: make(chan struct{}, 1),
		maxVal:  cmp.Or(o.MaxValueLen, DefaultMaxValueLen),
		msgLife: cmp.Or(o.MessageLife, DefaultMessageLife),
		done:    make(chan struct{}),
		watches: map[string]*watcher{},
		topics:  map[string]*watcher{},
		grants:  map[string]*watcher{},
		tracks:  map[string]*tracker{},
		waiting: map[string]struct{}{},
	}
	if b.acl == nil {
		b.acl = zk.WorldACL(zk.PermAll)
	}
	b.ClaimFunc = b.tryClaim
	return b, nil
}

// validPrefix returns the root path for prefix (without its leading "/").
func validPrefix(prefix string) (string, error) {
	p := strings.Trim(prefix, "/")
	if p == "" {
		p = DefaultPrefix
	}
	for i, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." || (i == 0 && c == "zookeeper") || strings.ContainsFunc(c, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return "", fmt.Errorf("zookeeper: invalid prefix %q", prefix)
		}
	}
	return p, nil
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    b.maxVal,
		Broadcast:      true,
	}
}

// As implements driver.Aser: a **zk.Conn is set to the connection.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.conn) }

func (b *backend) lockPath(key string) string  { return b.root + "/l/" + keys.Encode(key) }
func (b *backend) valuePath(key string) string { return b.root + "/v/" + keys.Encode(key) }

// ownerPath is the owner node of holder h's claim on key (see claimOps):
// the holder's ID, then the encoded key (which starts with '=' or '#').
func (b *backend) ownerPath(key, h string) string { return b.root + "/o/" + h + keys.Encode(key) }

// call runs f, one blocking zk call, unless ctx is already done, and
// returns its result, its error classified (classify). It abandons f
// when ctx is done or the driver closes: f is left to finish in the
// background (go-zk answers every call once its connection is closed, so
// Close waits for them on a connection opened from a URL; on New's, they
// end when the caller's connection answers or is closed). While every
// server answers like something else than ZooKeeper (dialer.alien), or
// as soon as they all have, it fails: there is no server to send f to.
func call[T any](ctx context.Context, b *backend, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	var aliens <-chan struct{} // nil (never ready) on New's connection
	if b.own != nil {
		var alien error
		if aliens, alien = b.own.aliensSeen(); alien != nil {
			return zero, driver.Misconfigured(alien)
		}
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return zero, driver.ErrClosed
	}
	b.calls.Add(1)
	b.mu.Unlock()
	var v T
	var err error
	done := make(chan struct{})
	go func() {
		defer b.calls.Done()
		v, err = f()
		close(done)
	}()
	for {
		select {
		case <-done:
			return v, b.classify(err) // read only when f has returned
		case <-ctx.Done():
			return zero, b.classify(ctx.Err())
		case <-b.done:
			return zero, driver.ErrClosed
		case <-aliens:
			var alien error
			if aliens, alien = b.own.aliensSeen(); alien != nil {
				return zero, driver.Misconfigured(alien)
			}
		}
	}
}

// do is call for f without a result.
func (b *backend) do(ctx context.Context, f func() error) error {
	_, err := call(ctx, b, func() (struct{}, error) { return struct{}{}, f() })
	return err
}

// multi runs ops as one transaction; failed is the index of the op that
// failed (-1: none, or unknown).
func (b *backend) multi(ctx context.Context, ops ...any) (res []zk.MultiResponse, failed int, err error) {
	res, err = call(ctx, b, func() ([]zk.MultiResponse, error) { return b.conn.Multi(ops...) })
	return res, slices.IndexFunc(res, func(r zk.MultiResponse) bool { return r.Error != nil }), err
}

// Close implements driver.Driver. A connection opened from a URL is
// dropped without ending the session (see dialer), and Close waits for
// the calls abandoned on it; New's stays open, and Close does not wait
// for those (see call).
func (b *backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	for _, m := range []map[string]*watcher{b.watches, b.topics, b.grants} {
		for name, w := range m {
			w.end()
			delete(m, name)
		}
	}
	for key, t := range b.tracks {
		t.stop()
		delete(b.tracks, key)
	}
	b.mu.Unlock()
	if b.own != nil {
		live := b.conn.State() == zk.StateHasSession
		b.own.drop()
		if live {
			b.conn.Close() // at once: closeSession's write fails (dialer)
		} else {
			// Without a connection go-zk's Close waits a second for an
			// answer to closeSession that cannot come. Everything else
			// ends as soon as it has begun: its calls, our calls.
			go b.conn.Close()
		}
		b.calls.Wait()
	}
	b.wg.Wait()
	return nil
}
