// Package zookeeper is the claim backend for Apache ZooKeeper: a claim is a
// pair of ephemeral znodes created in one multi-op, its TTL is judged on
// ZooKeeper's own clock, and waiters are woken by watches.
//
// # URLs
//
//	zookeeper://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/CHROOT][?PARAMS]
//
// The default port is 2181. Every znode lives under /CHROOT/PREFIX (PREFIX
// defaults to "stampede"; parameter prefix). USER:PASSWORD adds digest
// authentication to the session, and then nodes are created readable and
// writable only by that user (acl=creator, the default with credentials;
// acl=open gives world access). Other parameters: session (session
// timeout, default 30s, clamped by the server to [2, 20] × its tickTime),
// maxvalue (bytes, default DefaultMaxValueLen), messagelife (how long a
// Publish'd message stays readable, default 30s), and for a TLS port
// (secureClientPort): tls=true, cacert (PEM file of the CA to trust
// instead of the system roots), cert and key (PEM files of a client
// certificate and its key), servername (default: each HOST). An unknown
// parameter is an error. The password never appears in errors.
//
// # Semantics
//
// Under the root, a claim on key K is two ephemeral znodes created in one
// multi-op: the lock node l/ENC(K), holding the holder's random ID, and
// the owner node o/HOLDER, holding the lease TTL. The lock node gives
// mutual exclusion (create-if-absent); the owner node's path is unique to
// the claim, and every operation that ends a claim deletes both in one
// multi-op (Release, takeover, and ZooKeeper itself when the session ends),
// so "o/HOLDER exists" means "this claim is current". Release is
// multi(delete o/HOLDER, delete l/ENC), Extend is setData(o/HOLDER), and
// Commit is multi(check o/HOLDER, write the value): a stale holder's
// request fails on the missing owner node and changes nothing (ErrLost),
// even if the key was re-claimed since. (The lock node's version cannot
// serve: a re-created node starts again at version 0.) CommitRelease is
// multi(delete o/HOLDER, write the value, delete l/ENC). A multi-op cannot
// read, so TryClaimRead adds create+delete of the value node to the claim's
// multi-op: one round trip that also proves the key has no value; when it
// has one, the key is claimed without that probe and the value read after.
//
// The fencing token is the czxid of the claim's nodes: ZooKeeper's
// transaction id, global, strictly increasing and persisted in its
// transaction log (it moves to a higher epoch on leader election), so
// tokens keep increasing across release, expiry, takeover and restarts
// (DurableFence).
//
// A lease ends at its TTL even while the holder's session is alive: the
// TTL is judged from the owner node's mtime (stamped by the ZooKeeper
// leader when the claim or its last Extend was applied) against the
// leader's clock, which a claimer reads by writing a small clock node
// when its own clock says the lease has run out. A claimer then takes an
// expired claim over with one multi-op that deletes the old owner node at
// the version it read (an Extend that landed in between makes it fail)
// and the lock node, and creates its own. So expiry is exact to the
// millisecond (MinTTL and TTLGranularity 1 ms) and needs no synchronized
// clocks; HeldError.Remaining is estimated with the local clock. A crashed
// holder's nodes also vanish when its session expires, which may free the
// key before the TTL. The flip side, as with every ZooKeeper lock: a
// holder cut off from ZooKeeper for longer than its session timeout loses
// its leases at the server (session expiry deletes the nodes) while its
// local Deadline may still be ahead if the TTL is longer than the session
// timeout; its Extend, Commit and Release then fail with ErrLost and its
// Commit never lands. Keep lease TTLs within the session timeout, or fence
// outside writes by the token. Close drops the connection without ending
// the session (when the Backend opened it from a URL), so, as for a
// crashed process, the leases it held stay held until their TTL or the
// session timeout; New's caller keeps their own connection open.
//
// Values are persistent znodes v/ENC(K) holding a 9-byte header (format
// and TTL) and the value; a reader judges expiry from the node's mtime
// against its own clock (clocks should agree to well within the TTLs
// used), and the first Get that finds a value expired deletes it.
// TTL nodes cannot be created inside a multi-op (go-zk's Multi has no TTL
// create, and the fenced Commit needs one), so values never read again
// after expiring stay until overwritten or deleted: ZooKeeper keeps every
// node in memory; keep its L2 to small, bounded key sets.
//
// Notification is pushed: each Backend keeps one existence watch per
// subscribed key on its lock node, which fires on release, takeover,
// session expiry of the holder, claims, and Notify (a setData of the lock
// node guarded by its owner node, or a create+delete in one multi-op if
// the key is free). A watch is one-shot: the Backend re-arms it first and
// then wakes its local subscribers, so no event after the wake-up can be
// missed. If the session expires the watches are re-armed on the new
// session and every subscriber is woken to re-check. Messages of the
// Broadcaster are ephemeral sequential znodes under t/ENC(TOPIC) with one
// child watch per subscription.
//
// # Errors
//
// ErrHeld (as *claim.HeldError), ErrLost, ErrNotFound, ErrTooLarge,
// ErrInvalidKey and ErrClosed from package claim, wrapped once as
// "zookeeper: OP KEY: ..."; the zk package's errors are wrapped underneath.
package zookeeper

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
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
	// DefaultMaxValueLen is the largest value Commit and Set accept by
	// default: ZooKeeper's default jute.maxbuffer (1 MiB - 1; a larger
	// request makes the server drop the connection) less room for the
	// paths and the multi-op around the value.
	DefaultMaxValueLen = 1<<20 - 64<<10
	// DefaultMessageLife is how long a published message stays readable.
	DefaultMessageLife = 30 * time.Second

	maxKeyLen   = 255
	valueHeader = 9 // format byte + 8-byte TTL in milliseconds
	holderLen   = 24
	attempts    = 3 // CAS rounds of TryClaim, Commit and Set against racing writers
)

