package flight

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
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
	c := benchCache(b, &Options[string]{})
	ctx := context.Background()
	if _, err := c.Get(ctx, "apple inc", constLoad); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Get(ctx, "apple inc", constLoad)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c.Get(ctx, "apple inc", constLoad)
			}
		})
	})
	b.Run("unnormalised", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c.Get(ctx, "Apple Inc.", constLoad)
		}
	})
}

// BenchmarkOtterGet: the raw L1 library, for comparison: bounded; bounded
// with a per-entry TTL as flight configures it (otter reads the system
// clock on every Get); and the same on otter's 1 ms CoarseClock, which
// flight does not use (BenchmarkCoarseClockIdle says why).
func BenchmarkOtterGet(b *testing.B) {
	coarse := otter.NewCoarseClock(time.Millisecond)
	defer coarse.Stop()
	for name, opt := range map[string]*otter.Options[string, string]{
		"size":            {MaximumSize: 10000},
		"size+ttl":        {MaximumSize: 10000, ExpiryCalculator: otter.ExpiryWriting[string, string](time.Minute)},
		"size+ttl+coarse": {MaximumSize: 10000, ExpiryCalculator: otter.ExpiryWriting[string, string](time.Minute), Clock: coarse},
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
	c := benchCache(b, &Options[string]{L1Size: 1 << 20})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		key := "key " + strconv.Itoa(i)
		var wg sync.WaitGroup
		for range herdSize {
			wg.Go(func() { c.Get(ctx, key, constLoad) })
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

// BenchmarkMissSplit splits a coalesced miss into its two parts, for
// flight and for x/sync/singleflight alike. Each op runs a "herd" of one
// caller on a new key, then a herd of herdSize callers on another new
// key (each caller on a goroutine of its own, all started at once; the
// loader returns at once). It reports
//
//   - ns/alone: the herd of one, the cost of a miss paid once per key
//     (flight: the in-process flight, L2 read, subscribe, claim+read,
//     load, commit+release on the in-process backend, L1 fill;
//     singleflight: one Do);
//   - ns/caller: (herd − alone) / (herdSize − 1), what each caller
//     beyond the first adds: its goroutine, and then joining the load
//     in progress or, if it comes after the load, an L1 hit (flight) or
//     a Do of its own (singleflight, which keeps no result).
//
// BenchmarkJoin isolates the join itself.
func BenchmarkMissSplit(b *testing.B) {
	b.Run("flight", func(b *testing.B) {
		c := benchCache(b, &Options[string]{L1Size: 1 << 20})
		ctx := context.Background()
		benchSplit(b, func(key string) { c.Get(ctx, key, constLoad) })
	})
	b.Run("singleflight", func(b *testing.B) {
		var g singleflight.Group
		benchSplit(b, func(key string) {
			g.Do(key, func() (any, error) { return "value", nil })
		})
	})
}

func benchSplit(b *testing.B, get func(key string)) {
	herd := func(key string, n int) time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() { get(key) })
		}
		wg.Wait()
		return time.Since(start)
	}
	b.ReportAllocs()
	var alone, crowd time.Duration
	i := 0
	for b.Loop() {
		i++
		alone += herd("alone "+strconv.Itoa(i), 1)
		crowd += herd("herd "+strconv.Itoa(i), herdSize)
	}
	n := float64(b.N)
	b.ReportMetric(float64(alone.Nanoseconds())/n, "ns/alone")
	b.ReportMetric(float64((crowd-alone).Nanoseconds())/n/(herdSize-1), "ns/caller")
}

// BenchmarkJoin measures what a caller pays to join a load another
// caller started, in flight and in x/sync/singleflight alike: the part of
// a coalesced miss the two have in common. The callers are long-lived
// goroutines (like a server's), so no goroutine start or stack growth is
// counted. Each op is two rounds on new keys. In each, a first caller
// starts the load, which blocks on a gate; once it runs, the round hands
// the key to herdSize − 1 joiners (or to none), waits until all have
// it and then 30 µs more (so that they are inside Get or Do, waiting),
// opens the gate, and waits for everyone. ns/joiner is (round with
// joiners − round without) / (herdSize − 1): the hand-off of the key to
// the joiner (the same for both), the join, the wake-up and the return of
// the shared result. joined is the fraction of joiners that did join
// (Result.Shared; singleflight's shared): 1 means the figure is all
// joins.
func BenchmarkJoin(b *testing.B) {
	b.Run("flight", func(b *testing.B) {
		c := benchCache(b, &Options[string]{L1Size: 1 << 20})
		ctx := context.Background()
		benchJoin(b, func(load func()) func(string) bool {
			lf := func(context.Context, string) (string, error) {
				load()
				return "value", nil
			}
			return func(key string) bool {
				r, _ := c.Fetch(ctx, key, lf)
				return r.Shared
			}
		})
	})
	b.Run("singleflight", func(b *testing.B) {
		var g singleflight.Group
		benchJoin(b, func(load func()) func(string) bool {
			fn := func() (any, error) {
				load()
				return "value", nil
			}
			return func(key string) bool {
				_, _, shared := g.Do(key, fn)
				return shared
			}
		})
	})
}

