package conformance

import (
	"context"
	"errors"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("ExpiryTakeover", checkExpiryTakeover)
	register("StaleHolder", checkStaleHolder)
	register("Extend", checkExtend)
	register("LocalDeadline", checkLocalDeadline)
	register("ReleaseExpired", checkReleaseExpired)
}

// checkExpiryTakeover: a holder that crashes (never releases, its client
// closed) blocks the key for at most its lease; a waiter in Acquire takes
// over by itself, bounded by the lease, with a larger token.
func checkExpiryTakeover(t *T) {
	ctx := t.Context()
	crashed, waiter := t.Client(), t.Client()
	k := t.Key("k")
	l, err := crashed.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := crashed.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	bound := l.TTL + t.expiryBound()
	actx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	l2, err := waiter.Acquire(actx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("Acquire after the holder crashed: %v (bound: lease %s + %s)", err, l.TTL, t.expiryBound())
	}
	if l2.Token <= l.Token {
		t.Errorf("takeover token %d <= crashed holder's %d", l2.Token, l.Token)
	}
	if err := waiter.Release(ctx, l2); err != nil {
		t.Errorf("Release: %v", err)
	}
}

// staleOps checks that a stale lease can do nothing to the current holder.
func staleOps(t *T, stale *claim.Client, old claim.Lease, cur *claim.Client, now claim.Lease, how string) {
	ctx := t.Context()
	if err := cur.Commit(ctx, now, []byte("new holder"), 0); err != nil {
		t.Fatalf("%s: Commit by the current holder: %v", how, err)
	}
	if err := stale.Commit(ctx, old, []byte("stale holder"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("%s: stale Commit: err = %v, want ErrLost", how, err)
	}
	if _, err := stale.Extend(ctx, old, t.LongTTL()); !errors.Is(err, claim.ErrLost) {
		t.Errorf("%s: stale Extend: err = %v, want ErrLost", how, err)
	}
	if err := stale.Release(ctx, old); !errors.Is(err, claim.ErrLost) {
		t.Errorf("%s: stale Release: err = %v, want ErrLost", how, err)
	}
	v, err := cur.Get(ctx, now.Key)
	if err != nil || string(v) != "new holder" {
		t.Errorf("%s: value after stale ops = %q, %v; want the current holder's", how, v, err)
	}
	if _, err := stale.TryClaim(ctx, now.Key, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("%s: after stale Release, TryClaim err = %v, want ErrHeld (the current holder's claim must survive)", how, err)
	}
	if _, err := cur.Extend(ctx, now, t.LongTTL()); err != nil {
		t.Errorf("%s: Extend by the current holder after stale ops: %v", how, err)
	}
	if err := cur.Release(ctx, now); err != nil {
		t.Errorf("%s: Release by the current holder after stale ops: %v", how, err)
	}
}

// checkStaleHolder: a holder whose lease was released and re-claimed, or
// expired and taken over, can no longer release, extend or commit.
func checkStaleHolder(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	// Released and re-claimed: the stale lease's local deadline is far
	// away, so only the backend's token check can refuse it.
	k := t.Key("released")
	old, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := a.Release(ctx, old); err != nil {
		t.Fatalf("Release: %v", err)
	}
	now, err := b.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim after release: %v", err)
	}
	staleOps(t, a, old, b, now, "after release and re-claim")

	// Expired and taken over.
	k = t.Key("expired")
	old, err = a.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	now = takeover(t, b, k, old)
	staleOps(t, a, old, b, now, "after expiry and takeover")

	// A forged lease (right key and token, wrong holder) is refused too.
	k = t.Key("forged")
	now, err = b.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	forged := now
	forged.Holder = "someone-else"
	forged.Token = now.Token + 1
	if err := a.Release(ctx, forged); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release of a lease with a token never issued: err = %v, want ErrLost", err)
	}
	if err := b.Release(ctx, now); err != nil {
		t.Errorf("Release: %v", err)
	}
}

