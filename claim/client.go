package claim

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Options configure a Client. nil, and every zero field, means the default.
type Options struct {
	// Logger receives what the Client cannot return to a caller (a topic
	// log that could not be read, a cleanup release that failed). Default:
	// slog.Default().
	Logger *slog.Logger
	// OpTimeout bounds every backend call the Client makes, whatever the
	// caller's context: a call the backend has not answered by then fails
	// with ErrUnavailable. A context with an earlier deadline still ends
	// the call earlier. It also bounds the check of the server when the
	// Client is opened, and Close. Default DefaultOpTimeout (5 s); in a
	// URL, op_timeout=2s.
	OpTimeout time.Duration
	// Lazy skips the check of the server when the Client is opened (Open,
	// Connect and every backend package's New): the first call then finds
	// a wrong password or a missing table. Use it to start a process
	// while its backend is still coming up; Ping checks it later. In a
	// URL, lazy=true.
	Lazy bool
	// MeterProvider receives the Client's metrics: the duration of every
	// backend call, by operation, backend and error class (see the
	// package doc, "Metrics and traces"). Default: the global provider
	// (otel.GetMeterProvider), looked up at each call, so one installed
	// after the Client was opened is used from then on; with none
	// installed nothing is recorded, at almost no cost.
	MeterProvider metric.MeterProvider
	// TracerProvider receives a span per backend call, a child of the
	// span in the caller's context. Default: the global provider
	// (otel.GetTracerProvider), looked up at each call; with none
	// installed no span is started.
	TracerProvider trace.TracerProvider
}

// Client is the portable handle on one backend: what claim.Open and every
// backend package's New return. It is one process's connection to the
// substrate; several Clients opened on one substrate behave like several
// processes. A Client is safe for concurrent use.
//
// Everything that is the same on every substrate happens here, once:
// arguments are checked (an empty key is ErrInvalidKey, a value over
// Features.MaxValueLen is ErrTooLarge, a non-positive lease TTL an error)
// before any I/O; Commit and Extend of a lease past its local Deadline
// answer ErrLost without I/O; every lease gets a random holder ID and a
// Deadline taken before its request was sent; errors read
// "claim: OP KEY: ..." and wrap the sentinels and the driver's error;
// one substrate subscription per key (and per topic) serves every local
// subscriber; optional fast paths the driver lacks are built from the
// required ones; waiting (Acquire, GetOrAcquire) and renewal (KeepAlive)
// are written once.
type Client struct {
	d         driver.Driver
	feat      driver.Features
	opTimeout time.Duration
	lazy      bool
	cr        driver.ClaimReader    // nil: TryClaim + Get
	crl       driver.CommitReleaser // nil: Commit + Release
	bat       driver.Batcher        // nil: single-key calls, concurrently
	rbat      driver.ReleaseBatcher // nil: releases one key at a time
	bc        driver.Broadcaster    // the driver's, or logTopics
	log       *slog.Logger
	keys      *fanout // wake-ups, per key
	topics    *fanout // messages, per topic

	handlers  sync.WaitGroup // topic handlers' goroutines
	cleanups  sync.WaitGroup // cleanups a caller's ctx cut short (cleanup)
	cleanMu   sync.Mutex     // guards cleanups.Add against Close's Wait
	noClean   bool           // Close has begun: no new background cleanup
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	logTopics *logTopics // topics of a driver without a Broadcaster
	tel       telemetry  // metrics and traces (otel.go)
	fairState            // AcquireFair (fair.go)
}

