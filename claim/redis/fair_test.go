package redis_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// queued waits until key's fair queue (on the default prefix) holds n
// entries.
func queued(t *testing.T, admin *goredis.Client, key string, n int64) {
	t.Helper()
	q := redis.NamesForTest(redis.DefaultPrefix, key)[4]
	eventually(t, fmt.Sprintf("%d waiters never queued", n), func() bool {
		got, err := admin.LLen(context.Background(), q).Result()
		if err != nil {
			t.Fatal(err)
		}
		return got == n
	})
}

// TestHandOffCostsWaiterNothing: on a server of the test's own, counted
// by the server itself (INFO commandstats, commands run by scripts
// included), a fair hand-over runs one script, the holder's HandOff,
// from the moment the waiter is queued until its AcquireFair has
// returned: the grant reaches the waiter in its wake-up, and the waiter
// runs no claim, no Enqueue, no GET of its own. The same hand-over with
// Acquire costs the waiter its own claim script (the contrast shows the
// count would catch one).
func TestHandOffCostsWaiterNothing(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Redis, nil)
	ctx := backendtest.Context(t)
	holder, waiter := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()

	// scripts returns how many scripts the server ran to the end
	// (EVAL, EVALSHA: a NOSCRIPT is a failed call, which the EVAL that
	// follows it repeats) and how many INCRs (of fence counters: one per
	// claim or grant) they ran.
	scripts := func() (n, incr int64) {
		info, err := admin.Info(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(info, "\n") {
			name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok || !strings.HasPrefix(name, "cmdstat_") {
				continue
			}
			stats := map[string]int64{}
			for kv := range strings.SplitSeq(rest, ",") {
				k, v, _ := strings.Cut(kv, "=")
				stats[k], _ = strconv.ParseInt(v, 10, 64)
			}
			done := stats["calls"] - stats["failed_calls"]
			switch strings.TrimPrefix(name, "cmdstat_") {
			case "eval", "evalsha":
				n += done
			case "incr":
				incr += done
			}
		}
		return n, incr
	}
	for _, fair := range []bool{true, false} {
		key := fmt.Sprintf("handoff-cost/fair=%v", fair)
		acquire, want := waiter.Acquire, int64(2) // the Release, the waiter's claim
		if fair {
			acquire, want = waiter.AcquireFair, 1 // the HandOff
		}
		var l0 claim.Lease
		var err error
		if fair {
			l0, err = holder.AcquireFair(ctx, key, time.Minute)
		} else {
			l0, err = holder.TryClaim(ctx, key, time.Minute)
		}
		if err != nil {
			t.Fatal(err)
		}
		// The waiter subscribes and then queues (AcquireFair: one
		// Enqueue), or claims, subscribes and claims again (Acquire: two
		// TryClaims), held.
		base, _ := scripts()
		before := int64(2)
		if fair {
			before = 1
		}
		got := make(chan claim.Lease, 1)
		go func() {
			l, err := acquire(ctx, key, time.Minute)
			if err != nil {
				t.Errorf("fair=%v: %v", fair, err)
			}
			got <- l
		}()
		eventually(t, "the waiter never tried to claim", func() bool {
			n, _ := scripts()
			return n == base+before
		})
		if fair {
			queued(t, admin, key, 1)
		}
		s0, i0 := scripts()
		if err := holder.Release(ctx, l0); err != nil {
			t.Fatal(err)
		}
		l := <-got
		s1, i1 := scripts()
		if s1-s0 != want || i1-i0 != 1 {
			t.Errorf("fair=%v: the server ran %d scripts and %d INCRs for the hand-over, want %d and 1", fair, s1-s0, i1-i0, want)
		}
		if l.Token <= l0.Token {
			t.Errorf("fair=%v: token %d <= the previous holder's %d", fair, l.Token, l0.Token)
		}
		if _, err := waiter.Extend(ctx, l, time.Minute); err != nil {
			t.Errorf("fair=%v: Extend of the lease handed over: %v", fair, err)
		}
		if err := waiter.Release(ctx, l); err != nil {
			t.Errorf("fair=%v: Release: %v", fair, err)
		}
	}
}

