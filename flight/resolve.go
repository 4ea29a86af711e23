package flight

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// resolve is one flight, on its own goroutine: L2, then the claim, then
// either waiting for the holder or loading as the holder. In the usual
// cases it costs this process, whatever its number of callers: an L2 hit,
// 1 backend round trip; a waiter, 4 (get, subscribe, claim, get); the
// holder, 4 (get, subscribe, claim+read, commit+release) on a backend
// with claim.ClaimReader and claim.CommitReleaser, 6 (get, subscribe,
// claim, get, commit, release) on one without.
func (c *Cache[V]) resolve(ctx context.Context, f *flight[V]) (*entry[V], Source, error) {
	wctx, cancel := context.WithTimeout(ctx, c.cfg.WaitTimeout)
	defer cancel()
	bk := c.cfg.prefix + f.key

	e, err := c.l2Get(wctx, bk)
	if err != nil {
		return c.backendDown(ctx, f, "get", err)
	}
	if e != nil {
		if c.usable(f, e) == fresh {
			return e, SourceL2, nil
		}
		c.offerStale(f, e)
	}
	if !f.bg {
		c.stats.misses.Add(1)
	}
	c.markPending(f)

	sctx, scancel := context.WithTimeout(wctx, c.cfg.OpTimeout)
	sub, err := c.b.Subscribe(sctx, bk)
	scancel()
	if err != nil {
		return c.backendDown(ctx, f, "subscribe", err)
	}
	defer sub.Close()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	waited := false
	for {
		cctx, ccancel := context.WithTimeout(wctx, c.cfg.OpTimeout)
		l, cur, err := c.tryClaim(cctx, bk)
		ccancel()
		if err == nil {
			if waited {
				c.stats.takeovers.Add(1)
			}
			return c.hold(ctx, f, bk, l, cur)
		}
		var held *claim.HeldError
		if !errors.As(err, &held) {
			if !errors.Is(err, claim.ErrHeld) {
				if wctx.Err() != nil {
					return c.waitEnded(ctx, f)
				}
				return c.backendDown(ctx, f, "claim", err)
			}
			held = &claim.HeldError{}
		}
		if !waited {
			waited = true
			c.stats.waits.Add(1)
		}
		wait := held.Remaining
		if wait <= 0 {
			wait = c.cfg.LeaseTTL
		}
		wait += expirySlack
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case _, ok := <-sub.C():
			if !ok {
				return c.backendDown(ctx, f, "subscribe", claim.ErrClosed)
			}
		case <-timer.C:
			// The holder's lease ran out without a release: it may have
			// crashed. Read L2, then try to take over.
		case <-wctx.Done():
			return c.waitEnded(ctx, f)
		}
		e, err := c.l2Get(wctx, bk)
		if err != nil {
			if wctx.Err() != nil {
				return c.waitEnded(ctx, f)
			}
			return c.backendDown(ctx, f, "get", err)
		}
		if e != nil {
			if c.usable(f, e) == fresh {
				return e, SourceRemote, nil
			}
			c.offerStale(f, e)
		}
	}
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

