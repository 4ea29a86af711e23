package flight

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// expireFor sleeps until a value fresh for d is past it.
func expireFor(d time.Duration) { time.Sleep(2*d + 10*time.Millisecond) }

// The loader sets the entry's lifetime from what it loaded; the lifetime
// travels with the value in L2 (another process serves it the same way);
// a not-found gets one even with NegativeTTL off.
func TestSetExpiry(t *testing.T) {
	ctx := context.Background()
	if SetExpiry(ctx, Expiry{TTL: time.Second}) {
		t.Fatal("SetExpiry outside a load reported true")
	}
	f := newFleet(t)
	opt := &Options[string]{TTL: time.Hour, L1Size: -1}
	a, _ := newCache(f, opt)
	b, _ := newCache(f, opt)
	const short = 30 * time.Millisecond
	var calls atomic.Int64
	adaptive := func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		switch key {
		case "short":
			if !SetExpiry(ctx, Expiry{TTL: short}) {
				t.Error("SetExpiry in a load reported false")
			}
		case "stale":
			SetExpiry(ctx, Expiry{TTL: short, StaleTTL: time.Hour})
		case "gone":
			SetExpiry(ctx, Expiry{TTL: time.Hour})
			return "", ErrNotFound
		}
		return "v:" + key, nil
	}
	for _, k := range []string{"short", "stale", "long", "gone"} {
		_, _ = a.Get(ctx, k, adaptive)
	}
	if n := calls.Load(); n != 4 {
		t.Fatalf("%d loads, want 4", n)
	}
	expireFor(short)
	// "long" has Options.TTL (an hour): still an L2 hit in B.
	wantSource(t, fetchOK(t, b, ctx, "long", noLoad(t)), SourceL2)
	// "stale": past its own TTL, within its own stale window, though the
	// Options have none: B answers it stale (and refreshes it).
	gate := make(chan struct{})
	wantSource(t, fetchOK(t, b, ctx, "stale", func(context.Context, string) (string, error) {
		<-gate // the stale answer comes first
		return "v2", nil
	}), SourceStale)
	close(gate)
	// "gone": a not-found cached for the hour the loader said.
	if _, err := b.Get(ctx, "gone", noLoad(t)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cached not-found: %v", err)
	}
	// "short": expired after its own TTL: loaded again.
	before := calls.Load()
	wantSource(t, fetchOK(t, b, ctx, "short", adaptive), SourceLoaded)
	if calls.Load() != before+1 {
		t.Fatalf("short-lived key: %d loads, want one more", calls.Load()-before)
	}
	idle(t, b)
}

// The loader fails after the value expired: every caller, in both
// processes, gets the expired value (Source FailSafe) instead of the
// error, and the loader runs once for the whole fleet until the throttle
// passes.
func TestFailSafeLoaderFails(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	const ttl = 30 * time.Millisecond
	opt := &Options[string]{TTL: ttl, TTLJitter: -1, FailSafeTTL: time.Hour, FailSafeThrottle: time.Hour}
	a, _ := newCache(f, opt)
	b, _ := newCache(f, opt)
	if v, err := a.Get(ctx, "k", func(context.Context, string) (string, error) { return "v1", nil }); err != nil || v != "v1" {
		t.Fatalf("Get: %q, %v", v, err)
	}
	expireFor(ttl)
	var calls atomic.Int64
	failing := func(context.Context, string) (string, error) {
		calls.Add(1)
		return "", errTest
	}
	for i := range 10 {
		for _, c := range []*Cache[string]{a, b} {
			r, err := c.Fetch(ctx, "k", failing)
			if err != nil || r.Value != "v1" || r.Source != SourceFailSafe {
				t.Fatalf("call %d: %+v, %v; want v1 from fail-safe", i, r, err)
			}
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("failing loader called %d times across both processes, want 1 (throttled)", n)
	}
	if st := a.Stats(); st.FailSafe != 10 {
		t.Errorf("A: Stats.FailSafe = %d, want 10", st.FailSafe)
	}
}

// The backend is down and the loader fails: the expired value answers,
// failing open (the loader is called once, then throttled) and failing
// closed (the loader is never called).
func TestFailSafeBackendDown(t *testing.T) {
	for _, closed := range []bool{false, true} {
		t.Run(map[bool]string{false: "open", true: "closed"}[closed], func(t *testing.T) {
			ctx := context.Background()
			f := newFleet(t)
			const ttl = 30 * time.Millisecond
			a, p := newCache(f, &Options[string]{TTL: ttl, TTLJitter: -1, FailSafeTTL: time.Hour,
				FailSafeThrottle: time.Hour, FailClosed: closed})
			if _, err := a.Get(ctx, "k", func(context.Context, string) (string, error) { return "v1", nil }); err != nil {
				t.Fatal(err)
			}
			expireFor(ttl)
			p.mem.setFault(claim.ErrUnavailable)
			var calls atomic.Int64
			failing := func(context.Context, string) (string, error) {
				calls.Add(1)
				return "", errTest
			}
			for i := range 5 {
				r, err := a.Fetch(ctx, "k", failing)
				if err != nil || r.Value != "v1" || r.Source != SourceFailSafe {
					t.Fatalf("call %d with the backend down: %+v, %v; want v1 from fail-safe", i, r, err)
				}
			}
			want := int64(1)
			if closed {
				want = 0
			}
			if n := calls.Load(); n != want {
				t.Errorf("loader called %d times, want %d", n, want)
			}
		})
	}
}

// A load slower than SoftTimeout: the caller gets the expired value at the
// soft timeout, while the load is still blocked; the load then finishes
// in the background and fills L1 and L2.
func TestSoftTimeout(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	const ttl = 30 * time.Millisecond
	opt := &Options[string]{TTL: ttl, TTLJitter: -1, FailSafeTTL: time.Hour, SoftTimeout: 20 * time.Millisecond}
	a, _ := newCache(f, opt)
	b, _ := newCache(f, &Options[string]{TTL: time.Hour})
	if _, err := a.Get(ctx, "k", func(context.Context, string) (string, error) { return "v1", nil }); err != nil {
		t.Fatal(err)
	}
	expireFor(ttl)
	gate := make(chan struct{})
	var calls atomic.Int64
	slow := func(context.Context, string) (string, error) {
		calls.Add(1)
		<-gate
		return "v2", nil
	}
	r, err := a.Fetch(ctx, "k", slow)
	if err != nil || r.Value != "v1" || r.Source != SourceFailSafe {
		t.Fatalf("at the soft timeout: %+v, %v; want v1 from fail-safe", r, err)
	}
	select {
	case <-gate:
		t.Fatal("unreachable")
	default: // the load is still blocked: the answer came at the soft timeout
	}
	close(gate)
	idle(t, a)
	if n := calls.Load(); n != 1 {
		t.Errorf("%d loads, want 1", n)
	}
	// Filled: this process's L1, and L2 for the others.
	if r := fetchOK(t, a, ctx, "k", noLoad(t)); r.Value != "v2" {
		t.Errorf("A after the load: %+v, want v2", r)
	}
	if r := fetchOK(t, b, ctx, "k", noLoad(t)); r.Value != "v2" || r.Source != SourceL2 {
		t.Errorf("B after the load: %+v, want v2 from L2", r)
	}
}