func init() { claim.Register(Scheme, &URLOpener{}) }

// keys maps any key to at most maxKeyLen bytes of printable ASCII without
// '/', a valid znode name (never "." or "..": it starts with '=' or '#').
var keys = claim.KeyEncoder{MaxLen: maxKeyLen, Safe: func(b byte) bool { return claim.PrintableASCII(b) && b != '/' }}

// Options configure a Backend. nil means defaults; every zero field is a
// documented default.
type Options struct {
	// Prefix is the znode path, relative to "/", under which the backend
	// keeps all its nodes (e.g. "apps/orders/stampede"). Empty means
	// DefaultPrefix. Every process sharing keys must use the same prefix.
	Prefix string
	// ACL is set on every znode the backend creates. nil means
	// zk.WorldACL(zk.PermAll).
	ACL []zk.ACL
	// MaxValueLen is the largest value accepted (0: DefaultMaxValueLen).
	// Raise it only together with the server's jute.maxbuffer.
	MaxValueLen int
	// MessageLife is how long a published message stays readable before
	// its publisher deletes it (0: DefaultMessageLife). A subscriber that
	// falls further behind than half of it is sent a reset.
	MessageLife time.Duration
}

// Backend is one client of a ZooKeeper ensemble. It implements
// claim.Backend and claim.Broadcaster, and is safe for concurrent use.
type Backend struct {
	conn    *zk.Conn
	own     *dialer // non-nil if Close must drop conn
	root    string
	acl     []zk.ACL
	maxVal  int
	msgLife time.Duration
	hub     *hub.Hub
	done    chan struct{} // closed by Close

	mu      sync.Mutex
	closed  bool
	ready   bool // root nodes exist
	wg      sync.WaitGroup
	watches map[string]chan struct{} // key -> stop
	topics  map[*topicSub]struct{}
	dirs    map[string]bool // topic directories known to exist
	pub     []published     // own messages, oldest first
}

var (
	_ claim.Backend     = (*Backend)(nil)
	_ claim.Broadcaster = (*Backend)(nil)
)

// New returns a Backend using the caller's own connection (servers, auth,
// session timeout and dialer are the caller's). It does no I/O; the root
// nodes are created on first use. Close does not close conn.
func New(conn *zk.Conn, opt *Options) (*Backend, error) {
	if conn == nil {
		return nil, errors.New("zookeeper: New: nil connection")
	}
	return newBackend(conn, opt, nil)
}