// benchJoin runs BenchmarkJoin with the get function that mk makes: a
// caller of key whose load (if it is the one to run it) calls load.
func benchJoin(b *testing.B, mk func(load func()) func(key string) (shared bool)) {
	var (
		wg              sync.WaitGroup
		arrived, joined atomic.Int32
		started, gate   chan struct{}
		leader          = make(chan string)
		joiners         = make([]chan string, herdSize-1)
	)
	get := mk(func() {
		// A joiner that arrived too late (descheduled past the gate)
		// loads again: let it, and count it as not joined.
		select {
		case <-started:
		default:
			close(started)
		}
		<-gate
	})
	var workers sync.WaitGroup
	workers.Go(func() {
		for key := range leader {
			get(key)
			wg.Done()
		}
	})
	for i := range joiners {
		joiners[i] = make(chan string)
		workers.Go(func() {
			for key := range joiners[i] {
				arrived.Add(1)
				if get(key) {
					joined.Add(1)
				}
				wg.Done()
			}
		})
	}
	defer func() {
		close(leader)
		for _, ch := range joiners {
			close(ch)
		}
		workers.Wait()
	}()
	round := func(key string, n int) time.Duration {
		started, gate = make(chan struct{}), make(chan struct{})
		arrived.Store(0)
		start := time.Now()
		wg.Add(1 + n)
		leader <- key
		<-started
		for _, ch := range joiners[:n] {
			ch <- key
		}
		for arrived.Load() < int32(n) {
			runtime.Gosched()
		}
		for t := time.Now(); time.Since(t) < 30*time.Microsecond; {
			runtime.Gosched()
		}
		close(gate)
		wg.Wait()
		return time.Since(start)
	}
	b.ReportAllocs()
	var alone, crowd time.Duration
	i := 0
	for b.Loop() {
		i++
		alone += round("alone "+strconv.Itoa(i), 0)
		crowd += round("herd "+strconv.Itoa(i), herdSize-1)
	}
	n := float64(b.N)
	b.ReportMetric(float64((crowd-alone).Nanoseconds())/n/(herdSize-1), "ns/joiner")
	b.ReportMetric(float64(joined.Load())/n/(herdSize-1), "joined")
}

// BenchmarkL2Hit: L1 off; every Get reads and decodes the in-process L2.
func BenchmarkL2Hit(b *testing.B) {
	c := benchCache(b, &Options[string]{L1Size: -1})
	ctx := context.Background()
	if _, err := c.Get(ctx, "apple inc", constLoad); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		c.Get(ctx, "apple inc", constLoad)
	}
}

// BenchmarkCoarseClockIdle: what a 1 ms coarse clock costs a process
// that does nothing else: per op, 100 ms of sleep; cpu-%: the process's
// CPU time (getrusage) over that time, with no clock goroutine (none),
// with otter's CoarseClock running (coarse), and with an open Cache whose
// L1 clock went coarse in a burst of hits just before (flight: its
// goroutine stops once the hits stop, so it should cost what none does).
func BenchmarkCoarseClockIdle(b *testing.B) {
	for _, mode := range []string{"none", "coarse", "flight"} {
		b.Run(mode, func(b *testing.B) {
			switch mode {
			case "coarse":
				c := otter.NewCoarseClock(time.Millisecond)
				defer c.Stop()
			case "flight":
				c := benchCache(b, &Options[string]{})
				ctx := context.Background()
				for c.clock.now.Load() == 0 {
					for range 10000 {
						c.Get(ctx, "apple inc", constLoad)
					}
				}
				time.Sleep(3 * clockWindow)
				if c.clock.now.Load() != 0 {
					b.Fatal("L1's clock still coarse after the hits stopped")
				}
			}
			var cpu, wall time.Duration
			for b.Loop() {
				c0, t0 := processCPU(), time.Now()
				time.Sleep(100 * time.Millisecond)
				cpu += processCPU() - c0
				wall += time.Since(t0)
			}
			b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu-%")
		})
	}
}

// processCPU is the process's user + system CPU time.
func processCPU() time.Duration {
	var r syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &r); err != nil {
		return 0
	}
	return time.Duration(r.Utime.Nano() + r.Stime.Nano())
}

// BenchmarkClockAtRate: what L1's clock (clock.go) costs and saves at a
// steady rate of L1 hits: per op, one second of hits paced in bursts
// once a millisecond; cpu-%: the process's CPU time over the wall time,
// with the clock as built (coarse above clockBusyRate) and held precise.
// Where "adaptive" is not below "precise", clockBusyRate is too low.
func BenchmarkClockAtRate(b *testing.B) {
	for _, rate := range []int{100_000, 300_000, 500_000, 1_000_000, 2_000_000} {
		for _, mode := range []string{"precise", "adaptive"} {
			b.Run(fmt.Sprintf("hits=%dk/%s", rate/1000, mode), func(b *testing.B) {
				c := benchCache(b, &Options[string]{})
				if mode == "precise" {
					c.clock.rate = math.MaxInt64 / uint64(time.Second)
				}
				ctx := context.Background()
				if _, err := c.Get(ctx, "apple inc", constLoad); err != nil {
					b.Fatal(err)
				}
				var cpu, wall time.Duration
				for b.Loop() {
					c0, t0 := processCPU(), time.Now()
					for n := 0; time.Since(t0) < time.Second; {
						// Hits due by now, then sleep to the next millisecond.
						due := int(time.Since(t0).Nanoseconds() * int64(rate) / int64(time.Second))
						for ; n < due; n++ {
							c.Get(ctx, "apple inc", constLoad)
						}
						time.Sleep(time.Millisecond)
					}
					cpu += processCPU() - c0
					wall += time.Since(t0)
				}
				b.ReportMetric(100*cpu.Seconds()/wall.Seconds(), "cpu-%")
			})
		}
	}
}
