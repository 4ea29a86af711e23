package conformance

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Bench runs the backend benchmarks as sub-benchmarks of b:
//
//   - ClaimRelease: uncontended TryClaim + Release on one key (ns/op).
//   - Handoff/hold=20ms, Handoff/hold=300ms: a holder holds the key for the
//     hold time and releases it while a waiter in another client blocks in
//     Acquire; reported as handoff-p50-µs and handoff-p99-µs, from the
//     start of Release to Acquire returning. Each op includes the hold, so
//     use -benchtime=Nx (e.g. 30x).
//   - HandOver/hold=20ms, HandOver/hold=300ms: the same with AcquireFair
//     on both sides (the release hands the lease over in the waiter's
//     wake-up); skipped without a driver.Queuer.
//   - FanOut100: one Release wakes 100 subscribers spread over two
//     clients; fanout-p50-µs is the time until the last one is woken.
//   - StoreSetGet: Set then Get of a 100-byte value (ns/op).
func Bench(b *testing.B, h Harness) {
	for _, bm := range Benchmarks(h) {
		b.Run(bm.Name, bm.F)
	}
}

// Benchmark is one of Bench's sub-benchmarks, for running them one at a
// time outside go test (testing.Benchmark), as the stampede bench command
// does to collect each one's result.
type Benchmark struct {
	Name string // as under Bench, e.g. "Handoff/hold=20ms"
	F    func(b *testing.B)
}

// Benchmarks returns Bench's sub-benchmarks, in Bench's order. They share
// one key namespace, unique to this call.
func Benchmarks(h Harness) []Benchmark {
	ctx := context.Background()
	open := func(b *testing.B) *claim.Client {
		c, err := h.Open(ctx)
		if err != nil {
			b.Fatalf("open client: %v", err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	ns := "bench/" + nsID() + "/"
	bms := []Benchmark{{"ClaimRelease", func(b *testing.B) {
		c := open(b)
		key := ns + "claim-release"
		ttl := max(c.Features().MinTTL, 10*time.Second)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			l, err := c.TryClaim(ctx, key, ttl)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Release(ctx, l); err != nil {
				b.Fatal(err)
			}
		}
	}}}
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		bms = append(bms, Benchmark{fmt.Sprintf("Handoff/hold=%s", hold), func(b *testing.B) { benchHandoff(b, open(b), open(b), ns, hold, false) }})
	}
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		bms = append(bms, Benchmark{fmt.Sprintf("HandOver/hold=%s", hold), func(b *testing.B) {
			holder := open(b)
			if _, ok := holder.Driver().(driver.Queuer); !ok {
				b.Skip("the driver has no fair queue (driver.Queuer)")
			}
			benchHandoff(b, holder, open(b), ns, hold, true)
		}})
	}
	bms = append(bms,
		Benchmark{"FanOut100", func(b *testing.B) { benchFanOut(b, open(b), open(b), open(b), ns) }},
		Benchmark{"StoreSetGet", func(b *testing.B) {
			c := open(b)
			key := ns + "store"
			val := make([]byte, 100)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := c.Set(ctx, key, val, time.Minute); err != nil {
					b.Fatal(err)
				}
				if _, err := c.Get(ctx, key); err != nil {
					b.Fatal(err)
				}
			}
		}})
	return bms
}

func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return float64(s[i].Nanoseconds()) / 1e3
}

// benchHandoff measures Release → the waiter holding the key: Acquire
// (wake-all), or with fair AcquireFair on both sides (the hand-over).
func benchHandoff(b *testing.B, holder, waiter *claim.Client, ns string, hold time.Duration, fair bool) {
	ctx := context.Background()
	key := fmt.Sprintf("%shandoff-%s-%v", ns, hold, fair)
	claimKey, acquire := holder.TryClaim, waiter.Acquire
	if fair {
		claimKey, acquire = holder.AcquireFair, waiter.AcquireFair
	}
	ttl := max(holder.Features().MinTTL, 30*time.Second)
	lat := make([]time.Duration, 0, b.N)
	// A polling driver's reads while its waiter waits (driver.PollCounter).
	pc, polls := waiter.Driver().(driver.PollCounter)
	var reads0 uint64
	if polls {
		reads0 = pc.PollReads()
	}
	var waited time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := claimKey(ctx, key, ttl)
		if err != nil {
			b.Fatalf("claim: %v", err)
		}
		type result struct {
			began, at  time.Time
			acq, relse error
		}
		res := make(chan result, 1)
		go func() {
			began := time.Now()
			wl, err := acquire(ctx, key, ttl)
			if err != nil {
				res <- result{acq: err}
				return
			}
			at := time.Now()
			res <- result{began: began, at: at, relse: waiter.Release(ctx, wl)}
		}()
		time.Sleep(hold)
		start := time.Now()
		if err := holder.Release(ctx, l); err != nil {
			b.Fatalf("Release: %v", err)
		}
		r := <-res
		if r.acq != nil {
			b.Fatalf("Acquire: %v", r.acq)
		}
		if r.relse != nil {
			b.Fatalf("waiter Release: %v", r.relse)
		}
		lat = append(lat, r.at.Sub(start))
		waited += r.at.Sub(r.began)
	}
	b.ReportMetric(percentile(lat, 0.5), "handoff-p50-µs")
	b.ReportMetric(percentile(lat, 0.99), "handoff-p99-µs")
	if polls && waited > 0 {
		b.ReportMetric(float64(pc.PollReads()-reads0)/waited.Seconds(), "poll-reads/s")
	}
}

func benchFanOut(b *testing.B, holder, w1, w2 *claim.Client, ns string) {
	ctx := context.Background()
	key := ns + "fanout"
	ttl := max(holder.Features().MinTTL, 30*time.Second)
	var subs []*claim.Subscription
	for i := 0; i < 100; i++ {
		c := w1
		if i%2 == 1 {
			c = w2
		}
		s, err := c.Subscribe(ctx, key)
		if err != nil {
			b.Fatalf("Subscribe: %v", err)
		}
		defer s.Close()
		subs = append(subs, s)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l, err := holder.TryClaim(ctx, key, ttl)
		if err != nil {
			b.Fatalf("TryClaim: %v", err)
		}
		for _, s := range subs { // drop wake-ups left from before
			select {
			case <-s.C():
			default:
			}
		}
		start := time.Now()
		if err := holder.Release(ctx, l); err != nil {
			b.Fatalf("Release: %v", err)
		}
		for j, s := range subs {
			select {
			case <-s.C():
			case <-time.After(wakeBound):
				b.Fatalf("subscriber %d not woken within %s", j, wakeBound)
			}
		}
		lat = append(lat, time.Since(start))
	}
	b.ReportMetric(percentile(lat, 0.5), "fanout-p50-µs")
}
