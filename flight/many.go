package flight

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// BatchFunc loads many keys at once from the system of record (L3): one
// query for a page's worth of records. It receives normalised keys,
// distinct, and returns the values it found; a key missing from the map
// is not found (cached for Options.NegativeTTL, or the Expiry the loader
// set with SetExpiry). An error fails every key of the call. Its context
// is a LoadFunc's (see LoadFunc), bounded by Options.LoadTimeout.
type BatchFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// GetMany returns the values of keys: results[i] is keys[i]'s answer, with
// its error in Result.Err (ErrNotFound, a load error, ...). It costs one
// L1 pass; one batched read of L2 for the misses; one batched claim of
// those still missing, and one call of load for the keys this process
// won, committed together; pushed waits for the keys other processes
// hold, read together as their holders release them. Keys already under
// way in this process (a Get, another GetMany) are joined, not loaded
// again, and concurrent Gets of the keys this call loads join it. On a
// backend with a batch primitive (claim/driver.Batcher) a batch costs a
// handful of round trips whatever its size. The error is for the call as
// a whole (ErrClosed, ErrNoLoader for a nil load); a repeated key gets the
// same answer at each of its places.
func (c *Cache[V]) GetMany(ctx context.Context, keys []string, load BatchFunc[V], opts ...CallOption[V]) ([]Result[V], error) {
	ctx, span := c.startSpan(ctx, spanGetMany)
	if span == nil {
		return c.getMany(ctx, keys, load, opts)
	}
	span.SetAttributes(attrKeys.Int(len(keys)))
	res, err := c.getMany(ctx, keys, load, opts)
	failed := 0
	for _, r := range res {
		if r.Err != nil {
			failed++
		}
	}
	if failed > 0 {
		span.SetAttributes(attrFailedKeys.Int(failed))
	}
	finishSpan(span, err)
	return res, err
}

// getMany is GetMany, under its span (if traced).
func (c *Cache[V]) getMany(ctx context.Context, keys []string, load BatchFunc[V], opts []CallOption[V]) ([]Result[V], error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	cc := applyOptions(callConfig[V]{policy: c.cfg.Wait}, opts)
	if load == nil {
		return nil, ErrNoLoader
	}
	single := singleOf(load)
	res := make([]Result[V], len(keys))
	// The distinct normalised keys, and where each goes in res.
	at := make(map[string][]int, len(keys))
	var order []string
	for i, key := range keys {
		k := c.normalize(key)
		if k == "" {
			res[i] = Result[V]{Err: fmt.Errorf("flight: key %q: %w", key, ErrInvalidKey)}
			continue
		}
		if _, seen := at[k]; !seen {
			order = append(order, k)
		}
		at[k] = append(at[k], i)
	}
	answer1 := func(k string, a answer[V], err error) {
		c.tally(a, err)
		r := a.result(k, opts)
		r.Err = err
		for _, i := range at[k] {
			res[i] = r
		}
	}
	// L1.
	type miss struct {
		k       string
		old, fs *entry[V]
	}
	var misses []miss
	for _, k := range order {
		if c.l1 != nil {
			if e, ok := c.l1.GetIfPresent(k); ok {
				a, done, old, fs, err := c.fromL1(ctx, k, e, cc.policy, single)
				if done {
					answer1(k, a, err)
					continue
				}
				misses = append(misses, miss{k, old, fs})
				continue
			}
		}
		misses = append(misses, miss{k: k})
	}
	if len(misses) == 0 {
		return res, nil
	}
	// Join the flights under way; start one batch flight for the rest.
	flights := make([]*flight[V], len(misses))
	shared := make([]bool, len(misses))
	var owned []*flight[V]
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	for i, m := range misses {
		if f, ok := c.flights[m.k]; ok {
			c.stats.coalesced.Add(1)
			flights[i], shared[i] = f, true
		} else {
			f = c.newFlightLocked(m.k, single, m.old)
			flights[i] = f
			owned = append(owned, f)
		}
		if m.fs != nil {
			c.offerFailSafe(flights[i], m.fs)
		}
	}
	c.mu.Unlock()
	if len(owned) > 0 {
		go c.runMany(context.WithoutCancel(ctx), owned, load)
	}
	for i, m := range misses {
		a, err := c.await(ctx, flights[i], cc.policy, shared[i])
		answer1(m.k, a, err)
	}
	return res, nil
}

// singleOf is load as a LoadFunc of one key: what a flight that GetMany
// started uses when it loads alone (a refresh, failing open).
func singleOf[V any](load BatchFunc[V]) LoadFunc[V] {
	return func(ctx context.Context, key string) (V, error) {
		m, err := load(ctx, []string{key})
		if err != nil {
			var zero V
			return zero, err
		}
		v, ok := m[key]
		if !ok {
			return v, ErrNotFound
		}
		return v, nil
	}
}

