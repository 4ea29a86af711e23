package flight

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/clock"
	"github.com/stampede-go/stampede/internal/opctx"
)

// Resolving a flight (Cache.drive, on the goroutine that runs it) is
// lookup, then acquire: L2, then the client's waiting engine
// (claim.Client.GetOrAcquire: subscribe, claim with the value, wait for
// the holder and read again), then loading as the holder.
// In the usual cases it costs this process, whatever its number of
// callers: an L2 hit, 1 backend round trip; a waiter, 4 (get, subscribe,
// claim, get); the holder, 4 (get, subscribe, claim+read, commit+release)
// on a backend with the one-round-trip fast paths, 6 (get, subscribe,
// claim, get, commit, release) on one without.
//
// The flight's waiting (its backend calls included) ends at WaitTimeout;
// every call is bounded by OpTimeout too.
//
// lookup is the first part: the L2 read. ok: it is f's answer
// (a fresh value, or what the backend's failure led to); otherwise f is
// pending (its stale value, if any, known: Block and Fallback callers may
// answer now) and acquire goes on.
func (c *Cache[V]) lookup(ctx context.Context, f *flight[V]) (e *entry[V], src Source, ok bool, err error) {
	f.until = time.Now().Add(c.cfg.WaitTimeout)
	f.bk = c.bkey(f.gen, f.key)

	e, err = c.l2Get(ctx, f.bk, f.key, f.until)
	if err != nil {
		e, src, err = c.backendDown(ctx, f, "get", err)
		return e, src, true, err
	}
	if e != nil {
		if c.usable(f, e) == fresh {
			return e, SourceL2, true, nil
		}
		c.offerStale(f, e)
		c.offerFailSafe(f, e)
	}
	if !f.bg {
		c.stats.misses.Add(1)
	}
	c.markPending(f)
	return nil, SourceNone, false, nil
}

// acquire is the rest of a flight's resolution, after lookup: the claim, the wait for
// another holder, or the load as the holder.
func (c *Cache[V]) acquire(ctx context.Context, f *flight[V]) (*entry[V], Source, error) {
	until, bk := f.until, f.bk

	// accept judges what the engine reads: a fresh value ends the wait
	// (kept decoded in found); a stale one is offered to Fallback callers.
	var found *entry[V]
	accept := func(b []byte) bool {
		e := c.l2Decode(f.key, b)
		if e == nil {
			return false
		}
		if c.usable(f, e) == fresh {
			found = e
			return true
		}
		c.offerStale(f, e)
		c.offerFailSafe(f, e)
		return false
	}
	// The wait's deadline is an opctx: no timer, and no registration on
	// the Cache's root context, unless the engine waits (Done).
	wctx := opctx.New(ctx, until)
	got, err := c.b.GetOrAcquire(wctx, bk, c.cfg.LeaseTTL, &claim.GetOrAcquireOptions{
		Accept: accept, SkipGet: true, OpTimeout: c.cfg.OpTimeout,
		OnWait: func() { c.startWait(ctx, f) },
	})
	wctx.Stop()
	over := err != nil && waitOver(ctx, until)
	if !over {
		// A wait that WaitTimeout or Close ended says nothing of the
		// backend; any other outcome does.
		c.observe(ctx, err)
	}
	if !f.waitStart.IsZero() {
		werr := err
		if over {
			_, _, werr = c.waitEnded(ctx, f)
		}
		c.endWait(ctx, f, found, werr)
	}
	switch {
	case over:
		return c.waitEnded(ctx, f)
	case err != nil:
		return c.backendDown(ctx, f, "claim", err)
	case got.Found && got.Waited:
		return found, SourceRemote, nil
	case got.Found:
		// Another holder published between our read and our claim: its
		// value is adopted rather than loaded again.
		return found, SourceL2, nil
	}
	if got.Waited {
		c.stats.takeovers.Add(1)
	}
	return c.hold(ctx, f, got.Lease)
}

// startWait marks the start of f's wait for another process's holder
// (the first claim found held): it counts it, and starts the "flight
// wait" span if traced.
func (c *Cache[V]) startWait(ctx context.Context, f *flight[V]) {
	c.stats.waits.Add(1)
	f.waitStart = time.Now()
	if f.tr != nil {
		_, f.tr.waitSpan = c.startSpan(ctx, spanWait)
	}
}

