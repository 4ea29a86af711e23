package claim

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/internal/opctx"
)

// GetOrAcquireManyOptions tune GetOrAcquireMany. nil, and every zero
// field, means the default.
type GetOrAcquireManyOptions struct {
	// Accept judges a value found under keys[i]: true resolves the key
	// with it; false goes on as if there were none. nil accepts every
	// value. It runs on the caller's goroutine.
	Accept func(i int, value []byte) bool
	// SkipGet starts with the subscriptions: the caller has just read the
	// keys and found nothing it accepts.
	SkipGet bool
	// OpTimeout bounds each backend call (0: only ctx bounds them).
	OpTimeout time.Duration
	// OnWait, if set, is called once per key, when it is first found held
	// by another holder, on the caller's goroutine.
	OnWait func(i int)
}

// Resolved is one key's outcome of GetOrAcquireMany: what GetOrAcquire
// would have returned for keys[Index].
type Resolved struct {
	Index int
	Got   Got
	Err   error
}

// GetOrAcquireMany is GetOrAcquire of many keys at once, each step batched:
// it reads the keys (GetMany), subscribes to the misses (SubscribeMany),
// claims them and reads their values in one step (TryClaimMany), and then
// waits for the keys other holders have, reading the woken ones together
// and claiming again those still without a value. After each step it
// calls resolved, on the caller's goroutine, with every key that step
// settled: a value, a lease (the caller computes the value and commits or
// releases it, as with GetOrAcquire; it may do so from resolved or later,
// while GetOrAcquireMany goes on with the other keys), or an error. Every
// key is reported exactly once; GetOrAcquireMany returns when all are, or
// at once with an error and nothing reported if the arguments are invalid.
// On a backend with driver.Batcher, a batch whose keys another process
// holds costs about four round trips whatever its size (get, subscribe,
// claim, get after the holders' releases; more when the holders finish at
// different times). A claim that finds a value committed since the read
// gives its lease back at once: the leases of one step together, in one
// request on a backend with driver.ReleaseBatcher (etcd, PostgreSQL,
// Redis, ZooKeeper). Cancelling ctx reports the unsettled keys with ctx's
// error.
func (c *Client) GetOrAcquireMany(ctx context.Context, keys []string, ttl time.Duration, opt *GetOrAcquireManyOptions, resolved func([]Resolved)) error {
	if err := c.checkKeys(ctx, "get-or-acquire-many", keys); err != nil {
		return err
	}
	if len(keys) == 0 {
		return nil
	}
	if err := c.checkTTL("get-or-acquire-many", keys[0], ttl); err != nil {
		return err
	}
	var o GetOrAcquireManyOptions
	if opt != nil {
		o = *opt
	}
	if o.Accept == nil {
		o.Accept = func(int, []byte) bool { return true }
	}
	w := &manyWaiter{c: c, keys: keys, ttl: ttl, opt: o, report: resolved, wake: make(chan struct{}, 1)}
	w.run(ctx)
	return nil
}

// manyWaiter is one GetOrAcquireMany.
type manyWaiter struct {
	c      *Client
	keys   []string
	ttl    time.Duration
	opt    GetOrAcquireManyOptions
	report func([]Resolved)

	// wake is signalled (never blocking) when a key's wake-up arrives;
	// woken[i] says which. closed: the Client closed under us.
	wake   chan struct{}
	woken  []atomic.Bool
	left   []atomic.Bool // we left key i's subscription ourselves
	closed atomic.Bool

	subs    []*member
	out     []Resolved // this step's settled keys
	waiting map[int]time.Time
	waited  []bool
}

func (w *manyWaiter) op(ctx context.Context) (context.Context, func()) {
	if w.opt.OpTimeout <= 0 {
		return ctx, func() {}
	}
	o := opctx.New(ctx, time.Now().Add(w.opt.OpTimeout))
	return o, o.Stop
}

// settle records key i's outcome for this step's report, and drops its
// subscription.
func (w *manyWaiter) settle(i int, g Got, err error) {
	g.Waited = g.Waited || w.waited[i]
	w.out = append(w.out, Resolved{Index: i, Got: g, Err: err})
	delete(w.waiting, i)
	if w.subs != nil && w.subs[i] != nil {
		w.left[i].Store(true)
		w.subs[i].leave()
		w.subs[i] = nil
	}
}

// flush reports this step's settled keys.
func (w *manyWaiter) flush() {
	if len(w.out) > 0 {
		out := w.out
		w.out = nil
		w.report(out)
	}
}

// settleAll settles every index in idx with err.
func (w *manyWaiter) settleAll(idx []int, err error) {
	for _, i := range idx {
		w.settle(i, Got{}, err)
	}
}

// read reads keys idx and settles those with an accepted value; it
// returns the rest.
func (w *manyWaiter) read(ctx context.Context, idx []int) ([]int, error) {
	ks := make([]string, len(idx))
	for j, i := range idx {
		ks[j] = w.keys[i]
	}
	octx, stop := w.op(ctx)
	vals, err := w.c.getMany(octx, ks)
	stop()
	if err != nil {
		return nil, err
	}
	rest := idx[:0:0]
	for j, i := range idx {
		if vals[j] != nil && w.opt.Accept(i, vals[j]) {
			w.settle(i, Got{Found: true, Value: vals[j]}, nil)
		} else {
			rest = append(rest, i)
		}
	}
	return rest, nil
}

