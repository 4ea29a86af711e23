package conformance

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("ClaimHeld", checkClaimHeld)
	register("TokensIncrease", checkTokensIncrease)
	register("MutualExclusion", checkMutualExclusion)
	register("ReleaseTwice", checkReleaseTwice)
}

// checkLease verifies the fields of a fresh lease.
func checkLease(t *T, l claim.Lease, key string, asked time.Duration, before, after time.Time) {
	if l.Key != key {
		t.Errorf("lease key = %q, want %q", l.Key, key)
	}
	if l.Token == 0 {
		t.Errorf("lease token is 0; tokens start at 1")
	}
	if l.Holder == "" {
		t.Errorf("lease has no holder id")
	}
	if l.TTL < asked {
		t.Errorf("lease TTL %s shorter than asked %s", l.TTL, asked)
	}
	lo, hi := before.Add(l.TTL), after.Add(l.TTL)
	if l.Deadline.Before(lo) || l.Deadline.After(hi) {
		t.Errorf("lease deadline %s not within [before+TTL, after+TTL] = [%s, %s]: it must be taken just before the request",
			l.Deadline.Format(time.RFC3339Nano), lo.Format(time.RFC3339Nano), hi.Format(time.RFC3339Nano))
	}
}

func checkClaimHeld(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	k := t.Key("k")
	ttl := t.LongTTL()
	before := time.Now()
	l1, err := c1.TryClaim(ctx, k, ttl)
	after := time.Now()
	if err != nil {
		t.Fatalf("TryClaim on a free key: %v", err)
	}
	checkLease(t, l1, k, ttl, before, after)
	for i, c := range []*claim.Client{c2, c1} {
		_, err := c.TryClaim(ctx, k, ttl)
		if !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("TryClaim #%d on a held key: err = %v, want ErrHeld", i+2, err)
		}
		var he *claim.HeldError
		if !errors.As(err, &he) {
			t.Errorf("TryClaim on a held key: %v is not a *claim.HeldError", err)
		} else if he.Remaining < 0 || he.Remaining > l1.TTL+t.feat.TTLGranularity+time.Second ||
			(he.Remaining > 0 && he.Remaining < l1.TTL/2) {
			// Just claimed: the holder has about its whole lease left.
			// Far less is a wrong unit, and makes waiters spin.
			t.Errorf("HeldError.Remaining = %s, want 0 (unknown) or about the lease TTL %s (at least half of it, at most all of it)", he.Remaining, l1.TTL)
		}
	}
	if err := c1.Release(ctx, l1); err != nil {
		t.Fatalf("Release: %v", err)
	}
	l2, err := c2.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim after Release: %v", err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after release %d <= previous %d", l2.Token, l1.Token)
	}
	if l2.Holder == l1.Holder {
		t.Errorf("two leases share holder id %q", l1.Holder)
	}
	// A different key is independent.
	l3, err := c1.TryClaim(ctx, t.Key("other"), ttl)
	if err != nil {
		t.Errorf("TryClaim on another key while k is held: %v", err)
	} else {
		_ = c1.Release(ctx, l3)
	}
	if err := c2.Release(ctx, l2); err != nil {
		t.Errorf("Release: %v", err)
	}
	if _, err := c1.TryClaim(ctx, k, 0); err == nil {
		t.Errorf("TryClaim with ttl 0 succeeded; want an error")
	}
}

func checkTokensIncrease(t *T) {
	ctx := t.Context()
	cs := []*claim.Client{t.Client(), t.Client(), t.Client()}
	k := t.Key("k")
	var last uint64
	next := func(l claim.Lease, how string) {
		if l.Token <= last {
			t.Errorf("token %d after %s is not greater than previous %d", l.Token, how, last)
		}
		last = l.Token
	}
	for i := 0; i < 6; i++ {
		l, err := cs[i%3].TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim #%d: %v", i, err)
		}
		next(l, "release")
		if err := cs[i%3].Release(ctx, l); err != nil {
			t.Fatalf("Release #%d: %v", i, err)
		}
	}
	// Expiry and takeover: a holder that never releases.
	l, err := cs[0].TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	next(l, "release")
	l2 := takeover(t, cs[1], k, l)
	next(l2, "expiry and takeover")
	_ = cs[1].Release(ctx, l2)
	l3, err := cs[2].TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim after takeover: %v", err)
	}
	next(l3, "takeover and release")
	_ = cs[2].Release(ctx, l3)
}

