package backendtest

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// The two takeover rules of the drivers that judge lease expiry on client
// clocks (Consul, NATS; memcached and DynamoDB have checks of their own
// shape, through their polls): a waiter takes a lease over at its
// recorded expiry plus clock_skew, or, if it saw the write that made the
// lease, once the lease's TTL has passed since that first sighting
// (driver.Sightings), whichever comes first.

// SkewMargin checks a waiter that first sees a lease after it expired: it
// takes it over only at the recorded expiry plus clock_skew, which comes
// before its own sighting plus the TTL. a claims key "k" for 1 s; b,
// whose URL sets clock_skew=300ms, tries at a's Deadline + 20 ms: a
// HeldError whose Remaining is within the margin. The driver judges
// expiry by the record, whatever the lease's Deadline says: a forged one
// neither commits nor escapes ErrLost on Release, which still frees the
// expired lock, so b then claims.
func SkewMargin(t *testing.T, a, b *claim.Client) {
	t.Helper()
	ctx := Context(t)
	l, err := a.TryClaim(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(l.Deadline) + 20*time.Millisecond)
	_, err = b.TryClaim(ctx, "k", time.Second)
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("TryClaim within the skew margin: %v, want HeldError", err)
	}
	if he.Remaining <= 0 || he.Remaining > 300*time.Millisecond {
		t.Errorf("Remaining = %s, want at most the margin's 300ms", he.Remaining)
	}
	forged := l
	forged.Deadline = time.Now().Add(time.Hour)
	if err := a.Driver().Commit(ctx, forged, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("driver Commit of an expired lease: %v, want ErrLost", err)
	}
	if err := a.Driver().Release(ctx, forged); !errors.Is(err, claim.ErrLost) {
		t.Errorf("driver Release of an expired lease: %v, want ErrLost", err)
	}
	if l2, err := b.TryClaim(ctx, "k", time.Second); err != nil {
		t.Errorf("TryClaim after the expired lease was released: %v", err)
	} else {
		_ = b.Release(ctx, l2)
	}
}

// TakeoverBySighting checks a waiter that saw a claim being made: it
// takes the lease over about a TTL after it saw it, not at the recorded
// expiry plus clock_skew. a claims key "k" for 1 s; b, whose URL sets
// clock_skew=2s, tries at once: a HeldError whose Remaining is at most
// the TTL and a little (the clock rule would say about 3 s). meanwhile,
// if not nil, runs next and returns the HeldError b is to wait out (a
// later TryClaim's: a write that left the lease as it was must not have
// restarted the count). b then claims once that has passed: a larger
// token, after a's Deadline (one process, one clock), and a's Commit is
// refused.
func TakeoverBySighting(t *testing.T, a, b *claim.Client, meanwhile func(first *claim.HeldError) *claim.HeldError) {
	t.Helper()
	ctx := Context(t)
	const ttl = time.Second
	l, err := a.TryClaim(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.TryClaim(ctx, "k", time.Minute)
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("TryClaim of a held key: %v, want HeldError", err)
	}
	if he.Remaining <= 0 || he.Remaining > ttl+100*time.Millisecond {
		t.Fatalf("Remaining = %s for a claim seen as it was made, want at most the TTL (%s) and a little, not the TTL plus clock_skew", he.Remaining, ttl)
	}
	if meanwhile != nil {
		he = meanwhile(he)
	}
	time.Sleep(he.Remaining + 20*time.Millisecond)
	nl, err := b.TryClaim(ctx, "k", time.Minute)
	got := time.Now()
	if err != nil {
		t.Fatalf("TryClaim past the sighting's end (%s before the recorded expiry plus clock_skew): %v", time.Until(l.Deadline.Add(2*time.Second)), err)
	}
	defer func() { _ = b.Release(ctx, nl) }()
	if nl.Token <= l.Token {
		t.Errorf("token %d after the holder's %d", nl.Token, l.Token)
	}
	if got.Before(l.Deadline) {
		t.Errorf("taken over %s before the holder's Deadline", l.Deadline.Sub(got))
	}
	if err := a.Driver().Commit(ctx, l, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("the old holder's Commit after the takeover: %v, want ErrLost", err)
	}
}

// EarlierVersionsByClockRule checks that takeover by sightings applies only
// to leases whose holder runs it. write stores, in key's lock record, a
// lease of holder "old" for a TTL of 1 s from now, marked as a holder that
// runs the rule or not (as earlier versions wrote it: no mark). c, whose
// URL sets a clock_skew of skew (at least 1 s), sees each record written
// (a first TryClaim, held), and tries again once the TTL has passed since:
// the marked lease is taken over by that sighting; the unmarked one only
// at its recorded expiry plus clock_skew (still held, about skew left),
// since its holder may count its Deadline past a sighting plus the TTL.
func EarlierVersionsByClockRule(t *testing.T, c *claim.Client, skew time.Duration, write func(key string, marked bool)) {
	t.Helper()
	ctx := Context(t)
	run := strconv.FormatInt(time.Now().UnixNano(), 36) // a shared server keeps the last run's
	for _, marked := range []bool{false, true} {
		key := "earlier-" + map[bool]string{false: "unmarked", true: "marked"}[marked] + "-" + run
		write(key, marked)
		if _, err := c.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("%s: first TryClaim %v, want ErrHeld", key, err)
		}
		time.Sleep(time.Second + 50*time.Millisecond)
		l, err := c.TryClaim(ctx, key, time.Minute)
		var he *claim.HeldError
		switch {
		case !marked && !errors.As(err, &he):
			t.Errorf("%s: TryClaim once the sighting plus the TTL passed: %v, want still held (recorded expiry plus clock_skew)", key, err)
		case !marked && he.Remaining < skew/2:
			t.Errorf("%s: Remaining %s, want about clock_skew (%s)", key, he.Remaining, skew)
		case marked && err != nil:
			t.Errorf("%s: TryClaim once the sighting plus the TTL passed: %v, want the takeover", key, err)
		case err == nil:
			_ = c.Release(ctx, l)
		}
	}
}
