package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("Revoke", checkRevoke)
	register("RevokeSet", checkRevokeSet)
	register("RevokeWakes", checkRevokeWakes)
	register("RevokeRace", checkRevokeRace)
}

// checkRevoke: Revoke ends the holder's lease at once (every later use of
// it is ErrLost and changes nothing), deletes the value, lets the key be
// claimed again before the revoked lease would have expired, and never
// lowers the fence; a key without a lease only loses its value.
func checkRevoke(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	k := t.Key("k")
	ttl := t.LongTTL()
	l1, err := c1.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := c2.Set(ctx, k, []byte("old"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := c2.Revoke(ctx, k); err != nil {
		t.Fatalf("Revoke of a held key: %v", err)
	}
	if _, err := c1.Extend(ctx, l1, ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend of a revoked lease: err = %v, want ErrLost", err)
	}
	if err := c1.Commit(ctx, l1, []byte("stale"), ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit of a revoked lease: err = %v, want ErrLost", err)
	}
	if err := c1.CommitRelease(ctx, l1, []byte("stale"), ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("CommitRelease of a revoked lease: err = %v, want ErrLost", err)
	}
	if v, err := c2.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get after Revoke (and the revoked holder's commits): %q, %v; want ErrNotFound", v, err)
	}
	l2, err := c2.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim after Revoke, long before the revoked lease's TTL: %v", err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after Revoke %d <= the revoked lease's %d", l2.Token, l1.Token)
	}
	// The revoked holder's release must not end the new holder's lease.
	if err := c1.Release(ctx, l1); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release of a revoked lease: err = %v, want ErrLost", err)
	}
	if _, err := c1.TryClaim(ctx, k, ttl); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim while the lease taken after Revoke is live: err = %v, want ErrHeld", err)
	}
	if err := c2.Release(ctx, l2); err != nil {
		t.Errorf("Release of the lease taken after Revoke: %v", err)
	}

	// A key without a lease: only the value goes, and the fence holds.
	if err := c2.Set(ctx, k, []byte("v"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := c1.Revoke(ctx, k); err != nil {
		t.Fatalf("Revoke of a free key: %v", err)
	}
	if err := c1.Revoke(ctx, k); err != nil {
		t.Errorf("Revoke twice: %v", err)
	}
	if _, err := c2.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get after Revoke of a free key: err = %v, want ErrNotFound", err)
	}
	l3, err := c1.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if l3.Token <= l2.Token {
		t.Errorf("token after Revoke of a free key %d <= previous %d", l3.Token, l2.Token)
	}
	_ = c1.Release(ctx, l3)
}