func newBackend(conn *zk.Conn, opt *Options, own *dialer) (*Backend, error) {
	var o Options
	if opt != nil {
		o = *opt
	}
	prefix, err := validPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	if o.MaxValueLen < 0 || o.MessageLife < 0 {
		return nil, errors.New("zookeeper: negative MaxValueLen or MessageLife")
	}
	b := &Backend{
		conn: conn, own: own, root: "/" + prefix, acl: o.ACL,
		maxVal: o.MaxValueLen, msgLife: o.MessageLife,
		done:    make(chan struct{}),
		watches: map[string]chan struct{}{},
		topics:  map[*topicSub]struct{}{},
		dirs:    map[string]bool{},
	}
	if b.acl == nil {
		b.acl = zk.WorldACL(zk.PermAll)
	}
	if b.maxVal == 0 {
		b.maxVal = DefaultMaxValueLen
	}
	if b.msgLife == 0 {
		b.msgLife = DefaultMessageLife
	}
	b.hub = hub.New(substrate{b})
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

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    b.maxVal,
		Broadcast:      true,
	}
}

func (b *Backend) lockPath(key string) string  { return b.root + "/l/" + keys.Encode(key) }
func (b *Backend) valuePath(key string) string { return b.root + "/v/" + keys.Encode(key) }
func (b *Backend) ownerPath(h string) string   { return b.root + "/o/" + h }

func (b *Backend) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

func (b *Backend) check(op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("zookeeper: %s: %w", op, err)
	}
	if b.isClosed() {
		return fmt.Errorf("zookeeper: %s %q: %w", op, key, claim.ErrClosed)
	}
	return nil
}

// wrap wraps err once with the operation and key.
func (b *Backend) wrap(op, key string, err error) error {
	if !errors.Is(err, claim.ErrClosed) && b.isClosed() {
		return fmt.Errorf("zookeeper: %s %q: %w (%w)", op, key, claim.ErrClosed, err)
	}
	return fmt.Errorf("zookeeper: %s %q: %w", op, key, err)
}

// do runs one blocking zk call, abandoning it (it finishes in the
// background, tracked for Close) when ctx is done or the Backend closes.
func (b *Backend) do(ctx context.Context, f func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return claim.ErrClosed
	}
	b.wg.Add(1)
	b.mu.Unlock()
	ch := make(chan error, 1)
	go func() {
		defer b.wg.Done()
		ch <- f()
	}()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-b.done:
		return claim.ErrClosed
	}
}

// multi runs ops as one transaction; on failure it also returns the index
// of the op that failed (-1 if unknown).
func (b *Backend) multi(ctx context.Context, ops ...any) ([]zk.MultiResponse, int, error) {
	var res []zk.MultiResponse
	err := b.do(ctx, func() (err error) {
		res, err = b.conn.Multi(ops...)
		return err
	})
	if err == nil {
		return res, -1, nil
	}
	if err == ctx.Err() || errors.Is(err, claim.ErrClosed) {
		// Abandoned: the call may still be running and writing res.
		return nil, -1, err
	}
	for i, r := range res {
		if r.Error != nil {
			return nil, i, err
		}
	}
	return nil, -1, err
}

// prepare creates the root nodes once.
func (b *Backend) prepare(ctx context.Context) error {
	b.mu.Lock()
	ready := b.ready
	b.mu.Unlock()
	if ready {
		return nil
	}
	var paths []string
	parts := strings.Split(strings.TrimPrefix(b.root, "/"), "/")
	for i := range parts {
		paths = append(paths, "/"+strings.Join(parts[:i+1], "/"))
	}
	for _, d := range []string{"l", "o", "v", "t", "clock"} {
		paths = append(paths, b.root+"/"+d)
	}
	err := b.do(ctx, func() error {
		if ok, _, err := b.conn.Exists(b.root + "/clock"); err != nil || ok {
			return err
		}
		for _, p := range paths {
			if _, err := b.conn.Create(p, nil, 0, b.acl); err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return fmt.Errorf("create %s: %w", p, err)
			}
		}
		return nil
	})
	if err == nil {
		b.mu.Lock()
		b.ready = true
		b.mu.Unlock()
	}
	return err
}

