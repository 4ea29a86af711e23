package flight

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stampede-go/stampede/claim/memory"
)

// TestL1ClockCoarseOnlyWhileBusy: the clock starts its goroutine only
// once hits reach clockBusyRate, stops it when they fall below, stops it
// (and Tick's ticker) on Close, and its readings never go back nor lag
// the time by more than clockResolution.
func TestL1ClockCoarseOnlyWhileBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hits atomic.Uint64
		c := newL1Clock(hits.Load)
		var last int64
		read := func(what string) int64 {
			t.Helper()
			n, p := c.NowNano(), c.precise()
			if n < last {
				t.Fatalf("%s: reading %d after %d: the clock went back", what, n, last)
			}
			if lag := time.Duration(p - n); lag < 0 || lag > clockResolution {
				t.Fatalf("%s: reading lags the time by %v, want within [0, %v]", what, lag, clockResolution)
			}
			last = n
			return n
		}
		running := func() bool {
			synctest.Wait()
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.running
		}
		// step advances the time by one clockWindow at rate hits a second,
		// reading the clock once a millisecond.
		step := func(rate uint64) {
			for range clockWindow / time.Millisecond {
				time.Sleep(time.Millisecond)
				hits.Add(rate / 1000)
				read("step")
			}
		}

		step(clockBusyRate / 2)
		step(clockBusyRate / 2)
		if running() || c.now.Load() != 0 {
			t.Fatal("coarse at half clockBusyRate")
		}
		step(clockBusyRate * 2)
		if !running() {
			t.Fatal("not coarse after a window at twice clockBusyRate")
		}
		step(clockBusyRate * 2)
		step(clockBusyRate * 2)
		if !running() {
			t.Fatal("coarse clock stopped while busy")
		}
		n := read("coarse")
		if n2 := c.NowNano(); n2 != n {
			t.Fatalf("coarse clock moved between two reads at one instant: %d then %d", n, n2)
		}
		step(0)
		step(0)
		if running() || c.now.Load() != 0 {
			t.Fatal("still coarse after two idle windows")
		}
		// Busy again, then Close: the goroutine ends with it.
		step(clockBusyRate * 2)
		step(clockBusyRate * 2)
		if !running() {
			t.Fatal("not coarse again after a busy window")
		}
		tick := c.Tick(time.Second) // otter's clean-up ticker
		c.Close()
		if c.now.Load() != 0 {
			t.Fatal("coarse after Close")
		}
		time.Sleep(3 * time.Second)
		select {
		case <-tick:
			t.Fatal("Tick's ticker still ticks after Close")
		default:
		}
		step(clockBusyRate * 2)
		step(clockBusyRate * 2)
		if running() {
			t.Fatal("coarse again after Close")
		}
	})
}

// TestL1ClockCache: a busy Cache's L1 runs on the coarse clock, its
// entries still expire at their L1 TTL (within the clock's resolution),
// and Close leaves no clock goroutine (TestMain's goleak check).
func TestL1ClockCache(t *testing.T) {
	be, err := memory.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	const ttl = 50 * time.Millisecond
	c := openCache(t, be, &Options[string]{L1TTL: ttl})
	c.clock.rate = 10_000 // reachable under the race detector
	ctx := context.Background()
	var loads atomic.Int64
	load := func(context.Context, string) (string, error) { loads.Add(1); return "v", nil }
	hit := func(n int) {
		for range n {
			if _, err := c.Get(ctx, "busy", load); err != nil {
				t.Fatal(err)
			}
		}
	}
	hit(1)
	deadline := time.Now().Add(10 * time.Second)
	for c.clock.now.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("L1's clock not coarse after 10 s of hits")
		}
		hit(1000)
	}
	if n := loads.Load(); n != 1 {
		t.Fatalf("%d loads while L1 held the value", n)
	}
	set := time.Now()
	if _, err := c.Get(ctx, "k", load); err != nil {
		t.Fatal(err)
	}
	if e, _ := c.l1.GetIfPresent("k"); e == nil {
		t.Fatal("the value is not in L1")
	}
	// Keep the clock coarse until k's L1 entry is gone: it must end,
	// about ttl after it was set (a bound with room for a loaded machine,
	// whose clock goroutine may run late).
	coarse := 0
	for {
		hit(1000)
		if c.clock.now.Load() != 0 {
			coarse++
		}
		if e, _ := c.l1.GetIfPresent("k"); e == nil {
			break
		}
		if time.Since(set) > ttl+2*time.Second {
			t.Fatalf("the L1 entry outlived its L1 TTL (%v) by 2 s", ttl)
		}
	}
	// Ends may come early by the clock's lag when the entry was set (up
	// to its resolution, more when its goroutine ran late): only a gross
	// error is one.
	if gone := time.Since(set); gone < ttl/2 {
		t.Fatalf("the L1 entry ended %v after it was set, long before its L1 TTL (%v)", gone, ttl)
	}
	if coarse == 0 {
		t.Log("the clock was never coarse during the wait (a slow machine)")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if c.clock.now.Load() != 0 {
		t.Fatal("coarse after Close")
	}
}
