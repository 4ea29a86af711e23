package conformance

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// TryClaimRead and CommitRelease: one round trip each on a driver with
// the optional fast path (driver.ClaimReader, driver.CommitReleaser), the
// Client's fallback otherwise; both are checked the same way.
func init() {
	register("ClaimRead", checkClaimRead)
	register("CommitRelease", checkCommitRelease)
}

// checkClaimRead: TryClaimRead is TryClaim plus the key's value as of the
// claim: none on a fresh key, the previous holder's committed value after
// it released, never an expired one, no value (and ErrHeld) on a held key.
func checkClaimRead(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	ra, rb := a, b
	k := t.Key("k")

	// A fresh key: a lease like TryClaim's, and no value.
	ttl := t.LongTTL()
	before := time.Now()
	l1, v, found, err := ra.TryClaimRead(ctx, k, ttl)
	after := time.Now()
	if err != nil {
		t.Fatalf("TryClaimRead on a free key: %v", err)
	}
	checkLease(t, l1, k, ttl, before, after)
	if found || v != nil {
		t.Errorf("TryClaimRead on a key without a value: value %q, found %v; want nil, false", v, found)
	}

	// Held: the same *HeldError as TryClaim, no value.
	if err := a.Commit(ctx, l1, []byte("first"), 0); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	_, v, found, err = rb.TryClaimRead(ctx, k, ttl)
	if !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaimRead on a held key: err = %v, want ErrHeld", err)
	}
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Errorf("TryClaimRead on a held key: %v is not a *claim.HeldError", err)
	} else if he.Remaining < 0 || he.Remaining > l1.TTL+t.feat.TTLGranularity+time.Second {
		t.Errorf("HeldError.Remaining = %s, want 0 (unknown) or at most the lease TTL %s", he.Remaining, l1.TTL)
	}
	if found || v != nil {
		t.Errorf("TryClaimRead on a held key returned a value: %q, found %v", v, found)
	}

	// After the holder committed and released, the next holder reads the
	// committed value (binary safe) with a larger token.
	val := []byte("v\x00\xff\n binary ünïcode")
	if err := a.Commit(ctx, l1, val, 0); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if err := a.Release(ctx, l1); err != nil {
		t.Fatalf("Release: %v", err)
	}
	l2, v, found, err := rb.TryClaimRead(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaimRead after Commit and Release: %v", err)
	}
	if !found || !bytes.Equal(v, val) {
		t.Errorf("TryClaimRead after Commit and Release: value %q, found %v; want %q, true", v, found, val)
	}
	if l2.Token <= l1.Token {
		t.Errorf("TryClaimRead token %d <= previous %d", l2.Token, l1.Token)
	}
	if len(v) > 0 {
		v[0] = 'X' // the caller's to keep: the next read must not see this
	}
	if err := b.Release(ctx, l2); err != nil {
		t.Fatalf("Release of a TryClaimRead lease: %v", err)
	}
	// The released lease is gone: a plain TryClaim gets the key.
	l3, err := a.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim after releasing a TryClaimRead lease: %v", err)
	}
	if l3.Token <= l2.Token {
		t.Errorf("token %d <= previous %d", l3.Token, l2.Token)
	}
	if err := a.Release(ctx, l3); err != nil {
		t.Errorf("Release: %v", err)
	}
	if got, err := b.Get(ctx, k); err != nil || !bytes.Equal(got, val) {
		t.Errorf("Get after TryClaimRead = %q, %v; want %q (reading must not change the value)", got, err, val)
	}

	// A value written with Set counts too, on a long key (mapped like
	// every other operation's), and an empty value is found.
	long := t.Key("long/" + strings.Repeat("ключ-", 1000))
	if err := a.Set(ctx, long, []byte{}, 0); err != nil {
		t.Fatalf("Set of an empty value: %v", err)
	}
	l4, v, found, err := rb.TryClaimRead(ctx, long, ttl)
	if err != nil {
		t.Fatalf("TryClaimRead on a long key: %v", err)
	}
	if !found || len(v) != 0 {
		t.Errorf("TryClaimRead of an empty value on a long key: %q, found %v; want empty, true", v, found)
	}
	_ = b.Release(ctx, l4)

	// Bad arguments, as TryClaim.
	if _, _, _, err := ra.TryClaimRead(ctx, "", ttl); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("TryClaimRead with an empty key: err = %v, want ErrInvalidKey", err)
	}
	if _, _, _, err := ra.TryClaimRead(ctx, t.Key("zero"), 0); err == nil {
		t.Errorf("TryClaimRead with ttl 0 succeeded; want an error")
	}

	// An expired value is never returned.
	short := t.ShortTTL()
	ek := t.Key("expiring")
	if err := a.Set(ctx, ek, []byte("v"), short); err != nil {
		t.Fatalf("Set: %v", err)
	}
	start := time.Now()
	for {
		_, err := a.Get(ctx, ek)
		if errors.Is(err, claim.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if time.Since(start) > short+t.expiryBound() {
			t.Fatalf("value with TTL %s still returned after %s", short, time.Since(start))
		}
		time.Sleep(short / 5)
	}
	l5, v, found, err := rb.TryClaimRead(ctx, ek, ttl)
	if err != nil {
		t.Fatalf("TryClaimRead: %v", err)
	}
	if found || v != nil {
		t.Errorf("TryClaimRead returned an expired value: %q, found %v", v, found)
	}
	_ = b.Release(ctx, l5)

	// Closed: ErrClosed.
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if _, _, _, err := ra.TryClaimRead(ctx, t.Key("closed"), ttl); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("TryClaimRead after Close: err = %v, want ErrClosed", err)
	}
}