func newHolder() string {
	var r [holderLen / 2]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

func validHolder(h string) bool {
	if len(h) != holderLen {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil
}

func ceilMS(d time.Duration) int64 { return int64((d + time.Millisecond - 1) / time.Millisecond) }

func ttlData(ms int64) []byte { return []byte(strconv.FormatInt(ms, 10)) }

// claimOps creates the lock and owner nodes; the final setData reports the
// owner's stat, whose czxid (this transaction's zxid) is the token. With
// prev, it first deletes an expired claim: its owner node at the version
// read (so a racing Extend wins) and, since that owner exists, its lock.
func (b *Backend) claimOps(lock, holder string, ttlMS int64, prev *holderState) []any {
	var ops []any
	if prev != nil {
		ops = append(ops,
			&zk.DeleteRequest{Path: b.ownerPath(prev.holder), Version: prev.ownerVersion},
			&zk.DeleteRequest{Path: lock, Version: -1})
	}
	d := ttlData(ttlMS)
	return append(ops,
		&zk.CreateRequest{Path: lock, Data: []byte(holder), Acl: b.acl, Flags: zk.FlagEphemeral},
		&zk.CreateRequest{Path: b.ownerPath(holder), Data: d, Acl: b.acl, Flags: zk.FlagEphemeral},
		&zk.SetDataRequest{Path: b.ownerPath(holder), Data: d, Version: 0})
}

// holderState is what a claimer reads about the current claim on a key.
type holderState struct {
	holder       string
	ownerVersion int32
	ttl          int64 // ms
	expires      int64 // leader's clock, Unix ms
}

// remaining is how long the claim has left at now (Unix ms), at most its
// TTL (a local clock ahead of the leader's cannot stretch it).
func (s holderState) remaining(now int64) time.Duration {
	return time.Duration(min(s.expires-now, s.ttl)) * time.Millisecond
}

// inspect reads the claim on lock. ok is false if there is none to judge
// (no lock node, or it vanished between the two reads).
func (b *Backend) inspect(ctx context.Context, lock string) (holderState, bool, error) {
	// s is written by the call, which may outlive an abandoned do: it is
	// read only when do returned the call's own result.
	var s holderState
	err := b.do(ctx, func() error {
		data, _, err := b.conn.Get(lock)
		if err != nil {
			return err
		}
		s.holder = string(data)
		if !validHolder(s.holder) {
			return fmt.Errorf("lock node %s holds %q, not a holder ID: not written by this package", lock, data)
		}
		od, ost, err := b.conn.Get(b.ownerPath(s.holder))
		if err != nil {
			return err
		}
		ms, err := strconv.ParseInt(string(od), 10, 64)
		if err != nil {
			return fmt.Errorf("owner node of %s holds %q, not a TTL", lock, od)
		}
		s.ownerVersion, s.ttl, s.expires = ost.Version, ms, ost.Mtime+ms
		return nil
	})
	if errors.Is(err, zk.ErrNoNode) {
		return s, false, nil
	}
	if err != nil {
		return holderState{}, false, err
	}
	return s, true, nil
}

// TryClaim implements claim.Claimer. It makes one claim attempt; if the
// key is held by an expired claim (judged on the leader's clock) it takes
// it over. Claims racing it can make it re-read, at most three rounds.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader. A multi-op cannot read, so
// the claim's multi-op also creates and deletes the value node: it
// succeeds only if the key has no value, which is then known atomically
// with the claim in one round trip (the common case: a claim after a
// miss). If a value node exists, that multi-op fails and changes nothing;
// then the key is claimed without the probe and the value read after the
// claim (a value committed before the claim is seen): three round trips.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("zookeeper: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	if err := b.prepare(ctx); err != nil {
		return claim.Lease{}, nil, false, b.wrap(op, key, err)
	}
	ttlMS := ceilMS(ttl)
	lock := b.lockPath(key)
	var prev *holderState
	held := &claim.HeldError{Key: key}
	probe := read // the key has no value, as far as we know
	for round := 0; round < attempts; round++ {
		holder := newHolder()
		start := time.Now()
		ops := b.claimOps(lock, holder, ttlMS, prev)
		nClaim := len(ops)
		if probe {
			vp := b.valuePath(key)
			ops = append(ops, &zk.CreateRequest{Path: vp, Acl: b.acl}, &zk.DeleteRequest{Path: vp, Version: -1})
		}
		res, failed, err := b.multi(ctx, ops...)
		if err == nil {
			l := claim.Lease{
				Key: key, Holder: holder, Token: uint64(res[nClaim-1].Stat.Czxid),
				TTL: time.Duration(ttlMS) * time.Millisecond, Deadline: start.Add(time.Duration(ttlMS) * time.Millisecond),
			}
			if !read || probe {
				return l, nil, false, nil // no value node at the claim
			}
			v, found, err := b.getValue(ctx, key)
			if err != nil {
				// The caller gets no lease: give it back (best effort).
				_ = b.Release(ctx, l)
				return claim.Lease{}, nil, false, b.wrap(op, key, err)
			}
			return l, v, found, nil
		}
		if probe && failed == nClaim && errors.Is(err, zk.ErrNodeExists) {
			// The claim would have succeeded, but the key has a value:
			// claim without the probe, then read it.
			probe = false
			round--
			continue
		}
		if prev == nil && (!errors.Is(err, zk.ErrNodeExists) || failed != 0) {
			return claim.Lease{}, nil, false, b.wrap(op, key, err)
		}
		if prev != nil && !errors.Is(err, zk.ErrNoNode) && !errors.Is(err, zk.ErrBadVersion) && !errors.Is(err, zk.ErrNodeExists) {
			return claim.Lease{}, nil, false, b.wrap(op, key, err)
		}
		// Held, or changed under us: read the current claim.
		s, ok, err := b.inspect(ctx, lock)
		if err != nil {
			return claim.Lease{}, nil, false, b.wrap(op, key, err)
		}
		prev = nil
		if !ok {
			continue // released meanwhile: claim afresh
		}
		if rem := s.remaining(time.Now().UnixMilli()); rem > 0 {
			held.Remaining = rem
			return claim.Lease{}, nil, false, fmt.Errorf("zookeeper: %s %q: %w", op, key, held)
		}
		// Expired by our clock: ask the leader's.
		now, err := b.leaderNow(ctx)
		if err != nil {
			return claim.Lease{}, nil, false, b.wrap(op, key, err)
		}
		if rem := s.remaining(now); rem > 0 {
			held.Remaining = rem
			return claim.Lease{}, nil, false, fmt.Errorf("zookeeper: %s %q: %w", op, key, held)
		}
		prev = &s
	}
	return claim.Lease{}, nil, false, fmt.Errorf("zookeeper: %s %q: %w", op, key, held)
}