// endWait ends f's wait, which got e (a fresh value from L2; nil: a
// takeover or an error) or err: the wait-time histogram, and the wait's
// span, linked to the load that produced e.
func (c *Cache[V]) endWait(ctx context.Context, f *flight[V], e *entry[V], err error) {
	c.recordWait(ctx, f, err)
	if f.tr != nil && f.tr.waitSpan != nil {
		linkOrigin(f.tr.waitSpan, e, SourceRemote)
		finishSpan(f.tr.waitSpan, err)
		f.tr.waitSpan = nil
	}
}

// waitOver: the Cache closed or the flight's WaitTimeout passed.
func waitOver(ctx context.Context, until time.Time) bool {
	return ctx.Err() != nil || !time.Now().Before(until)
}

// opContext bounds one backend call: OpTimeout from now, and no later than
// until (the flight's WaitTimeout; zero: no such bound). Stop it when the
// call returns.
func (c *Cache[V]) opContext(ctx context.Context, until time.Time) *opctx.Ctx {
	d := time.Now().Add(c.cfg.OpTimeout)
	if !until.IsZero() && until.Before(d) {
		d = until
	}
	return opctx.New(ctx, d)
}

// waitEnded reports why the wait phase ended: the Cache closed or
// WaitTimeout passed.
func (c *Cache[V]) waitEnded(ctx context.Context, f *flight[V]) (*entry[V], Source, error) {
	if ctx.Err() != nil {
		return nil, SourceNone, ErrClosed
	}
	return nil, SourceNone, fmt.Errorf("flight: %q: %w", f.key, ErrWaitTimeout)
}

// offerStale keeps e as the flight's stale value if it is newer.
func (c *Cache[V]) offerStale(f *flight[V], e *entry[V]) {
	if f.pendingDone || e.notFound || e.state(time.Now()) == expired {
		return
	}
	if f.stale == nil || f.stale.written.Before(e.written) {
		f.stale = e
	}
}

// usable judges an L2 value for flight f: a value that f was started to
// refresh (written no later than f.after) counts as stale.
func (c *Cache[V]) usable(f *flight[V], e *entry[V]) freshness {
	s := e.state(time.Now())
	if s == fresh && !f.after.IsZero() && !e.written.After(f.after) {
		return stale
	}
	return s
}

