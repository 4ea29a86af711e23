package conformance

import (
	"bytes"
	"errors"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("Revoke", checkRevoke)
	register("RevokeSet", checkRevokeSet)
	register("RevokeWakes", checkRevokeWakes)
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