// owner returns the owner node of l, or an ErrLost error if l cannot be a
// lease of this package.
func (b *Backend) owner(op string, l claim.Lease) (string, error) {
	if !validHolder(l.Holder) {
		return "", fmt.Errorf("zookeeper: %s %q: %w (holder %q was never issued)", op, l.Key, claim.ErrLost, l.Holder)
	}
	return b.ownerPath(l.Holder), nil
}

// Extend implements claim.Claimer: one setData of the lease's owner node,
// which restarts its TTL on the leader's clock. Idempotent.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check("extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("zookeeper: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	if err := ctx.Err(); err != nil {
		return claim.Lease{}, b.wrap("extend", l.Key, err)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("zookeeper: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	owner, err := b.owner("extend", l)
	if err != nil {
		return claim.Lease{}, err
	}
	ttlMS := ceilMS(ttl)
	var czxid int64
	err = b.do(ctx, func() error {
		st, err := b.conn.Set(owner, ttlData(ttlMS), -1)
		if err == nil {
			czxid = st.Czxid
		}
		return err
	})
	if errors.Is(err, zk.ErrNoNode) || (err == nil && uint64(czxid) != l.Token) {
		return claim.Lease{}, fmt.Errorf("zookeeper: extend %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return claim.Lease{}, b.wrap("extend", l.Key, err)
	}
	l.TTL = time.Duration(ttlMS) * time.Millisecond
	l.Deadline = start.Add(l.TTL)
	return l, nil
}

// Release implements claim.Claimer: one multi-op deleting the owner node
// and the lock node, which fails as a whole (ErrLost) if the owner node is
// gone. The lease's Deadline is not consulted: a lease renewed through
// another copy (KeepAlive) is released too.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check("release", l.Key); err != nil {
		return err
	}
	owner, err := b.owner("release", l)
	if err != nil {
		return err
	}
	// Past this copy's Deadline, the lease may still be current if a
	// later Extend renewed it (the owner node's mtime): judge it as the
	// server has it, in this rare case only.
	var expired bool
	if l.Expired(time.Now()) {
		if expired, err = b.expiredOnServer(ctx, l); err != nil {
			return b.wrap("release", l.Key, err)
		}
	}
	_, failed, err := b.multi(ctx,
		&zk.DeleteRequest{Path: owner, Version: -1},
		&zk.DeleteRequest{Path: b.lockPath(l.Key), Version: -1})
	if errors.Is(err, zk.ErrNoNode) && failed == 0 {
		return fmt.Errorf("zookeeper: release %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return b.wrap("release", l.Key, err)
	}
	if expired {
		return fmt.Errorf("zookeeper: release %q: %w (it had expired; its lock, still unclaimed, was freed)", l.Key, claim.ErrLost)
	}
	return nil
}