// l2Get reads and decodes bk (normalised key k) from L2. A missing value is (nil, nil); so
// is one that fails to decode or has another schema (logged, counted).
func (c *Cache[V]) l2Get(ctx context.Context, bk, k string, until time.Time) (*entry[V], error) {
	octx := c.opContext(ctx, until)
	defer octx.Stop()
	b, err := c.b.Get(octx, bk)
	c.observe(ctx, err)
	if errors.Is(err, claim.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return c.l2Decode(k, b), nil
}

// l2Decode decodes the L2 value of normalised key k; one that fails to
// decode or has another schema is nil (logged, counted).
func (c *Cache[V]) l2Decode(k string, b []byte) *entry[V] {
	e, err := c.decode(b)
	if err != nil {
		c.stats.decodeErrors.Add(1)
		c.log.Warn("flight: unreadable L2 value, treated as a miss", "key", k, "err", err)
		return nil
	}
	if e.failed != nil {
		e.failed.Key = k
	}
	return e
}

// hold is the claim holder's part: load under KeepAlive, commit fenced by
// the lease and release (which wakes every waiter) in one step
// (claim.Client.CommitRelease), and release on every other way out, panics
// and Goexit included: an unpublished loader error or panic, an
// unencodable value, a failed or refused commit. A loader error is
// committed like a value (failedEntry, for Options.ErrorTTL), so that the
// waiters answer with it instead of loading in turn; this flight's
// callers get the error itself (err), L1 the entry.
func (c *Cache[V]) hold(ctx context.Context, f *flight[V], l claim.Lease) (e *entry[V], src Source, err error) {
	lease := l
	released := false
	defer func() {
		if released {
			return
		}
		dctx := detached(ctx)
		rctx := c.opContext(dctx, time.Time{})
		defer rctx.Stop()
		rerr := c.b.Release(rctx, lease)
		c.observe(dctx, rerr)
		if rerr != nil && !errors.Is(rerr, claim.ErrLost) {
			c.log.Debug("flight: release failed; waiters take over when the lease expires", "key", f.key, "err", rerr)
		}
	}()
	lctx, span := c.startLoad(ctx, f)
	ex := &loadExpiry{}
	v, dur, lerr := c.callLoader(ctx, withExpiry(lctx, ex), f, &lease)
	c.loaded(lctx, span, dur, lerr)
	e, ttl, src, err := c.outcome(ctx, f, v, lerr, dur, ex)
	if e == nil {
		return nil, src, err
	}
	data, eerr := c.encode(e, f.origin())
	if eerr != nil {
		c.log.Error("flight: value not committed", "key", f.key, "err", eerr)
		return e, src, err
	}
	dctx := detached(ctx)
	cctx := c.opContext(dctx, time.Time{})
	defer cctx.Stop()
	// Committed and released in one step where the backend can: on an
	// error the deferred Release still runs (harmless if the lease is
	// gone).
	cerr := c.b.CommitRelease(cctx, lease, data, ttl)
	c.observe(dctx, cerr)
	released = c.committed(f, e, cerr)
	return e, src, err
}

// committed counts and logs the commit of e by holder flight f, which
// returned cerr, and reports whether it landed (the lease is released).
// A refused commit marks f unpublished: its value is not cached here
// either.
func (c *Cache[V]) committed(f *flight[V], e *entry[V], cerr error) bool {
	switch {
	case cerr == nil && e.failed != nil:
		c.stats.errorCommits.Add(1)
		return true
	case cerr == nil:
		c.stats.commits.Add(1)
		return true
	case errors.Is(cerr, claim.ErrLost):
		// Revoked (Invalidate, Set) or expired: a newer holder or writer
		// owns the key.
		f.unpublished = true
		c.stats.lostCommits.Add(1)
		c.log.Debug("flight: lease lost or revoked during the load; value returned to this flight's callers only, not cached", "key", f.key, "err", cerr)
	default:
		c.log.Debug("flight: commit failed; value returned to this process only", "key", f.key, "err", cerr)
	}
	return false
}

// outcome is what holder flight f publishes of its load (v, lerr, which
// took dur, with the Expiry the loader set in ex): the entry to commit for
// ttl, the callers' source and error. A value or a cached not-found is
// itself; a failed load is f's fail-safe value published again for
// FailSafeThrottle if it has one, else an error entry for ErrorTTL (with
// the callers' error), else nothing (e nil: nothing to commit).
func (c *Cache[V]) outcome(ctx context.Context, f *flight[V], v V, lerr error, dur time.Duration, ex *loadExpiry) (e *entry[V], ttl time.Duration, src Source, err error) {
	e, ttl, err = c.makeEntry(v, lerr, dur, ex, f.key)
	if err == nil {
		return e, ttl, SourceLoaded, nil
	}
	now := time.Now()
	if fs := f.failSafe.Load(); ctx.Err() == nil && !isNotFound(err) && c.failSafeUsable(fs, now) {
		if c.failSafeCurrent(ctx, f, fs) {
			// Fail-safe: the expired value is published again for
			// FailSafeThrottle instead of the error, so no process
			// calls the failing loader before then, and none loses
			// the value.
			c.log.Debug("flight: load failed; answering with the expired value (fail-safe)", "key", f.key, "err", lerr)
			return c.failSafeCopy(fs, now), c.failSafeLimit(fs).Sub(now), SourceFailSafe, nil
		}
		// Invalidated (or replaced) since it was read: not this flight's
		// to serve, nor to publish again.
		f.failSafe.CompareAndSwap(fs, nil)
	}
	if e = c.failedEntry(ctx, f, err, dur); e == nil {
		return nil, 0, SourceLoaded, err
	}
	return e, c.cfg.ErrorTTL, SourceLoaded, err
}

// failSafeCurrent reports whether L2 still holds fail-safe value fs
// (the same write), read now, while flight f holds the key's lease. fs
// was read before the claim (from L2, or this process's L1): an
// Invalidate, Set or expiry in between deleted or replaced it, and
// publishing it again would bring back a value that calls started after
// the Invalidate must never see, in every process (found by review). A
// revocation after this read ends f's lease, so the commit of the copy
// fails (fenced). A failed read says nothing: fs is not used. (A batch's
// flights read one key each here: only when their load failed and they
// have a fail-safe value.)
func (c *Cache[V]) failSafeCurrent(ctx context.Context, f *flight[V], fs *entry[V]) bool {
	cur, err := c.l2Get(ctx, f.bk, f.key, time.Time{})
	return err == nil && cur != nil && cur.written.Equal(fs.written)
}

// makeEntry turns a loader's answer for key k into an entry and its L2
// TTL, with the lifetime the load set (SetExpiry) or the Options'; a
// loader error (other than a not-found that is cached) is returned.
func (c *Cache[V]) makeEntry(v V, lerr error, dur time.Duration, ex *loadExpiry, k string) (*entry[V], time.Duration, error) {
	now := time.Now()
	set, hasSet := ex.of(k)
	if lerr != nil {
		neg := c.cfg.NegativeTTL
		if hasSet && set.TTL > 0 {
			neg = set.TTL
		}
		if !isNotFound(lerr) || neg <= 0 {
			return nil, 0, lerr
		}
		t := now.Add(neg)
		return &entry[V]{notFound: true, written: now, freshTil: t, staleTil: t, load: dur}, neg, nil
	}
	ttl, staleTTL := c.cfg.TTL, c.cfg.StaleTTL
	switch {
	case hasSet && set.TTL > 0:
		ttl = set.TTL
	case c.cfg.TTLJitter > 0:
		ttl -= time.Duration(rand.Float64() * c.cfg.TTLJitter * float64(ttl))
	}
	if hasSet && set.StaleTTL != 0 {
		staleTTL = max(set.StaleTTL, 0)
	}
	e := &entry[V]{value: v, written: now, freshTil: now.Add(ttl), load: dur}
	e.staleTil = e.freshTil.Add(staleTTL)
	return e, c.l2TTL(ttl, staleTTL), nil
}

// callLoader runs f's loader on a goroutine of its own, under a context
// bounded by LoadTimeout, and waits for it at most LoadTimeout (or until
// ctx, the flight's, is done: Close). A panic or Goexit in the loader
// becomes an error; a loader still running at the timeout is abandoned.
//
// lease is the holder's (nil when failing open). The holder keeps it
// alive with claim.Client.KeepAlive while the loader runs, and the loader's
// context is cancelled (cause wrapping claim.ErrLost) when it is lost; a
// lost lease does not stop the wait, so a loader that ignores it may
// still finish. The keeper starts only once the load has run for
// keeperDelay, so that a fast load starts no keeper (a goroutine, timers,
// a context); *lease is updated to the lease as last renewed.
//
// The loader's deadline is an opCtx (no timer unless the loader waits on
// Done); the wait uses one pooled timer, for the keeper's start and then
// for LoadTimeout.
//
// The loader runs under parent: ctx, or ctx with the load's span
// (startLoad); the caller records the call (loaded).
func (c *Cache[V]) callLoader(ctx, parent context.Context, f *flight[V], lease *claim.Lease) (V, time.Duration, error) {
	c.stats.loads.Add(1)
	start := time.Now()
	deadline := start.Add(c.cfg.LoadTimeout)
	base, bcancel := context.WithCancelCause(parent)
	defer bcancel(context.Canceled)
	lctx := opctx.New(base, deadline)
	type out struct {
		v   V
		err error
	}
	ch := make(chan out, 1)
	go func() {
		defer lctx.Stop()
		var o out
		normal := false
		defer func() {
			if !normal {
				if p := recover(); p != nil {
					o.err = &PanicError{Value: p, Stack: debugStack()}
				} else {
					o.err = ErrGoexit
				}
			}
			ch <- o
		}()
		o.v, o.err = f.load(lctx, f.key)
		normal = true
	}()

	var (
		keeper *claim.Keeper
		keepAt time.Time       // when the keeper is due (zero: not pending)
		lost   <-chan struct{} // the keeper's Lost
	)
	if lease != nil && !c.cfg.noKeepAlive {
		if d := keeperDelay(*lease); d > 0 {
			keepAt = start.Add(d)
		} else {
			keeper = c.b.KeepAlive(ctx, *lease, nil)
			lost = keeper.Lost()
		}
		defer func() {
			if keeper != nil {
				*lease = keeper.Stop()
			}
		}()
	}
	next := deadline
	if !keepAt.IsZero() && keepAt.Before(next) {
		next = keepAt
	}
	t := getTimer(time.Until(next))
	defer putTimer(t)
	for {
		select {
		case o := <-ch:
			dur := time.Since(start)
			if o.err != nil && ctx.Err() != nil {
				// Close cancelled the load, and the loader returned
				// before this select saw ctx: the same answer as if it
				// had (ErrClosed), never a load error to publish.
				return c.loadTimedOut(ctx, f, start)
			}
			if o.err != nil {
				if !isNotFound(o.err) {
					c.stats.loadErrors.Add(1)
				}
				if cause := context.Cause(lctx); cause != nil && errors.Is(o.err, lctx.Err()) {
					return o.v, dur, &loadError{f.key, fmt.Errorf("%w (%v)", o.err, cause)}
				}
				return o.v, dur, &loadError{f.key, o.err}
			}
			return o.v, dur, nil
		case <-t.C:
			if !keepAt.IsZero() && time.Now().Before(deadline) {
				keepAt = time.Time{}
				keeper = c.b.KeepAlive(ctx, *lease, nil)
				lost = keeper.Lost()
				t.Reset(time.Until(deadline))
				continue
			}
			return c.loadTimedOut(ctx, f, start)
		case <-lost:
			// The loader's context ends with the lease; the wait does not.
			lost = nil
			bcancel(keeper.Err())
		case <-ctx.Done():
			return c.loadTimedOut(ctx, f, start)
		}
	}
}

// timers recycles the timers of callLoader's waits.
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

func getTimer(d time.Duration) *time.Timer {
	t := timers.Get().(*time.Timer)
	t.Reset(d)
	return t
}

// putTimer stops t and recycles it, its channel drained (needed only
// under GODEBUG=asynctimerchan=1).
func putTimer(t *time.Timer) {
	if !t.Stop() {
		select {
		case <-t.C:
		default:
		}
	}
	timers.Put(t)
}

// loadTimedOut is callLoader's answer when it stops waiting for the
// loader: ErrClosed if the Cache closed, else ErrLoadTimeout.
func (c *Cache[V]) loadTimedOut(ctx context.Context, f *flight[V], start time.Time) (V, time.Duration, error) {
	c.stats.loadErrors.Add(1)
	var zero V
	if ctx.Err() != nil {
		return zero, time.Since(start), ErrClosed
	}
	c.log.Warn("flight: loader timed out; abandoned", "key", f.key, "timeout", c.cfg.LoadTimeout)
	return zero, time.Since(start), &loadError{f.key, fmt.Errorf("%w after %s", ErrLoadTimeout, c.cfg.LoadTimeout)}
}

// keeperDelay is how long a holder's load runs before Client.KeepAlive
// starts renewing its lease: a quarter of KeepAlive's default interval
// (TTL/3), so the first renewal comes at 5/12 of the lease rather than
// 1/3, still well before it ends. Zero (start at once) when the claim's
// round trip ate into the lease (less than 3/4 of it would be left when
// the keeper starts).
func keeperDelay(l claim.Lease) time.Duration {
	d := l.TTL / 12
	if clock.Until(l.Deadline)-d < l.TTL*3/4 {
		return 0
	}
	return d
}

// backendDown handles a backend failure: a configuration error
// (claim.ErrConfig) is returned; an outage fails closed, or open (load
// without the claim, still coalesced in this process, capped; a load
// error is kept in L1 for Options.ErrorTTL). The failure was logged,
// once, as the Cache's Health changed (observe): each flight's is at
// DEBUG.
func (c *Cache[V]) backendDown(ctx context.Context, f *flight[V], op string, err error) (*entry[V], Source, error) {
	if ctx.Err() != nil {
		return nil, SourceNone, ErrClosed
	}
	if errors.Is(err, claim.ErrConfig) {
		// A wrong password or a missing table does not pass by itself:
		// loading without the claim would run the loader once per process,
		// silently, until someone reads the logs. The error goes to the
		// callers instead.
		return nil, SourceNone, fmt.Errorf("flight: %s %q: %w", op, f.key, err)
	}
	if c.cfg.FailClosed {
		return nil, SourceNone, fmt.Errorf("flight: %s %q: %w: %w", op, f.key, ErrBackend, err)
	}
	c.stats.failOpen.Add(1)
	c.log.Debug("flight: backend unavailable; loading without the claim (fail open)", "op", op, "key", f.key, "err", err)
	c.markPending(f)
	wctx, cancel := context.WithTimeout(ctx, c.cfg.WaitTimeout)
	defer cancel()
	select {
	case c.sem <- struct{}{}:
	case <-wctx.Done():
		return c.waitEnded(ctx, f)
	}
	defer func() { <-c.sem }()
	lctx, span := c.startLoad(ctx, f)
	ex := &loadExpiry{}
	v, dur, lerr := c.callLoader(ctx, withExpiry(lctx, ex), f, nil)
	c.loaded(lctx, span, dur, lerr)
	e, _, err := c.makeEntry(v, lerr, dur, ex, f.key)
	if err != nil {
		return c.failedEntry(ctx, f, err, dur), SourceLoaded, err
	}
	return e, SourceLoaded, nil
}
