package conformance

import (
	"bytes"
	"errors"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

func init() {
	register("Batch", checkBatch)
	register("BatchWait", checkBatchWait)
	register("ReleaseMany", checkReleaseMany)
}

// takeOver makes l stale: from releases it and to claims its key again;
// it returns to's lease.
func takeOver(t *T, from, to *claim.Client, l claim.Lease, ttl time.Duration) claim.Lease {
	if err := from.Release(t.Context(), l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	l2, err := to.TryClaim(t.Context(), l.Key, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	return l2
}

// freeAgain checks that c can claim (and then releases) each key, which
// call released.
func freeAgain(t *T, c *claim.Client, keys []string, ttl time.Duration, call string) {
	for _, k := range keys {
		l, err := c.TryClaim(t.Context(), k, ttl)
		if err != nil {
			t.Errorf("TryClaim after %s released %s: %v", call, k, err)
			continue
		}
		_ = c.Release(t.Context(), l)
	}
}

// checkReleaseMany (drivers with driver.ReleaseBatcher): ReleaseMany
// releases, key by key, what Release releases: current leases (their
// keys free again, their subscribers woken), and never a key whose lease
// was taken over since (ErrLost, the new holder's lease untouched).
func checkReleaseMany(t *T) {
	c1, c2 := t.Client(), t.Client()
	rb, ok := c1.Driver().(driver.ReleaseBatcher)
	if !ok {
		t.Skipf("the driver has no driver.ReleaseBatcher")
	}
	ctx := t.Context()
	ttl := t.LongTTL()
	a, s, b := t.Key("a"), t.Key("stale"), t.Key("b")
	res, err := c1.TryClaimMany(ctx, []string{a, s, b}, ttl)
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("TryClaimMany: key %d: %v", i, r.Err)
		}
	}
	// The stale lease: released and taken over by c2 before the batch
	// releases it.
	ls2 := takeOver(t, c1, c2, res[1].Lease, ttl)
	defer c2.Release(ctx, ls2)
	sub, err := c2.Subscribe(ctx, b)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	errs, err := rb.ReleaseMany(ctx, []driver.Lease{res[0].Lease, res[1].Lease, res[2].Lease})
	if err != nil {
		t.Fatalf("ReleaseMany: %v", err)
	}
	if len(errs) != 3 || errs[0] != nil || !errors.Is(errs[1], driver.ErrLost) || errs[2] != nil {
		t.Errorf("ReleaseMany([current, taken over, current]) = %v, want [nil ErrLost nil]", errs)
	}
	if !woken(t, sub) {
		t.Errorf("ReleaseMany woke no subscriber within %s", wakeBound)
	}
	freeAgain(t, c2, []string{a, b}, ttl, "ReleaseMany")
	if _, err := c1.TryClaim(ctx, s, ttl); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim of the key whose stale lease ReleaseMany was given: err = %v, want ErrHeld (the new holder's lease kept)", err)
	}
	if _, err := c2.Extend(ctx, ls2, ttl); err != nil {
		t.Errorf("the new holder's Extend after a ReleaseMany of the stale lease: %v, want its lease current", err)
	}
	// Released twice: ErrLost, nothing else changes.
	errs, err = rb.ReleaseMany(ctx, []driver.Lease{res[0].Lease})
	if err != nil || len(errs) != 1 || !errors.Is(errs[0], driver.ErrLost) {
		t.Errorf("ReleaseMany of a released lease = %v, %v; want [ErrLost]", errs, err)
	}
	// Every lease current (the usual case: a batch's claims that found
	// values, given back at once).
	x, y := t.Key("x"), t.Key("y")
	res, err = c1.TryClaimMany(ctx, []string{x, y}, ttl)
	if err != nil || res[0].Err != nil || res[1].Err != nil {
		t.Fatalf("TryClaimMany: %v, %+v", err, res)
	}
	errs, err = rb.ReleaseMany(ctx, []driver.Lease{res[0].Lease, res[1].Lease})
	if err != nil || len(errs) != 2 || errs[0] != nil || errs[1] != nil {
		t.Errorf("ReleaseMany([current, current]) = %v, %v; want [nil nil]", errs, err)
	}
	freeAgain(t, c2, []string{x, y}, ttl, "ReleaseMany")
}

// checkBatch: GetMany, TryClaimMany, CommitReleaseMany and SubscribeMany
// answer, key by key, what the single-key calls answer (through the
// driver's Batcher where it has one, the Client's fallback otherwise).
func checkBatch(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	ttl := t.LongTTL()
	a, b, h, s := t.Key("a"), t.Key("b"), t.Key("held"), t.Key("stale")
	_, batched := c1.Driver().(driver.Batcher)
	if err := c2.Set(ctx, a, []byte("A"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	lh, err := c2.TryClaim(ctx, h, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	defer c2.Release(ctx, lh)
	ls, err := c2.TryClaim(ctx, s, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}

	vals, err := c1.GetMany(ctx, []string{b, a, h})
	if err != nil {
		t.Fatalf("GetMany (batcher %v): %v", batched, err)
	}
	if len(vals) != 3 || vals[0] != nil || !bytes.Equal(vals[1], []byte("A")) || vals[2] != nil {
		t.Errorf("GetMany([absent, a=A, held without value]) = %q, want [nil A nil]", vals)
	}
	if _, err := c1.GetMany(ctx, []string{a, a}); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("GetMany with a key twice: err = %v, want ErrInvalidKey", err)
	}

	before := time.Now()
	res, err := c1.TryClaimMany(ctx, []string{a, h, b}, ttl)
	after := time.Now()
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	if len(res) != 3 {
		t.Fatalf("TryClaimMany of 3 keys: %d results", len(res))
	}
	if r := res[0]; r.Err != nil || !r.Found || !bytes.Equal(r.Value, []byte("A")) {
		t.Errorf("TryClaimMany: key with a value: %+v, want a lease and Found A", r)
	} else {
		checkLease(t, r.Lease, a, ttl, before, after)
	}
	if r := res[1]; !errors.Is(r.Err, claim.ErrHeld) {
		t.Errorf("TryClaimMany: held key: err = %v, want ErrHeld", r.Err)
	} else if r.Lease.Token != 0 {
		t.Errorf("TryClaimMany: held key came with a lease %v", r.Lease)
	}
	if r := res[2]; r.Err != nil || r.Found || r.Value != nil {
		t.Errorf("TryClaimMany: free key without a value: %+v, want a lease, not Found", r)
	} else {
		checkLease(t, r.Lease, b, ttl, before, after)
	}
	if res[0].Err != nil || res[2].Err != nil {
		t.Fatalf("cannot go on without the leases")
	}
	if _, err := c2.TryClaim(ctx, a, ttl); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim of a key TryClaimMany granted: err = %v, want ErrHeld", err)
	}
	// The stale lease: taken over (released, claimed again) before the
	// batch commits with it.
	ls2 := takeOver(t, c2, c2, ls, ttl)
	defer c2.Release(ctx, ls2)

	sub, err := c2.Subscribe(ctx, b)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	errs, err := c1.CommitReleaseMany(ctx, []claim.Commit{
		{Lease: res[0].Lease, Value: []byte("A2"), TTL: ttl},
		{Lease: ls, Value: []byte("X"), TTL: ttl},
		{Lease: res[2].Lease, Value: []byte("B2"), TTL: ttl},
	})
	if err != nil {
		t.Fatalf("CommitReleaseMany: %v", err)
	}
	if len(errs) != 3 || errs[0] != nil || !errors.Is(errs[1], claim.ErrLost) || errs[2] != nil {
		t.Errorf("CommitReleaseMany([current, taken over, current]) = %v, want [nil ErrLost nil]", errs)
	}
	vals, err = c2.GetMany(ctx, []string{a, s, b})
	if err != nil {
		t.Fatalf("GetMany: %v", err)
	}
	if len(vals) != 3 || !bytes.Equal(vals[0], []byte("A2")) || vals[1] != nil || !bytes.Equal(vals[2], []byte("B2")) {
		t.Errorf("after CommitReleaseMany: GetMany = %q, want [A2 nil B2]", vals)
	}
	if !woken(t, sub) {
		t.Errorf("CommitReleaseMany woke no subscriber within %s", wakeBound)
	}
	freeAgain(t, c2, []string{a, b}, ttl, "CommitReleaseMany")

	// SubscribeMany: each subscription live when it returns, each woken
	// by its own key.
	x, y := t.Key("x"), t.Key("y")
	subs, err := c1.SubscribeMany(ctx, []string{x, y})
	if err != nil {
		t.Fatalf("SubscribeMany: %v", err)
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	if err := c2.Notify(ctx, y); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if !woken(t, subs[1]) {
		t.Errorf("SubscribeMany: no wake-up of the notified key within %s", wakeBound)
	}
	if err := c2.Notify(ctx, x); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if !woken(t, subs[0]) {
		t.Errorf("SubscribeMany: no wake-up of the notified key within %s", wakeBound)
	}
}

// checkBatchWait: GetOrAcquireMany settles every key exactly once: values
// found, leases for free keys, and keys held elsewhere once their holder
// commits.
func checkBatchWait(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	ttl := t.LongTTL()
	p, q, r := t.Key("p"), t.Key("q"), t.Key("r")
	if err := c2.Set(ctx, p, []byte("P"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	lr, err := c2.TryClaim(ctx, r, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	var mu sync.Mutex
	seen := map[int]claim.Resolved{}
	waits := 0
	done := make(chan error, 1)
	leased := make(chan claim.Lease, 1)
	go func() {
		done <- c1.GetOrAcquireMany(ctx, []string{p, q, r}, ttl, &claim.GetOrAcquireManyOptions{
			OnWait: func(int) { mu.Lock(); waits++; mu.Unlock() },
		}, func(rs []claim.Resolved) {
			mu.Lock()
			defer mu.Unlock()
			for _, x := range rs {
				if _, dup := seen[x.Index]; dup {
					t.Errorf("key %d reported twice", x.Index)
				}
				seen[x.Index] = x
				if x.Err == nil && !x.Got.Found {
					leased <- x.Got.Lease
				}
			}
		})
	}()
	var lq claim.Lease
	select {
	case lq = <-leased:
	case <-time.After(wakeBound):
		t.Fatalf("no lease for the free key within %s", wakeBound)
	}
	if lq.Key != q {
		t.Errorf("lease for %q, want the free key %q", lq.Key, q)
	}
	if err := c1.CommitRelease(ctx, lq, []byte("Q"), ttl); err != nil {
		t.Errorf("CommitRelease of a lease from GetOrAcquireMany: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	if err := c2.CommitRelease(ctx, lr, []byte("R"), ttl); err != nil {
		t.Fatalf("CommitRelease: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("GetOrAcquireMany: %v", err)
		}
	case <-time.After(ttl / 2):
		t.Fatalf("GetOrAcquireMany still waiting %s after the holder committed", ttl/2)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 3 {
		t.Fatalf("%d keys reported, want 3", len(seen))
	}
	if x := seen[0]; x.Err != nil || !x.Got.Found || string(x.Got.Value) != "P" || x.Got.Waited {
		t.Errorf("key with a value: %+v, want Found P without waiting", x)
	}
	if x := seen[2]; x.Err != nil || !x.Got.Found || string(x.Got.Value) != "R" || !x.Got.Waited {
		t.Errorf("key held elsewhere: %+v, want Found R after waiting", x)
	}
	if waits != 1 {
		t.Errorf("OnWait called %d times, want once (the held key)", waits)
	}
}