// l2Get reads and decodes key from L2. A missing value is (nil, nil); so
// is one that fails to decode or has another schema (logged, counted).
func (c *Cache[V]) l2Get(ctx context.Context, bk string) (*entry[V], error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	b, err := c.b.Get(ctx, bk)
	if errors.Is(err, claim.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return c.l2Decode(bk, b), nil
}

// l2Decode decodes an L2 value; one that fails to decode or has another
// schema is nil (logged, counted).
func (c *Cache[V]) l2Decode(bk string, b []byte) *entry[V] {
	e, err := c.decode(b)
	if err != nil {
		c.stats.decodeErrors.Add(1)
		c.log.Warn("flight: unreadable L2 value, treated as a miss", "key", bk, "err", err)
		return nil
	}
	return e
}

// claimRead is what the claim saw in L2, when the backend reads it in
// the same step (claim.ClaimReader).
type claimRead struct {
	value []byte
	found bool
}

// tryClaim claims bk, with the value as of the claim if the backend can
// read it in the same round trip (cur non-nil), else without (cur nil:
// the holder must re-read L2).
func (c *Cache[V]) tryClaim(ctx context.Context, bk string) (l claim.Lease, cur *claimRead, err error) {
	if cr, ok := c.b.(claim.ClaimReader); ok {
		l, v, found, err := cr.TryClaimRead(ctx, bk, c.cfg.LeaseTTL)
		if err != nil {
			return l, nil, err
		}
		return l, &claimRead{value: v, found: found}, nil
	}
	l, err = c.b.TryClaim(ctx, bk, c.cfg.LeaseTTL)
	return l, nil, err
}

// hold is the claim holder's part: re-check L2 (with the value the claim
// read, or one more Get), load under KeepAlive, commit fenced by the
// lease, and release (which wakes every waiter) on every way out, panics
// and Goexit included. On a backend with claim.CommitReleaser, a
// successful load is committed and released in one round trip; every
// other way out (an adopted value, a loader error or panic, an
// unencodable value, a failed or refused commit) releases on its own.
func (c *Cache[V]) hold(ctx context.Context, f *flight[V], bk string, l claim.Lease, cur *claimRead) (e *entry[V], src Source, err error) {
	lease := l
	released := false
	defer func() {
		if released {
			return
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.OpTimeout)
		defer cancel()
		if rerr := c.b.Release(rctx, lease); rerr != nil && !errors.Is(rerr, claim.ErrLost) {
			c.log.Warn("flight: release failed; waiters take over when the lease expires", "key", f.key, "err", rerr)
		}
	}()
	// Another holder may have published between our read and our claim:
	// adopt its value rather than load again.
	var prev *entry[V]
	if cur != nil {
		if cur.found {
			prev = c.l2Decode(bk, cur.value)
		}
	} else {
		prev, _ = c.l2Get(ctx, bk)
	}
	if prev != nil && c.usable(f, prev) == fresh {
		return prev, SourceL2, nil
	}

	lctx := ctx
	var k *claim.Keeper
	if !c.cfg.noKeepAlive {
		k = claim.KeepAlive(ctx, c.b, l, nil)
		defer k.Stop()
		lctx = k.Context()
	}
	v, lerr, dur := c.callLoader(ctx, lctx, f)
	if k != nil {
		lease = k.Stop()
	}
	e, ttl, err := c.makeEntry(v, lerr, dur)
	if err != nil {
		return nil, SourceLoaded, err
	}
	data, err := c.encode(e)
	if err != nil {
		c.log.Error("flight: value not committed", "key", f.key, "err", err)
		return e, SourceLoaded, nil
	}
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.OpTimeout)
	defer cancel()
	var cerr error
	if cr, ok := c.b.(claim.CommitReleaser); ok {
		// Committed and released in one step, or neither: on an error
		// the deferred Release still runs (harmless if the lease is gone).
		cerr = cr.CommitRelease(cctx, lease, data, ttl)
		released = cerr == nil
	} else {
		cerr = c.b.Commit(cctx, lease, data, ttl)
	}
	switch err := cerr; {
	case err == nil:
		c.stats.commits.Add(1)
	case errors.Is(err, claim.ErrLost):
		c.stats.lostCommits.Add(1)
		c.log.Warn("flight: lease lost during the load; value returned to this process only", "key", f.key, "err", err)
	default:
		c.log.Warn("flight: commit failed; value returned to this process only", "key", f.key, "err", err)
	}
	return e, SourceLoaded, nil
}

