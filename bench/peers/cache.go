package main

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"

	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/flight"
)

// The in-process comparisons: flight's L1 hit against the raw L1 library
// (otter, configured as flight configures it), and flight's coalesced miss
// against x/sync/singleflight.

type cacheBench struct {
	name  string
	short string
	ours  bool
	f     func(b *testing.B)
}

func constLoad(context.Context, string) (string, error) { return "value", nil }

func flightCache(b *testing.B, opt *flight.Options[string]) *flight.Cache[string] {
	be, err := memory.New(nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	c, err := flight.New(be, opt)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Close()
		be.Close()
	})
	return c
}

// herdSize callers miss one new key at once in the coalesced-miss
// benchmarks.
const herdSize = 16

var l1Benches = []cacheBench{
	{"flight Get, L1 hit", "flight L1 hit", true, func(b *testing.B) {
		c := flightCache(b, &flight.Options[string]{})
		ctx := context.Background()
		if _, err := c.Get(ctx, "apple inc", constLoad); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			c.Get(ctx, "apple inc", constLoad)
		}
	}},
	{"otter GetIfPresent (size + per-entry expiry, as flight configures it)", "otter Get", false, func(b *testing.B) {
		o := otter.Must(&otter.Options[string, string]{
			MaximumSize: 10000,
			ExpiryCalculator: otter.ExpiryWritingFunc(func(otter.Entry[string, string]) time.Duration {
				return time.Minute
			}),
		})
		defer o.StopAllGoroutines()
		o.Set("apple inc", "value")
		b.ReportAllocs()
		b.ResetTimer()
		for b.Loop() {
			o.GetIfPresent("apple inc")
		}
	}},
}

var missBenches = []cacheBench{
	{"flight Get, coalesced miss (16 callers, new key, instant loader, in-process backend: L2 read, subscribe, claim, load, commit, release)",
		"flight miss", true, flightMiss(0)},
	{"x/sync/singleflight Do (16 callers, new key, instant function; no cache, no backend)", "singleflight", false, singleflightMiss(0)},
	{"flight Get, coalesced miss, 1 ms loader", "flight miss 1ms", true, flightMiss(time.Millisecond)},
	{"x/sync/singleflight Do, 1 ms function", "singleflight 1ms", false, singleflightMiss(time.Millisecond)},
}

func sleepy(d time.Duration) {
	if d > 0 {
		time.Sleep(d)
	}
}

func flightMiss(d time.Duration) func(b *testing.B) {
	return func(b *testing.B) {
		load := func(context.Context, string) (string, error) {
			sleepy(d)
			return "value", nil
		}
		c := flightCache(b, &flight.Options[string]{L1Size: 1 << 20})
		ctx := context.Background()
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			key := "key " + strconv.Itoa(i)
			var wg sync.WaitGroup
			for range herdSize {
				wg.Go(func() { c.Get(ctx, key, load) })
			}
			wg.Wait()
		}
	}
}

func singleflightMiss(d time.Duration) func(b *testing.B) {
	return func(b *testing.B) {
		var g singleflight.Group
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			key := "key " + strconv.Itoa(i)
			var wg sync.WaitGroup
			for range herdSize {
				wg.Go(func() {
					g.Do(key, func() (any, error) {
						sleepy(d)
						return "value", nil
					})
				})
			}
			wg.Wait()
		}
	}
}
