package backendtest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// PollOptions are the poller options the poll benchmarks use: poll_min
// and poll_max from the environment variables STAMPEDE_POLL_MIN and
// STAMPEDE_POLL_MAX (unset: the defaults).
func PollOptions() *driver.PollOptions {
	env := func(name string) time.Duration {
		d, _ := time.ParseDuration(os.Getenv(name))
		return d
	}
	return &driver.PollOptions{Min: env("STAMPEDE_POLL_MIN"), Max: env("STAMPEDE_POLL_MAX")}
}

// PollHandoff is conformance's Handoff benchmark (a holder holds the key
// for hold, then releases it while a waiter in another client blocks in
// Acquire; from the start of Release to Acquire returning) with the
// waiter's polls counted, for holds of 20 and 300 ms: reported as
// handoff-p50-µs, polls/s (poll reads of the waiting process per second
// of waiting, Subscribe's first read included) and polls/wait. open opens
// a client; countPolls replaces the waiter's poller with one (of
// PollOptions) that calls poll on every read.
func PollHandoff(b *testing.B, open func(testing.TB) *claim.Client, countPolls func(waiter *claim.Client, poll func())) {
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		b.Run("hold="+hold.String(), func(b *testing.B) {
			ctx := context.Background()
			holder, waiter := open(b), open(b)
			var polls atomic.Int64
			countPolls(waiter, func() { polls.Add(1) })
			key := fmt.Sprintf("poll-handoff-%s-%d", hold, time.Now().UnixNano())
			lat := make([]time.Duration, 0, b.N)
			var waited time.Duration
			b.ResetTimer()
			for range b.N {
				l, err := holder.TryClaim(ctx, key, 30*time.Second)
				if err != nil {
					b.Fatal(err)
				}
				type result struct {
					began, at time.Time
					err       error
				}
				res := make(chan result, 1)
				go func() {
					began := time.Now()
					wl, err := waiter.Acquire(ctx, key, 30*time.Second)
					at := time.Now()
					if err == nil {
						err = waiter.Release(ctx, wl)
					}
					res <- result{began, at, err}
				}()
				time.Sleep(hold)
				start := time.Now()
				if err := holder.Release(ctx, l); err != nil {
					b.Fatal(err)
				}
				r := <-res
				if r.err != nil {
					b.Fatal(r.err)
				}
				lat = append(lat, r.at.Sub(start))
				waited += r.at.Sub(r.began)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "handoff-p50-µs")
			b.ReportMetric(float64(polls.Load())/waited.Seconds(), "polls/s")
			b.ReportMetric(float64(polls.Load())/float64(b.N), "polls/wait")
		})
	}
}

// Takeover: a holder claims a key for a second and never releases it (as
// if killed); a waiter in another client, waiting from 200 ms after the
// claim, takes it over. Reported as takeover-after-deadline-ms: from the
// dead holder's local Deadline to the waiter's Acquire returning.
func Takeover(b *testing.B, open func(testing.TB) *claim.Client) {
	ctx := context.Background()
	holder, waiter := open(b), open(b)
	var over time.Duration
	for i := range b.N {
		key := fmt.Sprintf("takeover-%d-%d", time.Now().UnixNano(), i)
		l, err := holder.TryClaim(ctx, key, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		wl, err := waiter.Acquire(ctx, key, time.Second)
		if err != nil {
			b.Fatal(err)
		}
		over += time.Since(l.Deadline)
		if wl.Token <= l.Token {
			b.Errorf("takeover token %d not above the dead holder's %d", wl.Token, l.Token)
		}
		if err := waiter.Release(ctx, wl); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(over.Microseconds())/1e3/float64(b.N), "takeover-after-deadline-ms")
}