// NewClient returns a Client in front of d. It does no I/O and starts no
// goroutine; Close closes d. Backend packages call it from their New;
// users call it for a driver of their own.
func NewClient(d driver.Driver, opt *Options) *Client {
	var o Options
	if opt != nil {
		o = *opt
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.OpTimeout <= 0 {
		o.OpTimeout = DefaultOpTimeout
	}
	c := &Client{d: d, feat: d.Features(), log: o.Logger, opTimeout: o.OpTimeout, lazy: o.Lazy}
	c.tel.init(&o, c.feat.Name)
	if pc, ok := d.(driver.PollCounter); ok {
		c.tel.registerPolls(&o, pc)
	}
	c.cr, _ = d.(driver.ClaimReader)
	c.crl, _ = d.(driver.CommitReleaser)
	c.bat, _ = d.(driver.Batcher)
	c.rbat, _ = d.(driver.ReleaseBatcher)
	c.keys = newFanout(func(ctx context.Context, key string, fire func([]byte, bool)) error {
		return d.Subscribe(ctx, key, func() { fire(nil, false) })
	}, d.Unsubscribe)
	if vn, ok := d.(driver.ValueNotifier); ok {
		// A wake-up's message is the value it carries (nil: none).
		c.keys.subscribe = func(ctx context.Context, key string, fire func([]byte, bool)) error {
			return vn.SubscribeValue(ctx, key, func(v []byte) { fire(v, false) })
		}
	}
	if c.bat != nil {
		c.keys.subscribeMany = func(ctx context.Context, keys []string, fires []func([]byte, bool)) error {
			wakes := make([]func(), len(fires))
			for i, f := range fires {
				wakes[i] = func() { f(nil, false) }
			}
			return c.chunks(len(keys), func(lo, hi int) error {
				return c.bat.SubscribeMany(ctx, keys[lo:hi], wakes[lo:hi])
			})
		}
	}
	var ok bool
	if c.bc, ok = d.(driver.Broadcaster); !ok {
		c.logTopics = &logTopics{c: c, subs: map[string]*topicFollower{}}
		c.bc = c.logTopics
	}
	c.topics = newFanout(c.bc.SubscribeTopic, c.bc.UnsubscribeTopic)
	c.initFair(d)
	for _, f := range []*fanout{c.keys, c.topics, c.grants} {
		if f != nil {
			f.timeout = c.opTimeout
		}
	}
	return c
}

// reservedPrefix starts the keys the Client uses for itself (topic logs).
const reservedPrefix = "\x00stampede:"

// check refuses what no driver is asked to do: an invalid key, a closed
// Client, a done ctx.
func (c *Client) check(ctx context.Context, op, key string) error {
	if key == "" || strings.HasPrefix(key, reservedPrefix) {
		return opError(op, key, ErrInvalidKey)
	}
	if c.closed.Load() {
		return opError(op, key, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return opError(op, key, err)
	}
	return nil
}

func (c *Client) checkTTL(op, key string, ttl time.Duration) error {
	if ttl <= 0 {
		return opError(op, key, fmt.Errorf("lease ttl must be positive, got %s", ttl))
	}
	return nil
}

func (c *Client) checkValue(op, key string, value []byte, ttl time.Duration) error {
	if ttl < 0 {
		return opError(op, key, fmt.Errorf("negative ttl %s", ttl))
	}
	if n := c.feat.MaxValueLen; n > 0 && len(value) > n {
		return opError(op, key, &TooLargeError{What: "value", Size: len(value), Limit: n})
	}
	return nil
}

// checkLive refuses a lease past its local Deadline.
func checkLive(op string, l Lease, now time.Time) error {
	if l.Expired(now) {
		return opError(op, l.Key, fmt.Errorf("%w (local deadline passed)", ErrLost))
	}
	return nil
}

// newHolder returns a new Holder: 96 random bits from math/rand/v2's
// generator (ChaCha8, seeded from the OS per thread), in hex. A Holder
// must be unique, not secret (whoever can read it can read the backend);
// crypto/rand cost a getrandom system call, and the stack growth it
// causes, on every claim.
func newHolder() string {
	var raw [12]byte
	binary.LittleEndian.PutUint64(raw[:8], rand.Uint64())
	binary.LittleEndian.PutUint32(raw[8:], rand.Uint32())
	var b [24]byte
	hex.Encode(b[:], raw[:])
	return string(b[:])
}

// claimError wraps a TryClaim error, naming the key in a *HeldError.
func claimError(op, key string, err error) error {
	var he *HeldError
	if errors.As(err, &he) {
		he.Key = key
	}
	return opError(op, key, err)
}

// stamp fills in what the Client owns in a lease the driver granted.
func stamp(l Lease, key, holder string, start time.Time) Lease {
	l.Key, l.Holder = key, holder
	l.Deadline = start.Add(l.TTL)
	return l
}

// TryClaim atomically claims key for ttl if no live lease exists, in one
// round trip. It returns the new Lease, or an error wrapping ErrHeld (a
// *HeldError, carrying the remaining lifetime of the current lease when
// the backend can tell) if another lease is live. It never waits for the
// key (Acquire does). ttl is rounded up to the backend's granularity and
// minimum (Features); the Lease says what was granted, and its Deadline is
// the local clock before the request plus that TTL. A ttl <= 0 is an
// error, neither ErrHeld nor a lease.
func (c *Client) TryClaim(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := c.check(ctx, "claim", key); err != nil {
		return Lease{}, err
	}
	return c.tryClaim(ctx, key, ttl)
}

func (c *Client) tryClaim(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := c.checkTTL("claim", key, ttl); err != nil {
		return Lease{}, err
	}
	holder := newHolder()
	cl := c.begin(ctx, "claim")
	l, err := c.d.TryClaim(cl.ctx, key, holder, ttl)
	if err = c.end(ctx, cl, err); err != nil {
		return Lease{}, claimError("claim", key, err)
	}
	return stamp(l, key, holder, cl.start), nil
}

// TryClaimRead is TryClaim that also returns the value stored under key as
// of the claim (found false, value nil: none), so a holder learns whether
// another holder committed a value between its own read and its claim. On
// a backend with the fast path (driver.ClaimReader) it is one atomic round
// trip; otherwise TryClaim then Get (a value committed in between is seen
// too). If that Get fails, the lease is released and the error returned.
func (c *Client) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (l Lease, value []byte, found bool, err error) {
	if err := c.check(ctx, "claim-read", key); err != nil {
		return Lease{}, nil, false, err
	}
	return c.tryClaimRead(ctx, key, ttl)
}

func (c *Client) tryClaimRead(ctx context.Context, key string, ttl time.Duration) (Lease, []byte, bool, error) {
	if c.cr == nil {
		l, err := c.tryClaim(ctx, key, ttl)
		if err != nil {
			return l, nil, false, err
		}
		cl := c.begin(ctx, "get")
		v, err := c.d.Get(cl.ctx, key)
		err = c.end(ctx, cl, err)
		switch {
		case err == nil:
			return l, v, true, nil
		case errors.Is(err, ErrNotFound):
			return l, nil, false, nil
		}
		c.cleanupRelease(ctx, l)
		return Lease{}, nil, false, opError("claim-read", key, err)
	}
	if err := c.checkTTL("claim-read", key, ttl); err != nil {
		return Lease{}, nil, false, err
	}
	holder := newHolder()
	cl := c.begin(ctx, "claim-read")
	l, v, found, err := c.cr.TryClaimRead(cl.ctx, key, holder, ttl)
	if err = c.end(ctx, cl, err); err != nil {
		return Lease{}, nil, false, claimError("claim-read", key, err)
	}
	if !found {
		v = nil
	}
	return stamp(l, key, holder, cl.start), v, found, nil
}

// cleanupRelease releases a lease nobody will use, best effort (cleanup).
func (c *Client) cleanupRelease(ctx context.Context, l Lease) {
	c.cleanup(ctx, "release", l.Key, "the lease expires by its TTL", func(ctx context.Context) error {
		return c.d.Release(ctx, l)
	})
}

// cleanupReleaseMany releases leases (of distinct keys) nobody will
// use, best effort (cleanup): in one ReleaseMany per Features.MaxBatch
// leases where the driver has one, else one key at a time, concurrently.
func (c *Client) cleanupReleaseMany(ctx context.Context, leases []Lease) {
	if c.rbat == nil || len(leases) == 1 {
		driver.Each(len(leases), batchConcurrency, func(i int) { c.cleanupRelease(ctx, leases[i]) })
		return
	}
	_ = c.chunks(len(leases), func(lo, hi int) error {
		part := leases[lo:hi]
		c.cleanup(ctx, "release-many", batchOpKey(leaseKeys(part)), "the leases expire by their TTL", func(ctx context.Context) error {
			errs, err := c.rbat.ReleaseMany(ctx, part)
			if err != nil {
				return err
			}
			for _, err := range errs {
				if err != nil && !errors.Is(err, ErrLost) {
					return err
				}
			}
			return nil
		})
		return nil
	})
}

// leaseKeys returns the leases' keys.
func leaseKeys(leases []Lease) []string {
	ks := make([]string, len(leases))
	for i, l := range leases {
		ks[i] = l.Key
	}
	return ks
}

// cleanup runs op, a best-effort backend call that undoes what a call
// leaves behind (a release, leaving a fair queue): within ctx while ctx
// lasts; if ctx has ended, or ends before op is done, op runs (again) in
// the background, bounded by the operation timeout, so the caller never
// waits past its ctx for it. Both are safe to repeat: a release of a
// lease already released is ErrLost, a dequeue of an entry already gone
// does nothing. Close waits for background cleanups (within its own
// bound). A failure is logged; what op would have undone then ends by its
// TTL (after, a note for the log).
func (c *Client) cleanup(ctx context.Context, name, key, after string, op func(context.Context) error) {
	report := func(err error) {
		if err != nil && !errors.Is(err, ErrLost) {
			c.log.Warn("claim: "+name+" failed; "+after, "key", key, "err", err)
		}
	}
	if ctx.Err() == nil {
		cl := c.begin(ctx, name)
		err := c.end(ctx, cl, op(cl.ctx))
		if err == nil || ctx.Err() == nil {
			report(err)
			return
		}
	}
	c.cleanMu.Lock()
	defer c.cleanMu.Unlock()
	if c.noClean {
		report(ErrClosed)
		return
	}
	c.cleanups.Add(1)
	go func() {
		defer c.cleanups.Done()
		dctx := context.WithoutCancel(ctx)
		cl := c.begin(dctx, name)
		report(c.end(dctx, cl, op(cl.ctx)))
	}()
}

// Extend renews the caller's own lease for ttl from now and returns the
// renewed lease (same Token, later Deadline). It fails with ErrLost if the
// lease is no longer current (expired, released, or taken over), and
// without I/O if its local Deadline has passed. Extending a current lease
// twice is harmless, so a renewal whose reply was lost can be retried.
func (c *Client) Extend(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	if err := c.check(ctx, "extend", l.Key); err != nil {
		return Lease{}, err
	}
	if err := c.checkTTL("extend", l.Key, ttl); err != nil {
		return Lease{}, err
	}
	if err := checkLive("extend", l, clock.Now()); err != nil {
		return Lease{}, err
	}
	cl := c.begin(ctx, "extend")
	nl, err := c.d.Extend(cl.ctx, l, ttl)
	if err = c.end(ctx, cl, err); err != nil {
		return Lease{}, opError("extend", l.Key, err)
	}
	nl.Token, nl.Fair = l.Token, l.Fair
	return stamp(nl, l.Key, l.Holder, cl.start), nil
}

// Release deletes the lease if, and only if, it is still current
// (compare-and-delete by token), and wakes every waiter subscribed to the
// key in every process. Releasing a lease that is no longer current
// returns ErrLost and changes nothing: a stale holder can never release a
// newer holder's claim; releasing twice returns ErrLost the second time.
// A lease that expired is no longer current either, even if nobody has
// claimed the key since: Release returns ErrLost, telling the holder its
// exclusivity lapsed (where the lock is still there it is deleted, so
// waiters need not wait for the server to drop it). Expiry is judged on
// the lease as last renewed, so an earlier copy of a lease that KeepAlive
// or Extend renewed releases it, unlike Commit and Extend, which refuse
// any copy past its own local Deadline.
func (c *Client) Release(ctx context.Context, l Lease) error {
	if err := c.check(ctx, "release", l.Key); err != nil {
		return err
	}
	return c.release(ctx, l)
}

func (c *Client) release(ctx context.Context, l Lease) error {
	if l.Fair && c.q != nil {
		return c.handOff(ctx, l)
	}
	cl := c.begin(ctx, "release")
	if err := c.end(ctx, cl, c.d.Release(cl.ctx, l)); err != nil {
		return opError("release", l.Key, err)
	}
	c.wakeLocal(l.Key)
	return nil
}

// wakeLocal wakes this Client's own subscribers of key after its own
// release or notification, on a poll driver: they need not wait for the
// next poll to see what this process just did. (A push driver's own
// subscription delivers it within a round trip; a second wake-up there
// would only cost a re-check.)
func (c *Client) wakeLocal(key string) {
	if c.feat.Notify == driver.Poll {
		c.keys.fire(key, nil, false)
	}
}

// Commit stores value under the lease's key with the given TTL (0: no
// expiry) only if the lease is still current, as one atomic step where the
// backend allows (Features.AtomicCommit). Otherwise it returns ErrLost and
// writes nothing; past the lease's local Deadline it returns ErrLost
// without I/O. Commit does not release the lease. Value limits are checked
// before any I/O (ErrTooLarge). value is not retained.
func (c *Client) Commit(ctx context.Context, l Lease, value []byte, ttl time.Duration) error {
	if err := c.check(ctx, "commit", l.Key); err != nil {
		return err
	}
	return c.commit(ctx, "commit", l, value, ttl)
}

func (c *Client) commit(ctx context.Context, op string, l Lease, value []byte, ttl time.Duration) error {
	if err := c.checkValue(op, l.Key, value, ttl); err != nil {
		return err
	}
	if err := checkLive(op, l, clock.Now()); err != nil {
		return err
	}
	cl := c.begin(ctx, "commit")
	if err := c.end(ctx, cl, c.d.Commit(cl.ctx, l, value, ttl)); err != nil {
		return opError(op, l.Key, err)
	}
	return nil
}

// CommitRelease is Commit and then Release: it stores value under the
// lease's key (0 ttl: no expiry) and releases the lease, waking every
// waiter after the value is visible. On a backend with the fast path
// (driver.CommitReleaser) it is one atomic round trip, both or neither
// (ErrLost). Otherwise it is Commit then Release: if Commit fails nothing
// is released (release the lease yourself); if the lease lapsed between
// the two, the value, committed while the lease was current, stays, and
// CommitRelease still succeeds.
func (c *Client) CommitRelease(ctx context.Context, l Lease, value []byte, ttl time.Duration) error {
	if err := c.check(ctx, "commit-release", l.Key); err != nil {
		return err
	}
	return c.commitRelease(ctx, l, value, ttl)
}

func (c *Client) commitRelease(ctx context.Context, l Lease, value []byte, ttl time.Duration) error {
	const op = "commit-release"
	if l.Fair && c.q != nil {
		// The value, then the hand-over (the next holder is granted the
		// key, not woken to read it).
		if err := c.commit(ctx, op, l, value, ttl); err != nil {
			return err
		}
		if err := c.handOff(ctx, l); err != nil && !errors.Is(err, ErrLost) {
			return opError(op, l.Key, fmt.Errorf("value committed, hand-over failed: %w", err))
		}
		return nil
	}
	if c.crl == nil {
		if err := c.commit(ctx, op, l, value, ttl); err != nil {
			return err
		}
		cl := c.begin(ctx, "release")
		if err := c.end(ctx, cl, c.d.Release(cl.ctx, l)); err != nil && !errors.Is(err, ErrLost) {
			return opError(op, l.Key, fmt.Errorf("value committed, release failed: %w", err))
		}
		c.wakeLocal(l.Key)
		return nil
	}
	if err := c.checkValue(op, l.Key, value, ttl); err != nil {
		return err
	}
	if err := checkLive(op, l, clock.Now()); err != nil {
		return err
	}
	cl := c.begin(ctx, op)
	if err := c.end(ctx, cl, c.crl.CommitRelease(cl.ctx, l, value, ttl)); err != nil {
		return opError(op, l.Key, err)
	}
	c.wakeLocal(l.Key)
	return nil
}

// Get returns the value stored under key, or an error wrapping ErrNotFound
// if it is absent or expired. The slice is the caller's.
func (c *Client) Get(ctx context.Context, key string) ([]byte, error) {
	if err := c.check(ctx, "get", key); err != nil {
		return nil, err
	}
	return c.get(ctx, key)
}

func (c *Client) get(ctx context.Context, key string) ([]byte, error) {
	cl := c.begin(ctx, "get")
	v, err := c.d.Get(cl.ctx, key)
	if err = c.end(ctx, cl, err); err != nil {
		return nil, &keyError{"get", key, err}
	}
	return v, nil
}

// Set stores value under key for ttl (0: no expiry), unconditionally. It
// does not look at leases: a holder's fenced write is Commit.
func (c *Client) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := c.check(ctx, "set", key); err != nil {
		return err
	}
	if err := c.checkValue("set", key, value, ttl); err != nil {
		return err
	}
	cl := c.begin(ctx, "set")
	if err := c.end(ctx, cl, c.d.Set(cl.ctx, key, value, ttl)); err != nil {
		return opError("set", key, err)
	}
	return nil
}

// Delete removes key's value. Deleting an absent key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	if err := c.check(ctx, "delete", key); err != nil {
		return err
	}
	cl := c.begin(ctx, "delete")
	if err := c.end(ctx, cl, c.d.Delete(cl.ctx, key)); err != nil {
		return opError("delete", key, err)
	}
	return nil
}