// checkCommitRelease: CommitRelease writes the value and releases in one
// step, waking every subscriber in every client; a stale lease writes and
// releases nothing; limits and the local deadline are checked before I/O.
func checkCommitRelease(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	ca, cb := a, b
	k := t.Key("k")

	l1, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	// Subscribers in three other clients and in the holder's own.
	const clients, perClient = 3, 5
	var subs []*claim.Subscription
	for i := 0; i <= clients; i++ {
		c := a
		if i > 0 {
			c = t.Client()
		}
		for j := 0; j < perClient; j++ {
			s, err := c.Subscribe(ctx, k)
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			defer s.Close()
			subs = append(subs, s)
		}
	}
	val := []byte("v\x00\xff\n binary ünïcode")
	if err := ca.CommitRelease(ctx, l1, val, 0); err != nil {
		t.Fatalf("CommitRelease by the holder: %v", err)
	}
	val[0] = 'X' // not retained
	var missed, unseen atomic.Int32
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !woken(t, s) {
				missed.Add(1)
				return
			}
			// Woken: the value is there to read.
			if got, err := b.Get(ctx, k); err != nil || string(got) != "v\x00\xff\n binary ünïcode" {
				unseen.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := missed.Load(); n > 0 {
		t.Errorf("%d of %d subscribers were not woken within %s of one CommitRelease", n, len(subs), wakeBound)
	}
	if n := unseen.Load(); n > 0 {
		t.Errorf("%d of %d woken subscribers did not read the committed value", n, len(subs))
	}
	// Released: another client claims with a larger token, and the
	// value outlives the release.
	l2, err := b.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim after CommitRelease: %v (the lease must be released)", err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after CommitRelease %d <= previous %d", l2.Token, l1.Token)
	}
	if got, err := a.Get(ctx, k); err != nil || string(got) != "v\x00\xff\n binary ünïcode" {
		t.Errorf("Get after CommitRelease = %q, %v", got, err)
	}
	if err := b.Release(ctx, l2); err != nil {
		t.Fatalf("Release: %v", err)
	}
	var v []byte
	var found bool
	l2, v, found, err = b.TryClaimRead(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaimRead after CommitRelease: %v", err)
	}
	if !found || string(v) != "v\x00\xff\n binary ünïcode" {
		t.Errorf("TryClaimRead after CommitRelease: %q, found %v; want the committed value", v, found)
	}

	// The released lease, and a stale one, can do nothing to the current
	// holder: ErrLost, nothing written, nothing released.
	staleCommitRelease(t, ca, l1, b, l2, "after CommitRelease and re-claim")
	sk := t.Key("expired")
	old, err := a.TryClaim(ctx, sk, t.ShortTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	now := takeover(t, b, sk, old)
	old.Deadline = time.Now().Add(time.Hour) // only the backend's check can refuse it
	staleCommitRelease(t, ca, old, b, now, "after expiry and takeover")

	// Past the local deadline, over the limit, or with a bad key: refused
	// before any I/O, so the lease (still live on the server) stays held
	// and nothing is written.
	dk := t.Key("deadline")
	l, err := a.TryClaim(ctx, dk, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	late := l
	late.Deadline = time.Now().Add(-time.Millisecond)
	if err := ca.CommitRelease(ctx, late, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("CommitRelease past the local deadline: err = %v, want ErrLost", err)
	}
	if limit := t.feat.MaxValueLen; limit > 0 && limit <= 64<<20 {
		if err := ca.CommitRelease(ctx, l, bytes.Repeat([]byte{'x'}, limit+1), 0); !errors.Is(err, claim.ErrTooLarge) {
			t.Errorf("CommitRelease of MaxValueLen+1 bytes: err = %v, want ErrTooLarge", err)
		}
	}
	if _, err := a.Get(ctx, dk); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("a refused CommitRelease wrote a value: Get err = %v, want ErrNotFound", err)
	}
	if _, err := b.TryClaim(ctx, dk, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("a refused CommitRelease released the lease: TryClaim err = %v, want ErrHeld", err)
	}
	if err := cb.CommitRelease(ctx, claim.Lease{Token: 1, Holder: "h", Deadline: time.Now().Add(time.Hour)}, []byte("v"), 0); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("CommitRelease with an empty key: err = %v, want ErrInvalidKey", err)
	}
	// The lease itself is still good with its real deadline.
	if err := ca.CommitRelease(ctx, l, []byte("on time"), t.ShortTTL()); err != nil {
		t.Fatalf("CommitRelease with a value TTL: %v", err)
	}
	// The value's TTL applies.
	start := time.Now()
	for {
		_, err := b.Get(ctx, dk)
		if errors.Is(err, claim.ErrNotFound) {
			break
		}
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if time.Since(start) > t.ShortTTL()+t.expiryBound() {
			t.Fatalf("value committed with TTL %s still returned after %s", t.ShortTTL(), time.Since(start))
		}
		time.Sleep(t.ShortTTL() / 5)
	}

	// Closed: ErrClosed.
	if err := a.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := ca.CommitRelease(ctx, l2, []byte("closed"), 0); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("CommitRelease after Close: err = %v, want ErrClosed", err)
	}
}

