package backendtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/flight"
)

// invalidationBound bounds how long an invalidation may take to reach
// another process's L1: a bound, not a timing goal (a push backend takes
// a round trip, a poll backend its poll interval).
const invalidationBound = 15 * time.Second

// Flight checks flight's fenced invalidation end to end on a backend,
// with open giving a new client (a process) each call: a load under way
// when Invalidate or Set runs cannot store its value in L2 or in any
// process's L1 afterwards; Invalidate and InvalidateAll reach the other
// processes' L1 (the time it took is logged: the figure of the README's
// guarantees table for poll backends).
func Flight(t *testing.T, open func(t *testing.T) *claim.Client) {
	t.Run("InvalidateFencesLoad", func(t *testing.T) { fencedLoad(t, open, false) })
	t.Run("SetFencesLoad", func(t *testing.T) { fencedLoad(t, open, true) })
	t.Run("InvalidateReachesL1", func(t *testing.T) { invalidationReach(t, open, false) })
	t.Run("InvalidateAllReachesL1", func(t *testing.T) { invalidationReach(t, open, true) })
}

func cacheName() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "flighttest-" + hex.EncodeToString(b[:])
}

func openCache(t *testing.T, c *claim.Client, name string) *flight.Cache[string] {
	t.Helper()
	fc, err := flight.New(c, &flight.Options[string]{Name: name, L1TTL: time.Hour, TTL: time.Hour, LeaseTTL: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fc.Close() })
	return fc
}

func constLoad(v string) flight.LoadFunc[string] {
	return func(context.Context, string) (string, error) { return v, nil }
}

// fencedLoad: process A's loader is blocked; process B waits for A; then
// B invalidates the key (or sets it); A's loader returns "stale". A's
// caller gets "stale", marked superseded; afterwards every process
// answers "fresh" (the load after the invalidation) or "set", never
// "stale", from L1 or L2.
func fencedLoad(t *testing.T, open func(t *testing.T) *claim.Client, set bool) {
	ctx := Context(t)
	name := cacheName()
	ca, cb, cc := openCache(t, open(t), name), openCache(t, open(t), name), openCache(t, open(t), name)
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	blocked := func(ctx context.Context, key string) (string, error) {
		once.Do(func() { close(started) })
		select {
		case <-release:
		case <-ctx.Done():
			// Revoked leases are not renewed: the load goes on.
			<-release
		}
		return "stale", nil
	}
	type res struct {
		r   flight.Result[string]
		err error
	}
	aDone, bDone := make(chan res, 1), make(chan res, 1)
	go func() {
		r, err := ca.Fetch(ctx, "k", blocked)
		aDone <- res{r, err}
	}()
	select {
	case <-started:
	case <-time.After(invalidationBound):
		t.Fatal("A's loader did not start")
	}
	go func() {
		r, err := cb.Fetch(ctx, "k", constLoad("fresh"))
		bDone <- res{r, err}
	}()
	// Let B find the key held (if it has not yet, it loads after the
	// invalidation: the same outcome).
	time.Sleep(200 * time.Millisecond)
	want := "fresh"
	if set {
		want = "set"
		if err := cc.Set(ctx, "k", "set"); err != nil {
			t.Fatalf("Set: %v", err)
		}
	} else if err := cc.Invalidate(ctx, "k"); err != nil {
		t.Fatalf("Invalidate: %v", err)
	}
	close(release)
	a := <-aDone
	if a.err != nil || a.r.Value != "stale" || !a.r.Superseded {
		t.Errorf("A's caller: %+v, %v; want the value of its own load, \"stale\", marked Superseded", a.r, a.err)
	}
	b := <-bDone
	if b.err != nil || b.r.Value != want {
		t.Errorf("B's caller, waiting when the key was invalidated: %q (%s), %v; want %q", b.r.Value, b.r.Source, b.err, want)
	}
	for i, fc := range []*flight.Cache[string]{ca, cb, cc} {
		r, err := fc.Fetch(ctx, "k", constLoad(want))
		if err != nil || r.Value != want {
			t.Errorf("process %d after the invalidation: %q from %s, %v; want %q (never the superseded load's \"stale\")", i, r.Value, r.Source, err, want)
		}
	}
}

// invalidationReach: A and B hold the key in L1 (L1TTL an hour); B
// invalidates it (or the whole cache); A's L1 drops it within
// invalidationBound: A's next call loads again. The delay is logged.
func invalidationReach(t *testing.T, open func(t *testing.T) *claim.Client, all bool) {
	ctx := Context(t)
	name := cacheName()
	ca, cb := openCache(t, open(t), name), openCache(t, open(t), name)
	for _, fc := range []*flight.Cache[string]{ca, cb} {
		if v, err := fc.Get(ctx, "k", constLoad("v1")); err != nil || v != "v1" {
			t.Fatalf("Get: %q, %v", v, err)
		}
	}
	if r, err := ca.Fetch(ctx, "k", constLoad("v1")); err != nil || r.Source != flight.SourceL1 {
		t.Fatalf("A's second Fetch: %+v, %v; want an L1 hit", r, err)
	}
	// Idle a moment first, so that a poll backend's interval has grown to
	// its cap: the delay logged is the steady state's, not a fresh poll's.
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	var err error
	if all {
		err = cb.InvalidateAll(ctx)
	} else {
		err = cb.Invalidate(ctx, "k")
	}
	if err != nil {
		t.Fatalf("invalidate: %v", err)
	}
	for {
		r, err := ca.Fetch(ctx, "k", constLoad("v2"))
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if r.Source != flight.SourceL1 {
			if r.Value != "v2" {
				t.Errorf("A after the invalidation: %q from %s, want a new load (v2)", r.Value, r.Source)
			}
			t.Logf("invalidation reached the other process's L1 within %s", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > invalidationBound {
			t.Fatalf("A still serves the invalidated key from L1 %s after the invalidation", invalidationBound)
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			t.Fatal(ctx.Err())
		}
		time.Sleep(time.Millisecond)
	}
}

// FlightOn runs Flight with the clients of h (h.Open), each closed when
// its test ends.
func FlightOn(t *testing.T, h conformance.Harness) {
	Flight(t, func(t *testing.T) *claim.Client {
		c, err := h.Open(Context(t))
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	})
}
