package flight

import (
	"context"
	"errors"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// failSafeLimit is when e stops being a fail-safe answer: its own limit
// if it is a fail-safe copy or an L1 copy, else the end of its stale
// window plus Options.FailSafeTTL.
func (c *Cache[V]) failSafeLimit(e *entry[V]) time.Time {
	if !e.failSafeTil.IsZero() {
		return e.failSafeTil
	}
	return e.staleTil.Add(c.cfg.FailSafeTTL)
}

// failSafeUsable reports whether e may answer a caller whose refresh
// failed, at now: a value (not a not-found, not a published error)
// within its fail-safe window.
func (c *Cache[V]) failSafeUsable(e *entry[V], now time.Time) bool {
	return c.cfg.FailSafeTTL > 0 && e != nil && !e.notFound && e.failed == nil && now.Before(c.failSafeLimit(e))
}

// offerFailSafe keeps e as f's fail-safe value if it is usable and newer
// than the one f has. Safe for concurrent use.
func (c *Cache[V]) offerFailSafe(f *flight[V], e *entry[V]) {
	if !c.failSafeUsable(e, time.Now()) {
		return
	}
	for {
		cur := f.failSafe.Load()
		if cur != nil && !cur.written.Before(e.written) {
			return
		}
		if f.failSafe.CompareAndSwap(cur, e) {
			return
		}
	}
}

// failSafeCopy is the answer made of fail-safe value fs at now: fresh for
// Options.FailSafeThrottle (never past fs's fail-safe limit), so that the
// callers that follow get it from L1 (and, committed, from L2) without
// calling the failing loader, marked fail-safe, and with the same limit.
func (c *Cache[V]) failSafeCopy(fs *entry[V], now time.Time) *entry[V] {
	limit := c.failSafeLimit(fs)
	e := *fs
	e.freshTil = now.Add(c.cfg.FailSafeThrottle)
	if e.freshTil.After(limit) {
		e.freshTil = limit
	}
	e.staleTil = e.freshTil
	e.failSafe = true
	e.failSafeTil = limit
	return &e
}

// failSafeAnswer replaces a failed outcome of flight f (an error, or a
// published load error read from L2) with f's fail-safe value, if it has
// one: a loader error, the backend unavailable (failing open or closed),
// the wait for another process's holder timing out. A not-found, a
// configuration error and Close are answered as they are.
func (c *Cache[V]) failSafeAnswer(ctx context.Context, f *flight[V], e *entry[V], src Source, err error) (*entry[V], Source, error) {
	failed := err != nil || (e != nil && e.failed != nil)
	if !failed || c.cfg.FailSafeTTL <= 0 || ctx.Err() != nil || isNotFound(err) || errors.Is(err, ErrClosed) || errors.Is(err, claim.ErrConfig) {
		return e, src, err
	}
	now := time.Now()
	fs := f.failSafe.Load()
	if !c.failSafeUsable(fs, now) {
		return e, src, err
	}
	cause := err
	if cause == nil {
		cause = e.failed
	}
	c.log.Debug("flight: refresh failed; answering with the expired value (fail-safe)", "key", f.key, "err", cause)
	return c.failSafeCopy(fs, now), SourceFailSafe, nil
}

// softTimer is a caller's soft timeout (Options.SoftTimeout): the channel
// fires when the caller has waited that long; nil when there is none.
func (c *Cache[V]) softTimer(p Policy) (*time.Timer, <-chan time.Time) {
	if !c.softTimed(p) {
		return nil, nil
	}
	t := time.NewTimer(c.cfg.SoftTimeout)
	return t, t.C
}

// softTimed: a caller with policy p has a soft timeout.
func (c *Cache[V]) softTimed(p Policy) bool {
	return c.cfg.SoftTimeout > 0 && p != Fallback && c.cfg.FailSafeTTL > 0
}

// softAnswer is the answer of a caller whose soft timeout fired while f
// was still under way: f's fail-safe value, if it has one (ok).
func (c *Cache[V]) softAnswer(f *flight[V], shared bool) (answer[V], bool) {
	now := time.Now()
	fs := f.failSafe.Load()
	if !c.failSafeUsable(fs, now) {
		return answer[V]{}, false
	}
	return answer[V]{e: fs, src: SourceFailSafe, shared: shared}, true
}