// staleCommitRelease checks that a stale lease's CommitRelease changes
// nothing, then that the current holder's CommitRelease works.
func staleCommitRelease(t *T, stale *claim.Client, old claim.Lease, cur *claim.Client, now claim.Lease, how string) {
	ctx := t.Context()
	if err := cur.Commit(ctx, now, []byte("new holder"), 0); err != nil {
		t.Fatalf("%s: Commit by the current holder: %v", how, err)
	}
	if err := stale.CommitRelease(ctx, old, []byte("stale holder"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("%s: stale CommitRelease: err = %v, want ErrLost", how, err)
	}
	if v, err := cur.Get(ctx, now.Key); err != nil || string(v) != "new holder" {
		t.Errorf("%s: value after a stale CommitRelease = %q, %v; want the current holder's", how, v, err)
	}
	if _, err := cur.TryClaim(ctx, now.Key, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("%s: after a stale CommitRelease, TryClaim err = %v, want ErrHeld (the current holder's claim must survive)", how, err)
	}
	if _, err := cur.Extend(ctx, now, t.LongTTL()); err != nil {
		t.Errorf("%s: Extend by the current holder after a stale CommitRelease: %v", how, err)
	}
	cr := cur
	if err := cr.CommitRelease(ctx, now, []byte("current"), 0); err != nil {
		t.Errorf("%s: CommitRelease by the current holder: %v", how, err)
	}
	if err := cr.CommitRelease(ctx, now, []byte("twice"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("%s: second CommitRelease of one lease: err = %v, want ErrLost", how, err)
	}
	if v, err := cur.Get(ctx, now.Key); err != nil || string(v) != "current" {
		t.Errorf("%s: value after CommitRelease twice = %q, %v; want the first one's", how, v, err)
	}
}
