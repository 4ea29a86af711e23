package redis_test

import (
	"context"
	"slices"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/internal/testserver"
)

// BenchmarkIdleFloor measures, with go-redis alone (no stampede), the
// floor under a hand-over after a hold: per op, after 20 ms idle, a PING
// round trip; after another 20 ms idle, a PUBLISH until a goroutine fed
// by another connection's receiver has the message (as a waiter is fed by
// the notifier); and a second PUBLISH at once (no idle). A hand-over cannot beat the idle PUBLISH: the release
// reaches the server, which pushes to the waiter. On a virtual machine
// whose vCPUs halt when idle, the idle figures are well above the
// back-to-back one (BENCHMARKS.md, issue 15).
func BenchmarkIdleFloor(b *testing.B) {
	srv := testserver.Shared(b, testserver.Redis)
	opt, err := goredis.ParseURL(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pub, sub := goredis.NewClient(opt), goredis.NewClient(opt)
	defer pub.Close()
	defer sub.Close()
	ps := sub.Subscribe(ctx, "idle-floor")
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		for {
			m, err := ps.ReceiveTimeout(ctx, time.Minute)
			if err != nil {
				return
			}
			if _, ok := m.(*goredis.Message); ok {
				got <- time.Now()
			}
		}
	}()
	var ping, idle, busy []time.Duration
	for b.Loop() {
		time.Sleep(20 * time.Millisecond)
		s := time.Now()
		if err := pub.Ping(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		ping = append(ping, time.Since(s))
		time.Sleep(20 * time.Millisecond)
		for _, d := range []*[]time.Duration{&idle, &busy} {
			s = time.Now()
			if err := pub.Publish(ctx, "idle-floor", "x").Err(); err != nil {
				b.Fatal(err)
			}
			<-got
			*d = append(*d, time.Since(s))
		}
	}
	p50 := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds())
	}
	b.ReportMetric(p50(ping), "ping-idle-p50-µs")
	b.ReportMetric(p50(idle), "publish-idle-p50-µs")
	b.ReportMetric(p50(busy), "publish-busy-p50-µs")
}