// TestGrantsReconnect: when the pub/sub connection drops, the driver
// calls grant with a zero Lease (a grant may have been missed), and again
// once it has subscribed again; grants then reach it as before.
func TestGrantsReconnect(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Redis, nil)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, srv.URL())
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	q := c.Driver().(driver.Queuer)
	key := "grants/reconnect"
	got := make(chan driver.Lease, 16)
	if err := q.SubscribeGrants(ctx, key, func(l driver.Lease) { got <- l }); err != nil {
		t.Fatal(err)
	}
	defer q.UnsubscribeGrants(key)
	next := func(what string) driver.Lease {
		t.Helper()
		select {
		case l := <-got:
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no call of grant within 10s", what)
			return driver.Lease{}
		}
	}
	if n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d killed, %v", n, err)
	}
	for _, what := range []string{"connection lost", "subscribed again"} {
		if l := next(what); l != (driver.Lease{}) {
			t.Fatalf("%s: grant(%+v), want a zero Lease", what, l)
		}
	}
	l0, err := q.Enqueue(ctx, key, "holder-0", time.Minute)
	if err != nil {
		t.Fatalf("Enqueue of a free key: %v", err)
	}
	if _, err := q.Enqueue(ctx, key, "holder-1", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("Enqueue of a held key: %v, want ErrHeld", err)
	}
	next1, err := q.HandOff(ctx, l0)
	if err != nil || next1.Holder != "holder-1" {
		t.Fatalf("HandOff: %+v, %v", next1, err)
	}
	if g := next("grant after the reconnect"); g.Holder != "holder-1" || g.Token != next1.Token || g.Key != key || g.TTL != time.Minute {
		t.Errorf("grant %+v, want %+v", g, next1)
	}
	if _, err := q.HandOff(ctx, next1); err != nil {
		t.Fatal(err)
	}
}

// TestQueueExpires: the queue's keys live no longer than their latest
// entry, and an empty queue leaves no key behind.
func TestQueueExpires(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, srv.URL())
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	q := c.Driver().(driver.Queuer)
	key := fmt.Sprintf("queue-expires/%d", time.Now().UnixNano())
	names := redis.NamesForTest(redis.DefaultPrefix, key)[4:6]
	l0, err := q.Enqueue(ctx, key, "h0", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i, ttl := range []time.Duration{2 * time.Second, 5 * time.Second, 3 * time.Second} {
		if _, err := q.Enqueue(ctx, key, fmt.Sprint("h", i+1), ttl); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("Enqueue: %v, want ErrHeld", err)
		}
	}
	for _, n := range names {
		pttl, err := admin.PTTL(ctx, n).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pttl <= 4*time.Second || pttl > 5*time.Second {
			t.Errorf("%s: PTTL %s, want the latest entry's (5s)", n, pttl)
		}
	}
	for i := range 3 {
		if err := q.Dequeue(ctx, key, fmt.Sprint("h", i+1)); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := admin.Exists(ctx, names...).Result(); err != nil || n != 0 {
		t.Errorf("%d queue keys left after the last Dequeue (%v), want 0", n, err)
	}
	if _, err := q.HandOff(ctx, l0); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkHandOver: a holder holds the key for hold (20 ms, then 300
// ms) and releases it while a waiter in another client blocks, in
// AcquireFair (fair: the release is a HandOff whose grant is pushed to
// the waiter) or in Acquire (acquire: the release wakes the waiter,
// which then claims). The two modes take turns, round by round, on keys
// of their own, so that both meet the same moments of a shared machine,
// and so does a third, the floor of any pushed hand-over: after the same
// idle time, Notify (a bare PUBLISH) in the holder's client until the
// wake-up of a Subscribe in the waiter's (the same pub/sub path, no
// script). Reported: fair-p50-ms, acquire-p50-ms, notify-p50-ms (and
// p99), from the start of the holder's Release (Notify) to the waiter's
// call returning (its wake-up). Each op is one round of the three, holds
// included: use -benchtime=Nx.
func BenchmarkHandOver(b *testing.B) {
	srv := testserver.Shared(b, testserver.Redis)
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		b.Run("hold="+hold.String(), func(b *testing.B) {
			holder, waiter := backendtest.Open(b, srv.URL()), backendtest.Open(b, srv.URL())
			ns := fmt.Sprintf("handover/%s/%d/", hold, time.Now().UnixNano())
			sub, err := waiter.Subscribe(context.Background(), ns+"notify")
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			var fair, acquire, notify []time.Duration
			b.ResetTimer()
			for range b.N {
				fair = append(fair, handOver(b, holder.AcquireFair, waiter.AcquireFair, holder, waiter, ns+"fair", hold))
				acquire = append(acquire, handOver(b, holder.TryClaim, waiter.Acquire, holder, waiter, ns+"acquire", hold))
				time.Sleep(hold)
				start := time.Now()
				if err := holder.Notify(context.Background(), ns+"notify"); err != nil {
					b.Fatal(err)
				}
				<-sub.C()
				notify = append(notify, time.Since(start))
			}
			b.StopTimer()
			report := func(lat []time.Duration, name string) {
				slices.Sort(lat)
				ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }
				b.ReportMetric(ms(lat[len(lat)/2]), name+"-p50-ms")
				b.ReportMetric(ms(lat[(len(lat)-1)*99/100]), name+"-p99-ms")
			}
			report(fair, "fair")
			report(acquire, "acquire")
			report(notify, "notify")
		})
	}
}