// runMany resolves the flights GetMany started, on a goroutine of their
// own, like run does one: L2 in one read, then the client's batch waiting
// engine (claim.Client.GetOrAcquireMany), loading the keys this process
// wins in one call of load as soon as their claims come back. Every
// flight is finished exactly once, whatever happens.
func (c *Cache[V]) runMany(vals context.Context, fs []*flight[V], load BatchFunc[V]) {
	fc := &flightCtx{Context: c.root, vals: vals}
	var ctx context.Context = fc
	for _, f := range fs {
		f.ctx = *fc
	}
	var mu sync.Mutex
	finished := make([]bool, len(fs))
	idx := make(map[*flight[V]]int, len(fs))
	for i, f := range fs {
		idx[f] = i
	}
	finish := func(f *flight[V], e *entry[V], src Source, err error) {
		mu.Lock()
		i := idx[f]
		done := finished[i]
		finished[i] = true
		mu.Unlock()
		if done {
			return
		}
		e, src, err = c.failSafeAnswer(ctx, f, e, src, err)
		c.finish(f, e, src, err)
		c.wg.Done()
	}
	var loads sync.WaitGroup
	defer func() {
		p := recover()
		loads.Wait()
		var err error = ErrGoexit
		if p != nil {
			err = &PanicError{Value: p, Stack: debug.Stack()}
		}
		for _, f := range fs {
			mu.Lock()
			done := finished[idx[f]]
			mu.Unlock()
			if !done {
				c.log.Error("flight: resolving a batch failed abnormally", "key", f.key, "err", err)
				finish(f, nil, SourceNone, err)
			}
		}
	}()
	// Keys failing alone (the backend unreachable): each flight goes its
	// own way (fail open or closed), concurrently.
	alone := func(f *flight[V], op string, err error) {
		loads.Go(func() {
			e, src, err := c.backendDown(ctx, f, op, err)
			finish(f, e, src, err)
		})
	}
	until := time.Now().Add(c.cfg.WaitTimeout)
	bks := make([]string, len(fs))
	for i, f := range fs {
		bks[i] = c.bkey(f.gen, f.key)
		f.bk = bks[i] // as lookup sets a single flight's
	}
	octx := c.opContext(ctx, until)
	raw, err := c.b.GetMany(octx, bks)
	octx.Stop()
	c.observe(ctx, err)
	if err != nil {
		for _, f := range fs {
			alone(f, "get", err)
		}
		return
	}
	var rest []*flight[V]
	var restKeys []string
	for i, f := range fs {
		if raw[i] != nil {
			if e := c.l2Decode(f.key, raw[i]); e != nil {
				if c.usable(f, e) == fresh {
					finish(f, e, SourceL2, nil)
					continue
				}
				c.offerStale(f, e)
				c.offerFailSafe(f, e)
			}
		}
		if !f.bg {
			c.stats.misses.Add(1)
		}
		c.markPending(f)
		rest = append(rest, f)
		restKeys = append(restKeys, bks[i])
	}
	if len(rest) == 0 {
		return
	}
	found := make([]*entry[V], len(rest))
	wctx, cancel := context.WithDeadline(ctx, until)
	defer cancel()
	err = c.b.GetOrAcquireMany(wctx, restKeys, c.cfg.LeaseTTL, &claim.GetOrAcquireManyOptions{
		SkipGet: true, OpTimeout: c.cfg.OpTimeout,
		Accept: func(i int, b []byte) bool {
			f := rest[i]
			e := c.l2Decode(f.key, b)
			if e == nil {
				return false
			}
			if c.usable(f, e) == fresh {
				found[i] = e
				return true
			}
			c.offerStale(f, e)
			c.offerFailSafe(f, e)
			return false
		},
		OnWait: func(i int) { c.startWait(ctx, rest[i]) },
	}, func(rs []claim.Resolved) {
		var won []*flight[V]
		var leases []claim.Lease
		for _, r := range rs {
			f := rest[r.Index]
			over := r.Err != nil && waitOver(ctx, until)
			if !over {
				c.observe(ctx, r.Err)
			}
			if !f.waitStart.IsZero() {
				werr := r.Err
				if over {
					_, _, werr = c.waitEnded(ctx, f)
				}
				c.endWait(ctx, f, found[r.Index], werr)
			}
			switch {
			case over:
				e, src, err := c.waitEnded(ctx, f)
				finish(f, e, src, err)
			case r.Err != nil:
				alone(f, "claim", r.Err)
			case r.Got.Found && r.Got.Waited:
				finish(f, found[r.Index], SourceRemote, nil)
			case r.Got.Found:
				finish(f, found[r.Index], SourceL2, nil)
			default:
				if r.Got.Waited {
					c.stats.takeovers.Add(1)
				}
				won = append(won, f)
				leases = append(leases, r.Got.Lease)
			}
		}
		if len(won) > 0 {
			loads.Go(func() { c.holdMany(ctx, won, leases, load, finish) })
		}
	})
	if err != nil {
		// Refused before any I/O (the keys were checked): nothing was
		// reported.
		for _, f := range rest {
			finish(f, nil, SourceNone, err)
		}
	}
	loads.Wait()
}

