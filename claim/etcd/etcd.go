// Package etcd is the claim backend for etcd v3: claims are transactions on
// a lock key's CreateRevision, leases are etcd leases, and waiters are woken
// by watches.
//
// # URLs
//
//	etcd://HOST[:PORT][,HOST[:PORT]...][/PREFIX][?PARAMS]
//	etcds://USER:PASSWORD@HOST[:PORT]/PREFIX?cacert=ca.pem&cert=c.pem&key=c-key.pem
//
// The default host is 127.0.0.1, the default port 2379, the default prefix
// "stampede" (net/url rejects "h1:2379,h2": give each host its port). etcds:// dials with TLS (the system roots unless cacert is
// given). Parameters: dialtimeout (default 5s), minttl (the server's
// minimum lease TTL; default: asked of the server once at open), maxvalue
// (bytes, default DefaultMaxValueLen), username and password (instead of
// the URL's user info), and for etcds:// only cacert, cert, key (PEM file
// paths) and servername. An unknown parameter is an error. The password
// never appears in errors.
//
// # Semantics
//
// TryClaim grants an etcd lease of its own for the claim, then runs one
// transaction: if the lock key does not exist (CreateRevision == 0), put it
// with the holder's random ID, attached to that lease; otherwise read it.
// The fencing token is the lock key's CreateRevision: etcd's revision
// counter is cluster-wide, strictly increasing and persisted in the raft
// log, so tokens keep increasing across release, expiry, takeover and
// restarts of the cluster (DurableFence). Release, Commit and the
// ownership check of Extend are transactions comparing the lock key's
// CreateRevision with the token and its value with the holder, so a stale
// holder can never release, extend or overwrite a newer holder's claim;
// Commit writes the value in that same transaction (AtomicCommit);
// CommitRelease puts the value and deletes the lock key in one such
// transaction, and TryClaimRead adds a get of the value key to the claim
// transaction. A crashed holder's lease expires by itself and etcd deletes
// the lock key with it.
//
// Lease TTLs are whole seconds (TTLGranularity 1s) and never shorter than
// the server's minimum, 1.5 × its election timeout rounded up (2 s with
// etcd's default 1 s election timeout): shorter requests are granted that
// minimum, and Lease.TTL says what was granted. etcd expires leases on the
// leader's clock and revokes them in a loop that runs every 500 ms, so a
// lock key may outlive its lease by up to about half a second. Extend with
// the lease's own TTL is a lease keep-alive plus an ownership check; with
// another TTL it moves the lock key to a new lease in one transaction.
// HeldError.Remaining is read from the holder's lease (TimeToLive), which
// etcd reports in whole seconds: Remaining is the upper end, rounded up.
//
// Values carry their own expiry time (the writer's wall clock plus the TTL;
// readers compare it with theirs, so clock skew between processes shifts
// value expiry by the skew), and are also attached to a lease shared by all
// values of the same TTL class written by this Backend, so that etcd deletes
// them some time after they expire (at most about twice their TTL) without
// one lease per write.
//
// Notification is pushed: each Backend keeps one watch per subscribed key
// (all multiplexed on the client's one gRPC watch stream), started at the
// current revision so it is served from etcd's synced watcher group. A
// release, a lease expiry and Notify all wake it. If a watch breaks (its
// revision was compacted while the client was disconnected, or the server
// cancelled it), the Backend re-watches from the current revision and then
// wakes every local subscriber of the key to re-check state, so no release
// is lost.
//
// # Errors
//
// ErrHeld (as *claim.HeldError), ErrLost, ErrNotFound, ErrTooLarge,
// ErrInvalidKey and ErrClosed from package claim, wrapped once as
// "etcd: OP KEY: ..."; etcd's and gRPC's errors are wrapped underneath.
package etcd

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
)

// Scheme and TLSScheme are the URL schemes this package registers.
const (
	Scheme    = "etcd"
	TLSScheme = "etcds"
)

const (
	// DefaultPrefix is the key prefix used when Options.Prefix is empty.
	DefaultPrefix = "stampede"
	// RequestLimit is etcd's default --max-request-bytes (1.5 MiB).
	RequestLimit = 1572864
	// DefaultMaxValueLen is the largest value Commit and Set accept by
	// default: RequestLimit less room for the keys and the transaction
	// around the value.
	DefaultMaxValueLen = RequestLimit - requestOverhead - valueHeader
	// MaxPrefixLen is the longest Options.Prefix accepted.
	MaxPrefixLen = 1024

	requestOverhead = 8 << 10
	valueHeader     = 9 // version byte + 8-byte expiry
	maxKeyLen       = 512
)

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(TLSScheme, &URLOpener{})
}

// keys maps any key to at most maxKeyLen bytes with no control character,
// so that lockKey+"\x00..." can only be this backend's own notify key.
var keys = claim.KeyEncoder{MaxLen: maxKeyLen, Safe: func(b byte) bool { return b >= 0x20 && b != 0x7f }}