// Subscribe registers interest in key's wake-ups: every Release of a lease
// on key, and every Notify, in any process. When it returns without error
// the subscription is live: a release or notification after that is
// delivered, so the right order is subscribe, then check state, then wait.
// The first subscriber of a key in this Client waits for the substrate to
// confirm (one round trip); later ones join its subscription. ctx bounds
// the call. The Subscription must be closed.
func (c *Client) Subscribe(ctx context.Context, key string) (*Subscription, error) {
	if err := c.check(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	return c.subscribe(ctx, key)
}

func (c *Client) subscribe(ctx context.Context, key string) (*Subscription, error) {
	s := newSubscription(key)
	cl := c.begin(ctx, "subscribe")
	if err := c.end(ctx, cl, c.keys.join(cl.ctx, &s.m)); err != nil {
		return nil, opError("subscribe", key, err)
	}
	return s, nil
}

// Notify wakes every subscriber of key in every process without touching
// any lease. Subscribers see at least one wake-up.
func (c *Client) Notify(ctx context.Context, key string) error {
	if err := c.check(ctx, "notify", key); err != nil {
		return err
	}
	cl := c.begin(ctx, "notify")
	if err := c.end(ctx, cl, c.d.Notify(cl.ctx, key)); err != nil {
		return opError("notify", key, err)
	}
	c.wakeLocal(key)
	return nil
}

// Features describes what the backend guarantees. It does no I/O.
func (c *Client) Features() Features { return c.feat }

// Driver returns the driver behind the Client, for tests and tools (the
// conformance suite calls it directly). Calls made on it bypass every
// check the Client makes.
func (c *Client) Driver() driver.Driver { return c.d }

// As sets *i to the native client under the backend, if the backend
// documents that type, and reports whether it did: for example, with
// package redis,
//
//	var rdb goredis.UniversalClient
//	if c.As(&rdb) { ... }
func (c *Client) As(i any) bool {
	if a, ok := c.d.(driver.Aser); ok {
		return a.As(i)
	}
	return false
}

// Subscriptions returns how many keys this Client holds a substrate
// subscription for: one per key, however many local subscribers.
func (c *Client) Subscriptions() int { return c.keys.len() }

// Close closes every Subscription's channel, stops every topic handler
// (waiting for those running to return), and closes the backend's
// connections. Leases are not released: they expire by their TTL. Every
// call after Close returns an error wrapping ErrClosed. Close is
// idempotent. It returns within the operation timeout (Options.OpTimeout)
// even if the backend or a topic handler does not: it then reports
// ErrUnavailable, and the rest of the closing goes on in the background.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.tel.closePolls()
		c.cleanMu.Lock()
		c.noClean = true
		c.cleanMu.Unlock()
		done := make(chan error, 1)
		go func() {
			c.cleanups.Wait()
			c.topics.close()
			c.handlers.Wait()
			if c.logTopics != nil {
				c.logTopics.close()
			}
			c.keys.close()
			if c.grants != nil {
				c.grants.close()
			}
			done <- c.d.Close()
		}()
		t := time.NewTimer(c.opTimeout)
		defer t.Stop()
		select {
		case err := <-done:
			if err != nil {
				c.closeErr = fmt.Errorf("claim: close: %w", err)
			}
		case <-t.C:
			c.closeErr = fmt.Errorf("claim: close: %w: not closed within %s (the operation timeout); closing in the background", ErrUnavailable, c.opTimeout)
		}
	})
	return c.closeErr
}