// holdMany is hold for the keys of a batch this process won: one call of
// load for all of them (under KeepAlive of every lease when the load runs
// long), then one CommitReleaseMany; the leases not released that way are
// released one by one.
func (c *Cache[V]) holdMany(ctx context.Context, fs []*flight[V], leases []claim.Lease, load BatchFunc[V], finish func(*flight[V], *entry[V], Source, error)) {
	released := make([]bool, len(fs))
	// release releases the leases not released by their commit; it runs
	// before the callers are answered, and on every way out.
	release := func() {
		dctx := detached(ctx)
		for i, l := range leases {
			if released[i] {
				continue
			}
			released[i] = true
			rctx := c.opContext(dctx, time.Time{})
			rerr := c.b.Release(rctx, l)
			rctx.Stop()
			c.observe(dctx, rerr)
		}
	}
	defer release()
	keys := make([]string, len(fs))
	for i, f := range fs {
		keys[i] = f.key
	}
	ex := &loadExpiry{}
	m, dur, lerr := c.callBatchLoader(ctx, withExpiry(ctx, ex), keys, leases, load)
	type out struct {
		e   *entry[V]
		src Source
		err error
	}
	outs := make([]out, len(fs))
	var commits []claim.Commit
	var which []int
	for i, f := range fs {
		v, ok := m[f.key]
		kerr := lerr
		if kerr == nil && !ok {
			kerr = &loadError{f.key, ErrNotFound}
		}
		e, ttl, src, err := c.outcome(ctx, f, v, kerr, dur, ex)
		outs[i] = out{e, src, err}
		if e == nil {
			continue
		}
		data, eerr := c.encode(e, nil)
		if eerr != nil {
			c.log.Error("flight: value not committed", "key", f.key, "err", eerr)
			continue
		}
		commits = append(commits, claim.Commit{Lease: leases[i], Value: data, TTL: ttl})
		which = append(which, i)
	}
	if len(commits) > 0 {
		dctx := detached(ctx)
		cctx := c.opContext(dctx, time.Time{})
		errs, cerr := c.b.CommitReleaseMany(cctx, commits)
		cctx.Stop()
		c.observe(dctx, cerr)
		for j, i := range which {
			e := cerr
			if cerr == nil {
				e = errs[j]
			}
			released[i] = c.committed(fs[i], outs[i].e, e)
		}
	}
	release()
	for i, f := range fs {
		finish(f, outs[i].e, outs[i].src, outs[i].err)
	}
}

// callBatchLoader is callLoader for a batch: load runs on a goroutine of
// its own under LoadTimeout, a panic or Goexit becomes an error, a loader
// still running at the timeout (or at Close) is abandoned; the leases are
// kept alive while it runs long (a lost lease does not stop the load: that
// key's commit is refused).
func (c *Cache[V]) callBatchLoader(ctx, parent context.Context, keys []string, leases []claim.Lease, load BatchFunc[V]) (map[string]V, time.Duration, error) {
	c.stats.loads.Add(1)
	start := time.Now()
	lctx, cancel := context.WithTimeout(parent, c.cfg.LoadTimeout)
	defer cancel()
	type result struct {
		m   map[string]V
		err error
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		normal := false
		defer func() {
			if !normal {
				if p := recover(); p != nil {
					r.err = &PanicError{Value: p, Stack: debugStack()}
				} else {
					r.err = ErrGoexit
				}
			}
			ch <- r
		}()
		r.m, r.err = load(lctx, keys)
		normal = true
	}()
	var keepers []*claim.Keeper
	defer func() {
		for i, k := range keepers {
			leases[i] = k.Stop()
		}
	}()
	keep := time.NewTimer(keeperDelay(leases[0]))
	defer keep.Stop()
	for {
		select {
		case r := <-ch:
			dur := time.Since(start)
			if r.err != nil {
				if ctx.Err() != nil {
					return nil, dur, ErrClosed
				}
				c.stats.loadErrors.Add(1)
				return nil, dur, &loadError{keys[0], r.err}
			}
			return r.m, dur, nil
		case <-keep.C:
			if !c.cfg.noKeepAlive && keepers == nil {
				for _, l := range leases {
					keepers = append(keepers, c.b.KeepAlive(ctx, l, nil))
				}
			}
		case <-lctx.Done():
			c.stats.loadErrors.Add(1)
			if ctx.Err() != nil {
				return nil, time.Since(start), ErrClosed
			}
			c.log.Warn("flight: batch loader timed out; abandoned", "keys", len(keys), "timeout", c.cfg.LoadTimeout)
			return nil, time.Since(start), &loadError{keys[0], fmt.Errorf("%w after %s", ErrLoadTimeout, c.cfg.LoadTimeout)}
		}
	}
}