// takeover waits (bounded) for prev to expire and claims the key with c.
func takeover(t *T, c *claim.Client, key string, prev claim.Lease) claim.Lease {
	ctx := t.Context()
	deadline := time.Now().Add(prev.TTL + t.expiryBound())
	for {
		l, err := c.TryClaim(ctx, key, t.LongTTL())
		if err == nil {
			return l
		}
		if !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("TryClaim while waiting for expiry: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease with TTL %s still held %s after it was granted: it never expired", prev.TTL, time.Since(prev.Deadline.Add(-prev.TTL)).Round(time.Millisecond))
		}
		time.Sleep(min(50*time.Millisecond, prev.TTL/4))
	}
}

// checkMutualExclusion runs many clients × goroutines through a critical
// section guarded by Acquire, and verifies exclusion with a fenced counter
// (read, then Commit+1 under the lease) and an in-process overlap counter,
// not by trusting the backend.
func checkMutualExclusion(t *T) {
	ctx := t.Context()
	const clients, goroutines, rounds = 4, 5, 5
	k := t.Key("k")
	var inside, overlaps, done atomic.Int64
	var mu sync.Mutex
	var tokens []uint64
	var wg sync.WaitGroup
	cs := make([]*claim.Client, clients)
	for i := range cs {
		cs[i] = t.Client()
	}
	for i := 0; i < clients; i++ {
		for g := 0; g < goroutines; g++ {
			wg.Add(1)
			go func(c *claim.Client) {
				defer wg.Done()
				for r := 0; r < rounds; r++ {
					l, err := c.Acquire(ctx, k, t.LongTTL())
					if err != nil {
						t.Errorf("Acquire: %v", err)
						return
					}
					if inside.Add(1) != 1 {
						overlaps.Add(1)
					}
					mu.Lock()
					if n := len(tokens); n > 0 && tokens[n-1] >= l.Token {
						t.Errorf("holder with token %d entered after a holder with token %d", l.Token, tokens[n-1])
					}
					tokens = append(tokens, l.Token)
					mu.Unlock()
					n := 0
					v, err := c.Get(ctx, k)
					switch {
					case errors.Is(err, claim.ErrNotFound):
					case err != nil:
						t.Errorf("Get: %v", err)
					default:
						if _, err := fmt.Sscan(string(v), &n); err != nil {
							t.Errorf("counter %q: %v", v, err)
						}
					}
					// Widen the window in which a second holder would overlap.
					time.Sleep(time.Millisecond)
					if err := c.Commit(ctx, l, []byte(fmt.Sprint(n+1)), 0); err != nil {
						t.Errorf("Commit by the holder: %v", err)
					} else {
						done.Add(1)
					}
					inside.Add(-1)
					if err := c.Release(ctx, l); err != nil {
						t.Errorf("Release by the holder: %v", err)
					}
				}
			}(cs[i])
		}
	}
	wg.Wait()
	if n := overlaps.Load(); n > 0 {
		t.Errorf("%d times a holder entered while another held the key", n)
	}
	v, err := cs[0].Get(ctx, k)
	if err != nil {
		t.Fatalf("Get final counter: %v", err)
	}
	var n int64
	fmt.Sscan(string(v), &n)
	if n != done.Load() {
		t.Errorf("fenced counter = %d after %d committed increments: updates were lost, so two holders overlapped", n, done.Load())
	}
	if want := int64(clients * goroutines * rounds); done.Load() != want {
		t.Errorf("%d of %d critical sections committed", done.Load(), want)
	}
}

func checkReleaseTwice(t *T) {
	ctx := t.Context()
	c := t.Client()
	k := t.Key("k")
	l, err := c.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := c.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
		t.Errorf("second Release: err = %v, want ErrLost", err)
	}
	l2, err := c.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim after release: %v", err)
	}
	if err := c.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release of the old lease while a new one is held: err = %v, want ErrLost", err)
	}
	if _, err := c.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("the old lease's Release freed the new holder's key: TryClaim err = %v, want ErrHeld", err)
	}
	if err := c.Release(ctx, l2); err != nil {
		t.Errorf("Release: %v", err)
	}
}