// checkRevokeSet: RevokeSet stores its value and ends the lease, so the
// revoked holder's commit cannot replace it.
func checkRevokeSet(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	k := t.Key("k")
	ttl := t.LongTTL()
	l1, err := c1.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := c2.RevokeSet(ctx, k, []byte("new"), ttl); err != nil {
		t.Fatalf("RevokeSet: %v", err)
	}
	if v, err := c1.Get(ctx, k); err != nil || !bytes.Equal(v, []byte("new")) {
		t.Errorf("Get after RevokeSet: %q, %v; want \"new\"", v, err)
	}
	if err := c1.CommitRelease(ctx, l1, []byte("stale"), ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("CommitRelease of a lease revoked by RevokeSet: err = %v, want ErrLost", err)
	}
	if err := c1.Commit(ctx, l1, []byte("stale"), ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit of a lease revoked by RevokeSet: err = %v, want ErrLost", err)
	}
	if v, err := c2.Get(ctx, k); err != nil || !bytes.Equal(v, []byte("new")) {
		t.Errorf("Get after the revoked holder's commits: %q, %v; want \"new\"", v, err)
	}
	l2, err := c2.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim after RevokeSet: %v", err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after RevokeSet %d <= the revoked lease's %d", l2.Token, l1.Token)
	}
	_ = c2.Release(ctx, l2)
	// A value's TTL is honoured like Set's.
	short := t.ShortTTL()
	if err := c2.RevokeSet(ctx, k, []byte("brief"), short); err != nil {
		t.Fatalf("RevokeSet with a TTL: %v", err)
	}
	deadline := time.Now().Add(t.expiryBound())
	for {
		_, err := c1.Get(ctx, k)
		if errors.Is(err, claim.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("a value stored by RevokeSet with TTL %s still there after %s", short, t.expiryBound())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkRevokeWakes: Revoke wakes the key's subscribers in every client, and
// a waiter in Acquire gets the key long before the revoked lease's TTL.
func checkRevokeWakes(t *T) {
	ctx := t.Context()
	holder, revoker, waiter := t.Client(), t.Client(), t.Client()
	k := t.Key("k")
	ttl := t.LongTTL()
	l1, err := holder.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	sub, err := waiter.Subscribe(ctx, k)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	type res struct {
		l   claim.Lease
		err error
	}
	got := make(chan res, 1)
	go func() {
		l, err := waiter.Acquire(ctx, k, ttl)
		got <- res{l, err}
	}()
	// Let Acquire find the key held (a revoke before that is fine too).
	time.Sleep(100 * time.Millisecond)
	if err := revoker.Revoke(ctx, k); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if !woken(t, sub) {
		t.Errorf("no wake-up within %s of Revoke", wakeBound)
	}
	select {
	case r := <-got:
		if r.err != nil {
			t.Fatalf("Acquire after Revoke: %v", r.err)
		}
		if r.l.Token <= l1.Token {
			t.Errorf("Acquire after Revoke: token %d <= the revoked lease's %d", r.l.Token, l1.Token)
		}
		_ = waiter.Release(ctx, r.l)
	case <-time.After(ttl / 2):
		t.Errorf("Acquire still waiting %s after Revoke (the revoked lease's TTL is %s)", ttl/2, ttl)
	case <-ctx.Done():
	}
}

// checkRevokeRace: a claim-and-read (TryClaimRead, TryClaimMany) racing a
// Revoke or RevokeSet of the key is on one side of it. Either the claim
// came first, so the revocation ended its lease (its commit is ErrLost,
// whatever it read), or it read what the revocation left (RevokeSet's
// value; no value after Revoke), and then its commit may land. (A driver
// that claims, then reads, may do both: a revoked lease and the new value;
// that is safe.)
// A driver that reads the value before it takes the claim (or in a
// statement whose snapshot predates the claim's lock) can hand out a live
// lease with the value from before the revocation: the holder then
// commits a value computed from stale data over the revocation, the
// stale write fenced invalidation exists to prevent. Each round starts
// the two calls together at a random offset of up to half a millisecond,
// on a key in one of three states: claimed once and released without a
// value, holding a value, never claimed.
func checkRevokeRace(t *T) {
	ctx := t.Context()
	revoker, claimer := t.Client(), t.Client()
	ttl := t.LongTTL()
	const rounds = 48
	for i := range rounds {
		k := t.Key(fmt.Sprintf("race-%d", i))
		set := i%2 == 0               // RevokeSet; else Revoke of a key holding "old"
		fresh := set && i%3 == 0      // a key never claimed before
		batch := i%4 == 1 || i%4 == 2 // the claim by TryClaimMany
		if !fresh {
			l, err := revoker.TryClaim(ctx, k, ttl)
			if err != nil {
				t.Fatalf("TryClaim: %v", err)
			}
			if set {
				err = revoker.Release(ctx, l)
			} else {
				err = revoker.CommitRelease(ctx, l, []byte("old"), ttl)
			}
			if err != nil {
				t.Fatalf("preparing the key: %v", err)
			}
		}
		skew := time.Duration(rand.Int64N(int64(time.Millisecond))) - 500*time.Microsecond
		var (
			wg     sync.WaitGroup
			revErr error
			start  = make(chan struct{})
		)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if skew > 0 {
				time.Sleep(skew)
			}
			if set {
				revErr = revoker.RevokeSet(ctx, k, []byte("new"), ttl)
			} else {
				revErr = revoker.Revoke(ctx, k)
			}
		}()
		close(start)
		if skew < 0 {
			time.Sleep(-skew)
		}
		var (
			l     claim.Lease
			v     []byte
			found bool
			err   error
		)
		if batch {
			var cs []claim.Claimed
			if cs, err = claimer.TryClaimMany(ctx, []string{k}, ttl); err == nil {
				l, v, found, err = cs[0].Lease, cs[0].Value, cs[0].Found, cs[0].Err
			}
		} else {
			l, v, found, err = claimer.TryClaimRead(ctx, k, ttl)
		}
		wg.Wait()
		if revErr != nil {
			t.Fatalf("round %d: revocation: %v", i, revErr)
		}
		if errors.Is(err, claim.ErrHeld) {
			continue // a driver may hold the key while it revokes
		}
		if err != nil {
			t.Fatalf("round %d: claim racing the revocation: %v", i, err)
		}
		// What the claim read tells which side of the revocation it is on.
		after := found && bytes.Equal(v, []byte("new")) || !set && !found
		if !after && found && !bytes.Equal(v, []byte("old")) {
			t.Fatalf("round %d: the claim read %q, a value nobody wrote", i, v)
		}
		what := "no value"
		if found {
			what = fmt.Sprintf("%q", v)
		}
		op := map[bool]string{true: "RevokeSet", false: "Revoke"}[set]
		cerr := claimer.CommitRelease(ctx, l, []byte("mine"), ttl)
		switch {
		case after && cerr != nil && !errors.Is(cerr, claim.ErrLost):
			t.Errorf("round %d: a claim that read %s, after %s: CommitRelease: %v", i, what, op, cerr)
		case !after && !errors.Is(cerr, claim.ErrLost):
			t.Errorf("round %d: a claim that read %s, from before %s, committed over it (err %v): the revocation did not end its lease", i, what, op, cerr)
		}
		want := "" // what the revocation left
		if set {
			want = "new"
		}
		if cerr == nil {
			want = "mine"
		}
		got, gerr := revoker.Get(ctx, k)
		if gerr != nil && !errors.Is(gerr, claim.ErrNotFound) {
			t.Fatalf("round %d: Get: %v", i, gerr)
		}
		if string(got) != want {
			t.Errorf("round %d: after %s and a racing claim that read %s, Get = %q (%v), want %q", i, op, what, got, gerr, want)
		}
	}
}