// Options configure a Backend. nil means defaults; every zero field is a
// documented default.
type Options struct {
	// Prefix is prepended (with "/") to every key this backend writes.
	// Empty means DefaultPrefix. Every process sharing keys must use the
	// same prefix. Trailing slashes are dropped.
	Prefix string
	// MinTTL is the server's minimum lease TTL (1.5 × election timeout,
	// rounded up to whole seconds). Zero means New asks the server: it
	// grants a 1-second lease, reads the TTL granted, and revokes it.
	MinTTL time.Duration
	// MaxValueLen is the largest value accepted (0: DefaultMaxValueLen).
	// Raise it only together with the server's --max-request-bytes.
	MaxValueLen int
}

// Backend is one client of an etcd cluster. It implements claim.Backend,
// claim.Broadcaster, claim.ClaimReader and claim.CommitReleaser, and is
// safe for concurrent use.
type Backend struct {
	cli    *clientv3.Client
	own    bool // Close closes cli
	prefix string
	minTTL int64 // seconds
	maxVal int
	hub    *hub.Hub

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	wg      sync.WaitGroup // background goroutines
	watches map[string]*watch

	watchGaps atomic.Int64 // broken watches (for tests)

	gcMu sync.Mutex
	gc   map[int64]gcLease // TTL class (seconds) -> shared value lease
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.Broadcaster    = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

// New returns a Backend using the caller's own configured client (TLS,
// auth, endpoints, dial options are the caller's). Close does not close
// client. Unless opt.MinTTL is set, New makes one round trip to learn the
// server's minimum lease TTL, bounded by 10 s.
func New(client *clientv3.Client, opt *Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("etcd: New: nil client")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return newBackend(ctx, client, opt, false)
}

func newBackend(ctx context.Context, cli *clientv3.Client, opt *Options, own bool) (*Backend, error) {
	var o Options
	if opt != nil {
		o = *opt
	}
	prefix := strings.TrimRight(o.Prefix, "/")
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if len(prefix) > MaxPrefixLen {
		return nil, fmt.Errorf("etcd: prefix of %d bytes: limit %d", len(prefix), MaxPrefixLen)
	}
	if o.MinTTL < 0 || o.MaxValueLen < 0 {
		return nil, errors.New("etcd: negative MinTTL or MaxValueLen")
	}
	b := &Backend{
		cli:     cli,
		own:     own,
		prefix:  prefix,
		minTTL:  ceilSeconds(o.MinTTL),
		maxVal:  o.MaxValueLen,
		watches: map[string]*watch{},
		gc:      map[int64]gcLease{},
	}
	if b.maxVal == 0 {
		b.maxVal = DefaultMaxValueLen
	}
	if o.MinTTL == 0 {
		// Learn the server's minimum: it grants max(asked, minimum).
		g, err := cli.Grant(ctx, 1)
		if err != nil {
			return nil, fmt.Errorf("etcd: asking the server for its minimum lease TTL: %w", err)
		}
		b.minTTL = g.TTL
		if _, err := cli.Revoke(ctx, g.ID); err != nil {
			return nil, fmt.Errorf("etcd: asking the server for its minimum lease TTL: %w", err)
		}
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.hub = hub.New(substrate{b})
	return b, nil
}

// Client returns the etcd client the Backend uses.
func (b *Backend) Client() *clientv3.Client { return b.cli }

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Duration(b.minTTL) * time.Second,
		TTLGranularity: time.Second,
		MaxValueLen:    b.maxVal,
		Broadcast:      true,
	}
}

// Subscriptions returns how many keys this Backend watches (one watch per
// key however many local subscribers).
func (b *Backend) Subscriptions() int { return b.hub.Len() }

func (b *Backend) lockKey(key string) string    { return b.prefix + "/c/" + keys.Encode(key) }
func (b *Backend) valueKey(key string) string   { return b.prefix + "/v/" + keys.Encode(key) }
func (b *Backend) topicKey(topic string) string { return b.prefix + "/t/" + keys.Encode(topic) }

// notifySuffix makes the notify key of a claim key sort right after its
// lock key: [lock, lock+"\x01") holds exactly the two (encoded keys have no
// control characters).
const notifySuffix = "\x00n"

func (b *Backend) check(op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("etcd: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("etcd: %s %q: %w", op, key, claim.ErrClosed)
	}
	return nil
}

// wrap wraps err once with op and key, mapping etcd's request-too-large to
// claim.ErrTooLarge.
func wrap(op, key string, err error) error {
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge) {
		return fmt.Errorf("etcd: %s %q: %w: %w", op, key, claim.ErrTooLarge, err)
	}
	return fmt.Errorf("etcd: %s %q: %w", op, key, err)
}