// makeEntry turns a loader's answer into an entry and its L2 TTL; a
// loader error (other than a not-found that is cached) is returned.
func (c *Cache[V]) makeEntry(v V, lerr error, dur time.Duration) (*entry[V], time.Duration, error) {
	now := time.Now()
	if lerr != nil {
		if !isNotFound(lerr) || c.cfg.NegativeTTL <= 0 {
			return nil, 0, lerr
		}
		t := now.Add(c.cfg.NegativeTTL)
		return &entry[V]{notFound: true, written: now, freshTil: t, staleTil: t, load: dur}, c.cfg.NegativeTTL, nil
	}
	ttl := c.cfg.TTL
	if j := c.cfg.TTLJitter; j > 0 {
		ttl -= time.Duration(rand.Float64() * j * float64(ttl))
	}
	e := &entry[V]{value: v, written: now, freshTil: now.Add(ttl), load: dur}
	e.staleTil = e.freshTil.Add(c.cfg.StaleTTL)
	return e, ttl + c.cfg.StaleTTL, nil
}

// callLoader runs f's loader on a goroutine of its own, under lctx
// bounded by LoadTimeout, and waits for it at most LoadTimeout (measured
// under ctx, so a lost lease, which cancels lctx, still lets a loader
// that ignores it finish). A panic or Goexit in the loader becomes an
// error; a loader still running at the timeout is abandoned.
func (c *Cache[V]) callLoader(ctx, lctx context.Context, f *flight[V]) (V, error, time.Duration) {
	c.stats.loads.Add(1)
	tctx, cancel := context.WithTimeout(ctx, c.cfg.LoadTimeout)
	defer cancel()
	lctx, lcancel := context.WithTimeout(lctx, c.cfg.LoadTimeout)
	type out struct {
		v   V
		err error
	}
	ch := make(chan out, 1)
	start := time.Now()
	go func() {
		defer lcancel()
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
	select {
	case o := <-ch:
		dur := time.Since(start)
		if o.err != nil {
			if !isNotFound(o.err) {
				c.stats.loadErrors.Add(1)
			}
			if cause := context.Cause(lctx); cause != nil && errors.Is(o.err, lctx.Err()) {
				return o.v, fmt.Errorf("flight: load %q: %w (%v)", f.key, o.err, cause), dur
			}
			return o.v, fmt.Errorf("flight: load %q: %w", f.key, o.err), dur
		}
		return o.v, nil, dur
	case <-tctx.Done():
		c.stats.loadErrors.Add(1)
		var zero V
		if ctx.Err() != nil {
			return zero, ErrClosed, time.Since(start)
		}
		c.log.Warn("flight: loader timed out; abandoned", "key", f.key, "timeout", c.cfg.LoadTimeout)
		return zero, fmt.Errorf("flight: load %q: %w after %s", f.key, ErrLoadTimeout, c.cfg.LoadTimeout), time.Since(start)
	}
}

// backendDown handles a backend failure: fail closed, or fail open (load
// without the claim, still coalesced in this process, capped).
func (c *Cache[V]) backendDown(ctx context.Context, f *flight[V], op string, err error) (*entry[V], Source, error) {
	if ctx.Err() != nil {
		return nil, SourceNone, ErrClosed
	}
	if c.cfg.FailClosed {
		return nil, SourceNone, fmt.Errorf("flight: %s %q: %w: %w", op, f.key, ErrBackend, err)
	}
	c.stats.failOpen.Add(1)
	c.log.Warn("flight: backend unavailable; loading without the claim (fail open)", "op", op, "key", f.key, "err", err)
	c.markPending(f)
	wctx, cancel := context.WithTimeout(ctx, c.cfg.WaitTimeout)
	defer cancel()
	select {
	case c.sem <- struct{}{}:
	case <-wctx.Done():
		return c.waitEnded(ctx, f)
	}
	defer func() { <-c.sem }()
	v, lerr, dur := c.callLoader(ctx, ctx, f)
	e, _, err := c.makeEntry(v, lerr, dur)
	if err != nil {
		return nil, SourceLoaded, err
	}
	return e, SourceLoaded, nil
}
