package claim

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/stampede-go/stampede/internal/opctx"
)

// expirySlack is added to a holder's remaining lease time before a waiter
// retries the claim, so the retry lands after the substrate expired it.
const expirySlack = 5 * time.Millisecond

// unknownRecheck bounds a wait when the backend cannot report how long the
// holder's lease has left (HeldError.Remaining == 0).
const unknownRecheck = time.Second

// Acquire blocks until it holds a lease on key for ttl, ctx is done, or the
// backend fails. It tries to claim first (a free key costs one round
// trip); if the key is held, it subscribes to key and then tries again, so
// a release that lands between the first try and the subscription is
// never lost. While the key is held it waits for a wake-up (the holder's
// release, pushed or polled by the backend) or for the holder's lease to
// run out, whichever comes first, and tries again. It never polls a push
// backend and never waits past the holder's lease, so a crashed holder
// delays it by at most one lease (by at most a second more if the backend
// cannot report the holder's remaining lease time). Cancelling ctx returns
// ctx's error promptly; no lease is held then.
func (c *Client) Acquire(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := c.check(ctx, "acquire", key); err != nil {
		return Lease{}, err
	}
	return c.acquire(ctx, key, ttl)
}

func (c *Client) acquire(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	l, err := c.tryClaim(ctx, key, ttl)
	if err == nil || !errors.Is(err, ErrHeld) {
		return l, err
	}
	w := waiter{c: c, key: key, ttl: ttl}
	got, err := w.run(ctx, nil)
	return got.Lease, err
}

// GetOrAcquireOptions tune GetOrAcquire. nil, and every zero field, means
// the default.
type GetOrAcquireOptions struct {
	// Accept judges a value found under the key: true ends GetOrAcquire
	// with it; false goes on as if there were none (an entry of another
	// schema, a stale one). nil accepts every value. It runs on the
	// caller's goroutine and may keep what it decoded.
	Accept func(value []byte) bool
	// SkipGet starts with the subscription: the caller has just read the
	// key and found nothing it accepts.
	SkipGet bool
	// OpTimeout bounds each backend call GetOrAcquire makes (0: only ctx
	// bounds them).
	OpTimeout time.Duration
	// OnWait, if set, is called once, when the key is first found held by
	// another holder (the call starts waiting), on the caller's goroutine.
	OnWait func()
}

// Got is what GetOrAcquire got: a value stored under the key, or a lease
// on it.
type Got struct {
	// Found: Value is the key's stored value (accepted), and no lease is
	// held.
	Found bool
	Value []byte
	// Lease is held when Found is false: the caller computes the value,
	// commits it (CommitRelease) and releases the lease on every path.
	Lease Lease
	// Waited: another holder had the key at least once, and this call
	// waited for it (the value came from that holder, or the lease is a
	// takeover).
	Waited bool
}

// GetOrAcquire is the stampede idiom in one call: it returns the value
// stored under key, or a lease on key so that the caller computes it, and
// in between waits for whoever holds the key. It reads the key (unless
// SkipGet); on a miss it subscribes to key, then claims it and reads its
// value in one step (TryClaimRead): a value that landed meanwhile is
// returned and the lease released at once; otherwise the caller holds the
// lease. While another holder has the key it waits for a wake-up (the
// holder's release) or the holder's lease to run out, reads the key
// again (unless the wake-up carried the holder's value:
// driver.ValueNotifier), and tries again, like Acquire. A process waiting
// for another's holder makes 4 round trips in the usual case (get,
// subscribe, claim+read, get), 3 when the wake-up carries the value; a
// holder 3 (get, subscribe, claim+read). Cancelling
// ctx returns ctx's error promptly; no lease is held then.
func (c *Client) GetOrAcquire(ctx context.Context, key string, ttl time.Duration, opt *GetOrAcquireOptions) (Got, error) {
	if err := c.check(ctx, "get-or-acquire", key); err != nil {
		return Got{}, err
	}
	if err := c.checkTTL("get-or-acquire", key, ttl); err != nil {
		return Got{}, err
	}
	w := waiter{c: c, key: key, ttl: ttl}
	var o GetOrAcquireOptions
	if opt != nil {
		o = *opt
	}
	if o.Accept == nil {
		o.Accept = func([]byte) bool { return true }
	}
	w.opTimeout, w.onWait = o.OpTimeout, o.OnWait
	if !o.SkipGet {
		if v, ok, err := w.read(ctx, o.Accept); err != nil || ok {
			return Got{Found: ok, Value: v}, err
		}
	}
	return w.run(ctx, o.Accept)
}