// expiredOnServer reports whether l, still holding its key, has outlived
// its TTL as last extended (owner node mtime + TTL), by the local clock
// and, if that says so, by the leader's (as TryClaim judges a takeover).
// A lease that no longer holds the key is left to the release itself.
func (b *Backend) expiredOnServer(ctx context.Context, l claim.Lease) (bool, error) {
	s, ok, err := b.inspect(ctx, b.lockPath(l.Key))
	if err != nil || !ok || s.holder != l.Holder {
		return false, err
	}
	if s.remaining(time.Now().UnixMilli()) > 0 {
		return false, nil
	}
	now, err := b.leaderNow(ctx)
	if err != nil {
		return false, err
	}
	return s.remaining(now) <= 0, nil
}

// leaderNow returns the leader's clock in Unix ms: the mtime of a write
// to the clock node (one round trip), by which owner mtimes are judged.
func (b *Backend) leaderNow(ctx context.Context) (int64, error) {
	var now int64
	err := b.do(ctx, func() error {
		st, err := b.conn.Set(b.root+"/clock", nil, -1)
		if err == nil {
			now = st.Mtime
		}
		return err
	})
	if err != nil {
		return 0, err // now may still be written by an abandoned call: not read
	}
	return now, nil
}

// Commit implements claim.Claimer: a multi-op that checks the lease's
// owner node exists and writes the value node (AtomicCommit).
func (b *Backend) Commit(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	if err := b.check("commit", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit", l.Key, val, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return b.wrap("commit", l.Key, err)
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("zookeeper: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	owner, err := b.owner("commit", l)
	if err != nil {
		return err
	}
	if err := b.prepare(ctx); err != nil {
		return b.wrap("commit", l.Key, err)
	}
	// After a miss the value is usually absent (Get deletes expired ones).
	return b.write(ctx, "commit", l.Key, owner, encodeValue(val, ttl), true)
}

// CommitRelease implements claim.CommitReleaser: one multi-op that
// deletes the lease's owner node (failing, and changing nothing, if the
// lease is not current: ErrLost), writes the value node and deletes the
// lock node, whose watchers then see the release. Like Commit it creates
// the value node first (after a miss it is usually absent) and sets it if
// it exists: a second multi-op then.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	if err := b.check("commit-release", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit-release", l.Key, val, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return b.wrap("commit-release", l.Key, err)
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("zookeeper: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	owner, err := b.owner("commit-release", l)
	if err != nil {
		return err
	}
	if err := b.prepare(ctx); err != nil {
		return b.wrap("commit-release", l.Key, err)
	}
	path, data := b.valuePath(l.Key), encodeValue(val, ttl)
	ws := []any{
		&zk.CreateRequest{Path: path, Data: data, Acl: b.acl},
		&zk.SetDataRequest{Path: path, Data: data, Version: -1},
	}
	for range attempts {
		for _, w := range ws {
			_, failed, err := b.multi(ctx,
				&zk.DeleteRequest{Path: owner, Version: -1}, w,
				&zk.DeleteRequest{Path: b.lockPath(l.Key), Version: -1})
			switch {
			case err == nil:
				return nil
			case failed == 0 && errors.Is(err, zk.ErrNoNode):
				return fmt.Errorf("zookeeper: commit-release %q: %w", l.Key, claim.ErrLost)
			case failed != 1 || !errors.Is(err, zk.ErrNodeExists) && !errors.Is(err, zk.ErrNoNode):
				return b.wrap("commit-release", l.Key, err)
			}
		}
	}
	return b.wrap("commit-release", l.Key, errors.New("value node kept changing under concurrent writers"))
}

// Close implements claim.Backend. It ends the Backend's watches and topic
// subscriptions and closes every Subscription's channel. A connection the
// Backend opened from a URL is dropped without ending the ZooKeeper
// session, so leases are not released: they expire by their TTL (or when
// the session times out). A connection passed to New stays open.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	close(b.done)
	subs := make([]*topicSub, 0, len(b.topics))
	for t := range b.topics {
		subs = append(subs, t)
	}
	b.mu.Unlock()
	for _, t := range subs {
		b.stopTopic(t)
	}
	b.hub.Close()
	if b.own != nil {
		b.own.drop()
		b.conn.Close()
	}
	b.wg.Wait()
	return nil
}