// ctxErr returns ctx's error if ctx is done (the call was abandoned), so
// callers see context.Canceled or DeadlineExceeded, else err.
func ctxErr(ctx context.Context, err error) error {
	if c := ctx.Err(); c != nil {
		return c
	}
	return err
}

func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// leaseSeconds is the TTL in whole seconds the server will grant for ttl.
func (b *Backend) leaseSeconds(ttl time.Duration) int64 {
	return max(ceilSeconds(ttl), b.minTTL, 1)
}

func holderID() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

func handle(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }

func parseHandle(op string, l claim.Lease) (clientv3.LeaseID, error) {
	id, err := strconv.ParseInt(l.Handle, 16, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("etcd: %s %q: lease handle %q is not from this backend: %w", op, l.Key, l.Handle, claim.ErrLost)
	}
	return clientv3.LeaseID(id), nil
}

// goBackground runs f on a goroutine Close waits for, unless closed.
func (b *Backend) goBackground(f func(ctx context.Context)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f(b.ctx)
	}()
}

// revokeLater revokes a lease this backend no longer needs, off the
// caller's path. If it fails the lease simply expires.
func (b *Backend) revokeLater(id clientv3.LeaseID) {
	b.goBackground(func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, _ = b.cli.Revoke(ctx, id)
	})
}

// owned compares the lock key with the lease's token and holder.
func owned(lk string, l claim.Lease) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(lk), "=", int64(l.Token)),
		clientv3.Compare(clientv3.Value(lk), "=", l.Holder),
	}
}

// TryClaim implements claim.Claimer: a lease grant, then one transaction.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: the claim transaction also
// gets the value key (Then: put the lock key, get the value key), so the
// value is read at the claim's revision.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("etcd: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	start := time.Now()
	g, err := b.cli.Grant(ctx, b.leaseSeconds(ttl))
	if err != nil {
		return claim.Lease{}, nil, false, wrap(op, key, ctxErr(ctx, err))
	}
	lk, holder := b.lockKey(key), holderID()
	then := []clientv3.Op{clientv3.OpPut(lk, holder, clientv3.WithLease(g.ID))}
	if read {
		then = append(then, clientv3.OpGet(b.valueKey(key)))
	}
	resp, err := b.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(then...).
		Else(clientv3.OpGet(lk)).
		Commit()
	if err != nil {
		b.revokeLater(g.ID)
		return claim.Lease{}, nil, false, wrap(op, key, ctxErr(ctx, err))
	}
	if !resp.Succeeded {
		b.revokeLater(g.ID)
		held := &claim.HeldError{Key: key}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != 0 {
			held.Remaining = b.remaining(ctx, clientv3.LeaseID(kvs[0].Lease))
		}
		return claim.Lease{}, nil, false, fmt.Errorf("etcd: %s %q: %w", op, key, held)
	}
	granted := time.Duration(g.TTL) * time.Second
	l := claim.Lease{
		Key:      key,
		Holder:   holder,
		Token:    uint64(resp.Header.Revision), // the lock key's CreateRevision
		TTL:      granted,
		Deadline: start.Add(granted),
		Handle:   handle(g.ID),
	}
	if !read {
		return l, nil, false, nil
	}
	kvs := resp.Responses[1].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return l, nil, false, nil
	}
	v, ok, err := decodeValue(kvs[0].Value, time.Now())
	if err != nil {
		// The caller gets no lease: give it back (best effort).
		_ = b.Release(ctx, l)
		return claim.Lease{}, nil, false, fmt.Errorf("etcd: %s %q: %w", op, key, err)
	}
	if !ok {
		return l, nil, false, nil
	}
	return l, v, true, nil
}

// remaining asks how long the holder's lease has left. etcd truncates it to
// whole seconds, so the upper end of that second is returned; 0 if the
// lease is gone (its key is being deleted) or the call fails.
func (b *Backend) remaining(ctx context.Context, id clientv3.LeaseID) time.Duration {
	r, err := b.cli.TimeToLive(ctx, id)
	if err != nil || r.TTL < 0 {
		return 0
	}
	return time.Duration(r.TTL+1) * time.Second
}