func checkExtend(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	k := t.Key("k")
	l, err := a.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	before := time.Now()
	l2, err := a.Extend(ctx, l, t.LongTTL())
	after := time.Now()
	if err != nil {
		t.Fatalf("Extend: %v", err)
	}
	if l2.Token != l.Token || l2.Key != l.Key || l2.Holder != l.Holder {
		t.Errorf("Extend changed the lease's identity: %v -> %v", l, l2)
	}
	if l2.TTL < t.LongTTL() {
		t.Errorf("extended TTL %s < asked %s", l2.TTL, t.LongTTL())
	}
	if l2.Deadline.Before(before.Add(l2.TTL)) || l2.Deadline.After(after.Add(l2.TTL)) {
		t.Errorf("extended deadline not within [before+TTL, after+TTL]")
	}
	// A renewal whose reply was lost is retried with the same lease.
	if _, err := a.Extend(ctx, l, t.LongTTL()); err != nil {
		t.Errorf("Extend retried with the same lease: %v (renewals must be idempotent)", err)
	}
	// Outlive the original TTL: the key must still be held.
	time.Sleep(l.TTL + t.feat.TTLGranularity + 100*time.Millisecond)
	if _, err := b.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("after Extend, past the original TTL: TryClaim err = %v, want ErrHeld", err)
	}
	cur := l2
	if err := a.Commit(ctx, cur, []byte("v"), 0); err != nil {
		t.Errorf("Commit with the extended lease: %v", err)
	}
	if err := a.Release(ctx, cur); err != nil {
		t.Errorf("Release of the extended lease: %v", err)
	}
	if _, err := a.Extend(ctx, cur, t.LongTTL()); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend after Release: err = %v, want ErrLost", err)
	}
}

// checkLocalDeadline: past a lease's local Deadline, Commit and Extend are
// refused even if the server has not expired the lease yet.
func checkLocalDeadline(t *T) {
	ctx := t.Context()
	a := t.Client()
	k := t.Key("k")
	l, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	late := l
	late.Deadline = time.Now().Add(-time.Millisecond)
	if err := a.Commit(ctx, late, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit past the local deadline: err = %v, want ErrLost", err)
	}
	if _, err := a.Extend(ctx, late, t.LongTTL()); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend past the local deadline: err = %v, want ErrLost", err)
	}
	if _, err := a.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("a refused Commit wrote a value: Get err = %v, want ErrNotFound", err)
	}
	// The lease itself is still valid with its real deadline.
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("Release: %v", err)
	}
}

// checkReleaseExpired: a lease that expired, even with nobody taking the
// key over, is no longer current: Release and Commit return ErrLost (the
// holder learns that its exclusivity lapsed), write nothing, and the key
// is free for a new claim with a larger token. But a lease renewed by
// Extend is current past its first copy's Deadline: releasing that copy
// releases it.
func checkReleaseExpired(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()

	k0 := t.Key("renewed")
	first, err := a.TryClaim(ctx, k0, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if _, err := a.Extend(ctx, first, t.LongTTL()); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	time.Sleep(time.Until(first.Deadline) + t.feat.TTLGranularity + 100*time.Millisecond)
	if err := a.Release(ctx, first); err != nil {
		t.Errorf("Release of the first copy of a lease renewed by Extend, past that copy's deadline: %v (the lease is current)", err)
	}
	if l, err := b.TryClaim(ctx, k0, t.LongTTL()); err != nil {
		t.Errorf("TryClaim after the renewed lease was released: %v", err)
	} else {
		_ = b.Release(ctx, l)
	}

	k := t.Key("k")
	l, err := a.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	time.Sleep(time.Until(l.Deadline) + t.feat.TTLGranularity + 100*time.Millisecond)
	if err := a.Commit(ctx, l, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit of an expired lease: err = %v, want ErrLost", err)
	}
	if err := a.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release of an expired lease (not taken over): err = %v, want ErrLost", err)
	}
	if _, err := b.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("after a refused Commit, Get err = %v, want ErrNotFound", err)
	}
	now := takeover(t, b, k, l)
	if now.Token <= l.Token {
		t.Errorf("token after expiry %d <= expired lease's %d", now.Token, l.Token)
	}
	if err := a.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release of an expired lease after a new claim: err = %v, want ErrLost", err)
	}
	if err := b.Release(ctx, now); err != nil {
		t.Errorf("Release by the new holder: %v", err)
	}
}