// pingKey is the key Ping reads on a driver without a Pinger.
const pingKey = reservedPrefix + "ping"

// Ping checks that the backend answers and accepts this Client: its
// credentials, its permissions, the table or schema it needs (the
// backend's driver.Pinger; a read of a key nobody writes without one). It
// is bounded by the operation timeout. Use it for readiness probes: an
// error wrapping ErrConfig will not pass by itself (alert), one wrapping
// ErrUnavailable may.
func (c *Client) Ping(ctx context.Context) error {
	if err := c.ping(ctx); err != nil {
		return fmt.Errorf("claim: ping: %w", err)
	}
	return nil
}

func (c *Client) ping(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	cl := c.begin(ctx, "ping")
	var err error
	if p, ok := c.d.(driver.Pinger); ok {
		err = p.Ping(cl.ctx)
	} else if _, err = c.d.Get(cl.ctx, pingKey); errors.Is(err, ErrNotFound) {
		err = nil
	}
	return c.end(ctx, cl, err)
}

// Connect is NewClient followed by Ping, unless opt.Lazy: the checked way
// to put a Client in front of a driver, which Open and every backend
// package's New use. A failed check closes the Client (and so d) and
// returns the error: ErrConfig for wrong credentials, a missing table
// and the like, ErrUnavailable for a server that cannot be reached or
// does not answer within ctx and the operation timeout.
func Connect(ctx context.Context, d driver.Driver, opt *Options) (*Client, error) {
	c, err := connect(ctx, d, opt)
	if err != nil {
		return nil, fmt.Errorf("claim: connect: ping: %w", err)
	}
	return c, nil
}

func connect(ctx context.Context, d driver.Driver, opt *Options) (*Client, error) {
	c := NewClient(d, opt)
	if c.lazy {
		return c, nil
	}
	if err := c.ping(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}