// Extend implements claim.Claimer. With the lease's own TTL it is a
// keep-alive of the lease and a read that checks the lock key is still
// this lease's; otherwise (or if the lease is gone) it grants a new lease
// and moves the lock key onto it in a transaction fenced by the token.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check("extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("etcd: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("etcd: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	id, err := parseHandle("extend", l)
	if err != nil {
		return claim.Lease{}, err
	}
	sec := b.leaseSeconds(ttl)
	lk := b.lockKey(l.Key)
	if time.Duration(sec)*time.Second == l.TTL {
		ka, err := b.cli.KeepAliveOnce(ctx, id)
		switch {
		case err == nil:
			g, err := b.cli.Get(ctx, lk)
			if err != nil {
				return claim.Lease{}, wrap("extend", l.Key, ctxErr(ctx, err))
			}
			if len(g.Kvs) == 1 && uint64(g.Kvs[0].CreateRevision) == l.Token &&
				string(g.Kvs[0].Value) == l.Holder && g.Kvs[0].Lease == int64(id) {
				l.TTL = time.Duration(ka.TTL) * time.Second
				l.Deadline = start.Add(l.TTL)
				return l, nil
			}
			// Not on this lease any more: judged by token below.
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			// Judged by token below.
		default:
			return claim.Lease{}, wrap("extend", l.Key, ctxErr(ctx, err))
		}
		start = time.Now()
		if l.Expired(start) {
			return claim.Lease{}, fmt.Errorf("etcd: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
		}
	}
	g, err := b.cli.Grant(ctx, sec)
	if err != nil {
		return claim.Lease{}, wrap("extend", l.Key, ctxErr(ctx, err))
	}
	resp, err := b.cli.Txn(ctx).If(owned(lk, l)...).
		Then(clientv3.OpGet(lk), clientv3.OpPut(lk, l.Holder, clientv3.WithLease(g.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		b.revokeLater(g.ID)
		if err != nil {
			return claim.Lease{}, wrap("extend", l.Key, ctxErr(ctx, err))
		}
		return claim.Lease{}, fmt.Errorf("etcd: extend %q: %w", l.Key, claim.ErrLost)
	}
	// The lease the lock key was on is detached now: revoking it deletes
	// nothing.
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != int64(g.ID) {
		b.revokeLater(clientv3.LeaseID(kvs[0].Lease))
	}
	l.TTL = time.Duration(g.TTL) * time.Second
	l.Deadline = start.Add(l.TTL)
	l.Handle = handle(g.ID)
	return l, nil
}

// Release implements claim.Claimer: one transaction deleting the lock key
// if it is still the lease's; the watchers of the key see the delete. The
// lease, now attached to nothing, is revoked in the background.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check("release", l.Key); err != nil {
		return err
	}
	id, err := parseHandle("release", l)
	if err != nil {
		return err
	}
	lk := b.lockKey(l.Key)
	resp, err := b.cli.Txn(ctx).If(owned(lk, l)...).Then(clientv3.OpDelete(lk)).Commit()
	if err != nil {
		return wrap("release", l.Key, ctxErr(ctx, err))
	}
	if !resp.Succeeded {
		// A stale lease is expired or was revoked by its own Release; a
		// forged one may name the current holder's lease: revoke nothing.
		return fmt.Errorf("etcd: release %q: %w", l.Key, claim.ErrLost)
	}
	b.revokeLater(id)
	return nil
}

// Commit implements claim.Claimer: the value is put in the transaction that
// checks the lease.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check("commit", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit", l.Key, value, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("etcd: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	put, gc, err := b.putValue(ctx, l.Key, value, ttl)
	if err != nil {
		return wrap("commit", l.Key, ctxErr(ctx, err))
	}
	lk := b.lockKey(l.Key)
	resp, err := b.cli.Txn(ctx).If(owned(lk, l)...).Then(put).Commit()
	if err != nil {
		b.gcFailed(gc, err)
		return wrap("commit", l.Key, ctxErr(ctx, err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcd: commit %q: %w", l.Key, claim.ErrLost)
	}
	return nil
}

// CommitRelease implements claim.CommitReleaser: one transaction that, if
// the lock key is still the lease's, puts the value and deletes the lock
// key (the key's watchers see the delete, at the revision that wrote the
// value). The lease, now attached to nothing, is revoked in the
// background.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check("commit-release", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit-release", l.Key, value, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("etcd: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	id, err := parseHandle("commit-release", l)
	if err != nil {
		return err
	}
	put, gc, err := b.putValue(ctx, l.Key, value, ttl)
	if err != nil {
		return wrap("commit-release", l.Key, ctxErr(ctx, err))
	}
	lk := b.lockKey(l.Key)
	resp, err := b.cli.Txn(ctx).If(owned(lk, l)...).Then(put, clientv3.OpDelete(lk)).Commit()
	if err != nil {
		b.gcFailed(gc, err)
		return wrap("commit-release", l.Key, ctxErr(ctx, err))
	}
	if !resp.Succeeded {
		return fmt.Errorf("etcd: commit-release %q: %w", l.Key, claim.ErrLost)
	}
	b.revokeLater(id)
	return nil
}

// Close implements claim.Backend: it stops every watch, closes every
// Subscription's channel, and closes the client if Open made it (a client
// given to New is the caller's to close). Leases are not revoked.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.hub.Close()
	b.wg.Wait()
	if b.own {
		if err := b.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("etcd: close: %w", err)
		}
	}
	return nil
}
