package flight

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/countdriver"
)

// TestFailSafeAfterInvalidate: a flight that read an expired value (within
// its fail-safe window) from L2 before an Invalidate, and claims the key
// after it, republished that value to L2 when its loader failed
// (outcome's fail-safe path): a call that started after Invalidate
// returned, in another process, was answered with the invalidated value
// (found by review). Now the fail-safe copy is published only if L2 still
// holds that value when the holder's load fails; otherwise the load's
// error is (a load that ran after the invalidation), as without
// fail-safe.
func TestFailSafeAfterInvalidate(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	const ttl = 30 * time.Millisecond
	opt := func() *Options[string] {
		return &Options[string]{TTL: ttl, TTLJitter: -1, FailSafeTTL: time.Hour, FailSafeThrottle: time.Hour, L1Size: -1}
	}
	var armed atomic.Bool
	atClaim := make(chan struct{})
	resume := make(chan struct{})
	pa := f.procWith(func(m countdriver.Method) {
		if (m == countdriver.ClaimRead || m == countdriver.TryClaim) && armed.CompareAndSwap(true, false) {
			close(atClaim) // A's flight read the old value from L2; about to claim
			<-resume
		}
	})
	a := openProcCache(t, pa, opt())
	b, _ := newCache(f, opt())

	if _, err := a.Get(ctx, "k", func(context.Context, string) (string, error) { return "old", nil }); err != nil {
		t.Fatal(err)
	}
	expireFor(ttl) // "old" is expired, within its fail-safe window

	armed.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A caller whose call began before the Invalidate: it may get "old".
		_, _ = a.Fetch(ctx, "k", func(context.Context, string) (string, error) { return "", errTest })
	}()
	<-atClaim
	if err := b.Invalidate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	close(resume)
	<-done

	// This call starts after Invalidate returned: it must not see "old".
	r, err := b.Fetch(ctx, "k", func(context.Context, string) (string, error) { return "new", nil })
	if err != nil && !errors.Is(err, ErrRemoteLoad) {
		t.Fatal(err)
	}
	// The failed load ran after the invalidation: its published error
	// (ErrorTTL) may answer; the invalidated value never.
	if err == nil && r.Value == "old" {
		t.Fatalf("after Invalidate returned, B got the invalidated value %q (source %v): the fail-safe copy was committed to L2 after the revocation", r.Value, r.Source)
	}
}

// TestFailSafeGetMany: a GetMany whose batch load fails answers each key
// with its expired value within the fail-safe window, in this process and
// (published) in another, the failing loader called once: the batch
// path of the check that L2 still holds the value (failSafeCurrent).
func TestFailSafeGetMany(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	const ttl = 30 * time.Millisecond
	opt := &Options[string]{TTL: ttl, TTLJitter: -1, FailSafeTTL: time.Hour, FailSafeThrottle: time.Hour}
	a, _ := newCache(f, opt)
	b, _ := newCache(f, opt)
	keys := []string{"k1", "k2", "k3"}
	good := func(_ context.Context, ks []string) (map[string]string, error) {
		m := map[string]string{}
		for _, k := range ks {
			m[k] = "v-" + k
		}
		return m, nil
	}
	if _, err := a.GetMany(ctx, keys, good); err != nil {
		t.Fatal(err)
	}
	expireFor(ttl)
	var calls atomic.Int64
	failing := func(context.Context, []string) (map[string]string, error) {
		calls.Add(1)
		return nil, errTest
	}
	for _, c := range []*Cache[string]{a, b} {
		rs, err := c.GetMany(ctx, keys, failing)
		if err != nil {
			t.Fatal(err)
		}
		for i, r := range rs {
			if r.Err != nil || r.Value != "v-"+keys[i] || r.Source != SourceFailSafe {
				t.Errorf("%s: %+v; want v-%s from fail-safe", keys[i], r, keys[i])
			}
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("failing batch loader called %d times across both processes, want 1", n)
	}
}
