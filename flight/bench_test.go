package flight

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
	"golang.org/x/sync/singleflight"

	"github.com/stampede-go/stampede/claim/memory"
)

func benchCache(b *testing.B, opt *Options[string]) *Cache[string] {
	be, err := memory.New(nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { be.Close() })
	return openCache(b, be, opt)
}

func constLoad(context.Context, string) (string, error) { return "value", nil }

// BenchmarkL1Hit: a Get answered by L1 (key already normal).
func BenchmarkL1Hit(b *testing.B) {
	c := benchCache(b, &Options[string]{Loader: constLoad})
	ctx := context.Background()
	if _, err := c.Get(ctx, "apple inc", nil); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Get(ctx, "apple inc", nil)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Get(ctx, "apple inc", nil)
			}
		})
	})
	b.Run("unnormalised", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Get(ctx, "Apple Inc.", nil)
		}
	})
}

// BenchmarkOtterGet: the raw L1 library, for comparison: bounded, then
// bounded with a per-entry TTL as flight configures it.
func BenchmarkOtterGet(b *testing.B) {
	for name, opt := range map[string]*otter.Options[string, string]{
		"size":     {MaximumSize: 10000},
		"size+ttl": {MaximumSize: 10000, ExpiryCalculator: otter.ExpiryWriting[string, string](time.Minute)},
	} {
		b.Run(name, func(b *testing.B) {
			o := otter.Must(opt)
			defer o.StopAllGoroutines()
			o.Set("apple inc", "value")
			b.ReportAllocs()
			for b.Loop() {
				o.GetIfPresent("apple inc")
			}
		})
	}
}

const herdSize = 16

// BenchmarkCoalescedMiss: per op, a new key missed by herdSize concurrent
// callers of one process: one flight, one L2 read, claim, load, commit,
// release on the in-process backend.
func BenchmarkCoalescedMiss(b *testing.B) {
	c := benchCache(b, &Options[string]{Loader: constLoad, L1Size: 1 << 20})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		key := "key " + strconv.Itoa(i)
		var wg sync.WaitGroup
		for range herdSize {
			wg.Go(func() { c.Get(ctx, key, nil) })
		}
		wg.Wait()
	}
}

// BenchmarkSingleflight: x/sync/singleflight under the same herd, for
// comparison (no cache, no backend).
func BenchmarkSingleflight(b *testing.B) {
	var g singleflight.Group
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		key := "key " + strconv.Itoa(i)
		var wg sync.WaitGroup
		for range herdSize {
			wg.Go(func() { g.Do(key, func() (any, error) { return "value", nil }) })
		}
		wg.Wait()
	}
}

// BenchmarkL2Hit: L1 off; every Get reads and decodes the in-process L2.
func BenchmarkL2Hit(b *testing.B) {
	c := benchCache(b, &Options[string]{Loader: constLoad, L1Size: -1})
	ctx := context.Background()
	if _, err := c.Get(ctx, "apple inc", nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Get(ctx, "apple inc", nil)
	}
}