// claim claims keys idx: each is settled (a lease, an accepted value, an
// error) or, held by another holder, left waiting until its holder's
// lease ends.
func (w *manyWaiter) claim(ctx context.Context, idx []int) error {
	ks := make([]string, len(idx))
	for j, i := range idx {
		ks[j] = w.keys[i]
	}
	octx, stop := w.op(ctx)
	res, err := w.c.tryClaimMany(octx, ks, w.ttl)
	stop()
	if err != nil {
		return err
	}
	now := time.Now()
	var unneeded []Lease
	defer func() {
		// The claims that found a value need no lease: released
		// together (one ReleaseMany where the driver has one), before
		// the keys are reported.
		w.c.cleanupReleaseMany(ctx, unneeded)
	}()
	for j, i := range idx {
		r := res[j]
		switch {
		case r.Err == nil && r.Found && w.opt.Accept(i, r.Value):
			// A value landed between the read and the claim: adopt it.
			unneeded = append(unneeded, r.Lease)
			w.settle(i, Got{Found: true, Value: r.Value}, nil)
		case r.Err == nil:
			w.settle(i, Got{Lease: r.Lease}, nil)
		case errors.Is(r.Err, ErrHeld):
			if !w.waited[i] && w.opt.OnWait != nil {
				w.opt.OnWait(i)
			}
			w.waited[i] = true
			var held *HeldError
			remaining := time.Duration(0)
			if errors.As(r.Err, &held) {
				remaining = held.Remaining
			}
			wait := remaining + expirySlack
			if remaining <= 0 {
				wait = min(w.ttl, unknownRecheck)
				wait -= time.Duration(rand.Int64N(int64(wait/4) + 1))
			}
			w.waiting[i] = now.Add(wait)
		default:
			w.settle(i, Got{}, r.Err)
		}
	}
	return nil
}

func (w *manyWaiter) run(ctx context.Context) {
	n := len(w.keys)
	w.waited = make([]bool, n)
	w.waiting = map[int]time.Time{}
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	defer func() {
		for i, m := range w.subs {
			if m != nil {
				w.left[i].Store(true)
				m.leave()
			}
		}
	}()
	var err error
	if !w.opt.SkipGet {
		if idx, err = w.read(ctx, idx); err != nil {
			w.settleAll(idx, err)
		}
		w.flush()
		if err != nil || len(idx) == 0 {
			return
		}
	}
	if err = w.subscribe(ctx, idx); err != nil {
		w.settleAll(idx, err)
		w.flush()
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if len(idx) > 0 {
			if err := w.claim(ctx, idx); err != nil {
				w.settleAll(idx, err)
			}
		}
		w.flush()
		if len(w.waiting) == 0 {
			return
		}
		next := time.Time{}
		for _, t := range w.waiting {
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
		timer.Reset(time.Until(next))
		select {
		case <-w.wake:
		case <-timer.C:
		case <-ctx.Done():
			w.settleAll(w.pending(), opError("acquire", batchOpKey(w.pendingKeys()), ctx.Err()))
			w.flush()
			return
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		if w.closed.Load() {
			w.settleAll(w.pending(), opError("acquire", batchOpKey(w.pendingKeys()), ErrClosed))
			w.flush()
			return
		}
		// The woken keys, and those whose holder's lease ran out, are read
		// together; those still without a value are claimed together.
		now := time.Now()
		idx = idx[:0]
		for i, t := range w.waiting {
			if w.woken[i].Swap(false) || !now.Before(t) {
				idx = append(idx, i)
			}
		}
		if len(idx) == 0 {
			continue
		}
		rest, err := w.read(ctx, idx)
		if err != nil {
			w.settleAll(idx, err)
			idx = nil
			continue
		}
		idx = rest
	}
}

// pending returns the keys not settled yet.
func (w *manyWaiter) pending() []int {
	out := make([]int, 0, len(w.waiting))
	for i := range w.waiting {
		out = append(out, i)
	}
	return out
}

func (w *manyWaiter) pendingKeys() []string {
	var ks []string
	for i := range w.waiting {
		ks = append(ks, w.keys[i])
	}
	return ks
}

// subscribe subscribes to keys idx, together.
func (w *manyWaiter) subscribe(ctx context.Context, idx []int) error {
	w.woken = make([]atomic.Bool, len(w.keys))
	w.left = make([]atomic.Bool, len(w.keys))
	w.subs = make([]*member, len(w.keys))
	ms := make([]*member, len(idx))
	var once sync.Once
	for j, i := range idx {
		m := &member{name: w.keys[i]}
		m.deliver = func([]byte, bool) {
			w.woken[i].Store(true)
			select {
			case w.wake <- struct{}{}:
			default:
			}
		}
		m.gone = func() {
			// Removed without our leave: the Client closed.
			if !w.left[i].Load() {
				once.Do(func() {
					w.closed.Store(true)
					select {
					case w.wake <- struct{}{}:
					default:
					}
				})
			}
		}
		ms[j] = m
	}
	octx, stop := w.op(ctx)
	err := w.c.joinKeys(octx, ms)
	stop()
	if err != nil {
		return err
	}
	for j, i := range idx {
		w.subs[i] = ms[j]
	}
	return nil
}