// handOver is one round of BenchmarkHandOver: the holder takes key with
// take, the waiter blocks in wait, the holder releases after hold; it
// returns the time from the start of the Release to wait returning.
func handOver(b *testing.B, take, wait func(context.Context, string, time.Duration) (claim.Lease, error), holder, waiter *claim.Client, key string, hold time.Duration) time.Duration {
	ctx := context.Background()
	l, err := take(ctx, key, 30*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	type result struct {
		at  time.Time
		err error
	}
	res := make(chan result, 1)
	go func() {
		wl, err := wait(ctx, key, 30*time.Second)
		at := time.Now()
		if err == nil {
			err = waiter.Release(ctx, wl)
		}
		res <- result{at, err}
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
	return r.at.Sub(start)
}

// TestQueueDeadEntries: an entry that expired is skipped wherever it
// stands in the queue, and its holder enqueuing again goes to the tail
// (it lost its place), as if the entry had been dropped when it expired.
func TestQueueDeadEntries(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, srv.URL())
	q := c.Driver().(driver.Queuer)
	key := fmt.Sprintf("queue-dead/%d", time.Now().UnixNano())
	l, err := q.Enqueue(ctx, key, "h0", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	short := 100 * time.Millisecond
	for _, w := range []struct {
		holder string
		ttl    time.Duration
	}{{"h1", short}, {"h2", time.Minute}, {"h3", short}, {"h4", time.Minute}} {
		if _, err := q.Enqueue(ctx, key, w.holder, w.ttl); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("Enqueue(%s): %v, want ErrHeld", w.holder, err)
		}
	}
	time.Sleep(short + 50*time.Millisecond)
	// h1 comes back: behind h4 now.
	if _, err := q.Enqueue(ctx, key, "h1", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("Enqueue(h1) again: %v, want ErrHeld", err)
	}
	for _, want := range []string{"h2", "h4", "h1", ""} {
		next, err := q.HandOff(ctx, l)
		if err != nil {
			t.Fatalf("HandOff of %s's lease: %v", l.Holder, err)
		}
		if next.Holder != want {
			t.Fatalf("HandOff of %s's lease granted %q, want %q", l.Holder, next.Holder, want)
		}
		if want != "" && next.Token <= l.Token {
			t.Errorf("token %d <= %d", next.Token, l.Token)
		}
		l = next
	}
}

// TestGrantsResubscribe: UnsubscribeGrants writes its UNSUBSCRIBE in the
// background; a SubscribeGrants of the same key right after it is never
// undone by it (each round's grant arrives), and once the last
// subscriber has left the server's subscription is gone.
func TestGrantsResubscribe(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, srv.URL())
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	q := c.Driver().(driver.Queuer)
	key := fmt.Sprintf("grants/resubscribe/%d", time.Now().UnixNano())
	channel := redis.NamesForTest(redis.DefaultPrefix, key)[6]
	for round := range 30 {
		got := make(chan driver.Lease, 4)
		if err := q.SubscribeGrants(ctx, key, func(l driver.Lease) { got <- l }); err != nil {
			t.Fatal(err)
		}
		holder := fmt.Sprint("w", round)
		l0, err := q.Enqueue(ctx, key, "h", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := q.Enqueue(ctx, key, holder, time.Minute); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("round %d: Enqueue: %v, want ErrHeld", round, err)
		}
		if _, err := q.HandOff(ctx, l0); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if g.Holder != holder {
				t.Fatalf("round %d: grant %+v, want one to %s", round, g, holder)
			}
			if _, err := q.HandOff(ctx, g); err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: no grant within 10s (the previous round's UNSUBSCRIBE undid this round's SUBSCRIBE?)", round)
		}
		q.UnsubscribeGrants(key)
	}
	eventually(t, "the grant channel is still subscribed on the server", func() bool {
		n, err := admin.PubSubNumSub(ctx, channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[channel] == 0
	})
}