// waiter is one Acquire or GetOrAcquire: the one waiting engine of the
// module (flight waits through GetOrAcquire).
type waiter struct {
	c         *Client
	key       string
	ttl       time.Duration
	opTimeout time.Duration
	onWait    func()
}

// op returns the context of one backend call.
func (w *waiter) op(ctx context.Context) (context.Context, func()) {
	if w.opTimeout <= 0 {
		return ctx, func() {}
	}
	d := time.Now().Add(w.opTimeout)
	if opctx.Within(ctx, d) {
		return ctx, func() {}
	}
	o := opctx.New(ctx, d)
	return o, o.Stop
}

// read gets the key's value: (value, true) if there is one accept takes.
func (w *waiter) read(ctx context.Context, accept func([]byte) bool) ([]byte, bool, error) {
	octx, stop := w.op(ctx)
	defer stop()
	v, err := w.c.get(octx, w.key)
	switch {
	case err == nil:
		return v, accept(v), nil
	case errors.Is(err, ErrNotFound):
		return nil, false, nil
	}
	return nil, false, err
}

// claim tries to claim the key, reading its value with the claim when
// accept is set: found reports a value accept took (the lease is released
// then).
func (w *waiter) claim(ctx context.Context, accept func([]byte) bool) (l Lease, v []byte, found bool, err error) {
	octx, stop := w.op(ctx)
	defer stop()
	if accept == nil {
		l, err = w.c.tryClaim(octx, w.key, w.ttl)
		return l, nil, false, err
	}
	l, v, found, err = w.c.tryClaimRead(octx, w.key, w.ttl)
	if err != nil || !found || !accept(v) {
		return l, nil, false, err
	}
	w.c.cleanupRelease(ctx, l)
	return Lease{}, v, true, nil
}

// run subscribes to the key and then claims it until it holds a lease, or
// (accept set) finds a value accept takes.
func (w *waiter) run(ctx context.Context, accept func([]byte) bool) (Got, error) {
	sctx, stop := w.op(ctx)
	sub, err := w.c.subscribe(sctx, w.key)
	stop()
	if err != nil {
		return Got{}, err
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
		l, v, found, err := w.claim(ctx, accept)
		switch {
		case err == nil && found:
			return Got{Found: true, Value: v, Waited: waited}, nil
		case err == nil:
			return Got{Lease: l, Waited: waited}, nil
		case !errors.Is(err, ErrHeld):
			return Got{Waited: waited}, err
		}
		if !waited && w.onWait != nil {
			w.onWait()
		}
		waited = true
		var held *HeldError
		remaining := time.Duration(0)
		if errors.As(err, &held) {
			remaining = held.Remaining
		}
		wait := remaining + expirySlack
		if remaining <= 0 {
			// The backend cannot tell when the holder's lease ends:
			// re-check at least every unknownRecheck (jittered).
			wait = min(w.ttl, unknownRecheck)
			wait -= time.Duration(rand.Int64N(int64(wait/4) + 1))
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case _, ok := <-sub.C():
			if !ok {
				return Got{Waited: true}, opError("acquire", w.key, ErrClosed)
			}
		case <-timer.C:
			// The holder's lease ran out without a release: it may have
			// crashed. Read (GetOrAcquire), then try to take over.
		case <-ctx.Done():
			return Got{Waited: true}, opError("acquire", w.key, ctx.Err())
		}
		if accept != nil {
			// A wake-up that carried the holder's value answers without
			// a read (driver.ValueNotifier).
			if v := sub.takeValue(); v != nil && accept(v) {
				return Got{Found: true, Value: v, Waited: true}, nil
			}
			v, ok, err := w.read(ctx, accept)
			if err != nil || ok {
				return Got{Found: ok, Value: v, Waited: true}, err
			}
		}
	}
}
