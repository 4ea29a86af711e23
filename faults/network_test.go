package faults

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// TestNotifyDrop: waiters' connections (pub/sub, LISTEN, watches, blocking
// queries, polls) are cut while the holder releases the key: closed
// (proxy down), reset by the release's own notification (reset_peer), or
// silently dropped (blackhole). Once the link is back, every subscription
// still gets a wake-up after the release (the backends re-check on
// reconnect), long before the holder's lease would have run out, and none
// hangs.
func TestNotifyDrop(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) {
		for _, mode := range []string{"down", "reset_peer", "blackhole"} {
			missed, total, worst := 0, 0, time.Duration(0)
			for range runs(3) {
				m, n, w := notifyDropOnce(t, b, mode)
				missed, total, worst = missed+m, total+n, max(worst, w)
			}
			if t.Failed() {
				return
			}
			figure(t, "notify drop during release ("+mode+")", "missed wake-ups", b.name, "%d of %d", missed, total)
			figure(t, "notify drop during release ("+mode+")", "wake-up after the link is back", b.name, "%s", ms(worst))
		}
	})
}

func notifyDropOnce(t *testing.T, b backend, mode string) (missed, total int, worst time.Duration) {
	const clients, subsPerClient = 3, 2
	const holderTTL = 60 * time.Second
	u := b.sharedURL(t)
	k := key(t, "drop-"+mode)
	holder := open(t, u)
	l, err := do(func(ctx context.Context) (claim.Lease, error) { return holder.TryClaim(ctx, k, holderTTL) })
	if err != nil {
		t.Fatalf("holder's claim: %v", err)
	}
	pu, p := proxied(t, u)
	var waiters []*claim.Client
	var subs []*claim.Subscription
	for range clients {
		w := open(t, pu)
		waiters = append(waiters, w)
		for range subsPerClient {
			s, err := do(func(ctx context.Context) (*claim.Subscription, error) { return w.Subscribe(ctx, k) })
			if err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			t.Cleanup(func() { _ = s.Close() })
			subs = append(subs, s)
		}
	}
	time.Sleep(200 * time.Millisecond)
	switch mode {
	case "down":
		p.down()
	case "reset_peer":
		// The first bytes towards a waiter (the release's notification,
		// a poll's answer) reset its connection.
		p.add("reset", "reset_peer", "downstream", 1, map[string]any{"timeout": 0})
	case "blackhole":
		p.blackhole()
	}
	time.Sleep(300 * time.Millisecond)
	if err := do0(func(ctx context.Context) error { return holder.Release(ctx, l) }); err != nil {
		t.Fatalf("holder's release: %v", err)
	}
	// A wake-up sent from now on makes its waiter re-check after the
	// release, which is all a waiter needs: drop older ones.
	for _, s := range subs {
		select {
		case <-s.C():
		default:
		}
	}
	time.Sleep(700 * time.Millisecond)
	if mode == "down" {
		p.up()
	} else {
		p.heal()
	}
	back := time.Now()
	const bound = 20 * time.Second // well inside the holder's 60 s lease
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i, s := range subs {
		wg.Go(func() {
			select {
			case _, ok := <-s.C():
				mu.Lock()
				defer mu.Unlock()
				if !ok {
					t.Errorf("subscription %d closed instead of waking", i)
					missed++
					return
				}
				worst = max(worst, time.Since(back))
			case <-time.After(bound):
				mu.Lock()
				defer mu.Unlock()
				t.Errorf("subscription %d (client %d): no wake-up within %s after the link came back (release before it)", i, i/subsPerClient, bound)
				missed++
			}
		})
	}
	wg.Wait()
	// The re-check finds the key free.
	nl, err := do(func(ctx context.Context) (claim.Lease, error) {
		var l claim.Lease
		err := definitive(8*time.Second, func(ctx context.Context) (err error) { l, err = waiters[0].TryClaim(ctx, k, b.ttl); return err })
		return l, err
	})
	if err != nil {
		t.Errorf("waiter's claim after the wake-up: %v", err)
	} else {
		_ = do0(func(ctx context.Context) error { return waiters[0].Release(ctx, nl) })
	}
	return missed, len(subs), worst
}

// TestPartition: the holder's link to the server goes silent (blackhole)
// for longer than its lease. KeepAlive must report the loss by its fence,
// the lease's local Deadline less its margin (KeepAliveOptions.Margin),
// which no other client can beat (the rival's first successful claim comes
// after the Deadline itself: the difference is the self-fencing lead), and
// the holder commits nothing: not during the partition, not after it (the
// local deadline refuses, and a commit ignoring the deadline is refused by
// the server).
func TestPartition(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) {
		var leads, lates []time.Duration
		for range runs(5) {
			lead, late, ok := partitionOnce(t, b)
			for try := 1; !ok && try < 5; try++ {
				lead, late, ok = partitionOnce(t, b)
			}
			if !ok {
				t.Fatalf("KeepAlive could not renew a %s lease before the partition in 5 tries (machine too loaded?)", partitionTTL)
			}
			if t.Failed() {
				return
			}
			leads, lates = append(leads, lead), append(lates, late)
		}
		figure(t, "partition > lease (blackhole, lease "+partitionTTL.String()+")", "stale commits accepted", b.name, "0")
		figure(t, "partition > lease (blackhole, lease "+partitionTTL.String()+")", "self-fence lead: rival's first successful claim − holder's loss signal (min)", b.name, "%s", ms(minOf(leads)))
		figure(t, "partition > lease (blackhole, lease "+partitionTTL.String()+")", "loss signal − fence (local Deadline − "+partitionMargin.String()+" margin) (max)", b.name, "%s", ms(maxOf(lates)))
	})
}

// lossLateness bounds how long after its fence (the lease's local
// Deadline less partitionMargin) KeepAlive may report the loss (timer and
// scheduling delay on a loaded machine). The holder's client gets an I/O
// timeout well above it (partitionIO), so a KeepAlive that waited for its
// hung renewal call would be caught. partitionMargin is KeepAlive's
// default margin for the partitionTTL lease (TTL/10), set explicitly so
// that the fence the test measures against is known.
const (
	lossLateness    = 1500 * time.Millisecond
	partitionIO     = 5 * time.Second
	partitionTTL    = 2 * time.Second
	partitionMargin = partitionTTL / 10
)

// partitionOnce returns the self-fencing lead and how late the loss signal
// came after the keeper's fence; ok is false if KeepAlive lost the lease
// before the partition (too slow on a loaded machine), which is no finding:
// try again.
func partitionOnce(t *testing.T, b backend) (lead, late time.Duration, ok bool) {
	u := b.sharedURLIO(t, partitionIO)
	pu, p := proxied(t, u)
	holder, rival := open(t, pu), open(t, u)
	k := key(t, "partition")
	ttl := max(b.ttl, partitionTTL)
	l, err := do(func(ctx context.Context) (claim.Lease, error) { return holder.TryClaim(ctx, k, ttl) })
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	var lostAt atomic.Int64
	keeper := holder.KeepAlive(context.Background(), l, &claim.KeepAliveOptions{
		Margin: partitionMargin,
		OnLost: func(error) { lostAt.Store(time.Now().UnixNano()) },
	})
	defer keeper.Stop()
	for keeper.Lease().Deadline.Equal(l.Deadline) {
		if keeper.Err() != nil || time.Now().After(l.Deadline) {
			t.Logf("KeepAlive did not renew before the partition (%v): trying again", keeper.Err())
			return 0, 0, false
		}
		time.Sleep(5 * time.Millisecond)
	}

	p.blackhole()
	// The holder keeps committing through the partition.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var landed []time.Time // successful commits after the cut
	var slowest time.Duration
	var mu sync.Mutex
	cut := time.Now()
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			err := call0(300*time.Millisecond, func(ctx context.Context) error {
				return holder.Commit(ctx, keeper.Lease(), fmt.Appendf(nil, "holder-%d", i), 0)
			})
			took := time.Since(start)
			mu.Lock()
			if err == nil {
				landed = append(landed, time.Now())
			}
			slowest = max(slowest, took)
			mu.Unlock()
		}
	})
	// The rival tries to claim every 10 ms from the cut on.
	type attempt struct{ start, end time.Time }
	var firstOK attempt
	var rl claim.Lease
	for limit := time.Now().Add(ttl + b.slack + 20*time.Second); ; {
		var a attempt
		a.start = time.Now()
		rl, err = call(2*time.Second, func(ctx context.Context) (claim.Lease, error) { return rival.TryClaim(ctx, k, 30*time.Second) })
		a.end = time.Now()
		if err == nil {
			firstOK = a
			break
		}
		if a.end.After(limit) {
			close(stop)
			wg.Wait()
			t.Fatalf("rival's claim during the partition: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-keeper.Lost():
	case <-time.After(10 * time.Second):
		t.Fatalf("KeepAlive did not report the loss 10 s after the rival took over")
	}
	last := keeper.Lease()
	if err := keeper.Err(); !errors.Is(err, claim.ErrLost) {
		t.Errorf("KeepAlive's error: %v, want ErrLost", err)
	}
	for lostAt.Load() == 0 {
		time.Sleep(time.Millisecond) // OnLost runs just after Lost is closed
	}
	lost := time.Unix(0, lostAt.Load())
	if firstOK.end.Before(last.Deadline) {
		t.Errorf("rival claimed the key at %s, before the holder's local deadline %s", firstOK.end.Format(time.StampMicro), last.Deadline.Format(time.StampMicro))
	}
	fence := last.Deadline.Add(-partitionMargin)
	late = lost.Sub(fence)
	if late > lossLateness {
		t.Errorf("KeepAlive reported the loss %s after its fence, the lease's local deadline less its %s margin (bound %s); cause: %v", late, partitionMargin, lossLateness, keeper.Err())
	}
	if err := do0(func(ctx context.Context) error { return rival.Commit(ctx, rl, []byte("rival"), 0) }); err != nil {
		t.Errorf("rival's commit: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	p.heal()
	mu.Lock()
	if bound := b.callBound(300*time.Millisecond, partitionIO); slowest > bound {
		t.Errorf("a commit during the partition took %s with a 300 ms context (bound %s): calls do not end at their context's deadline", slowest, bound)
	}
	for _, at := range landed {
		if !at.Before(last.Deadline) {
			t.Errorf("holder's commit succeeded at %s, after its deadline %s", at.Format(time.StampMicro), last.Deadline.Format(time.StampMicro))
		}
	}
	mu.Unlock()

	// After the partition: refused locally, and by the server.
	if err := do0(func(ctx context.Context) error { return holder.Commit(ctx, last, []byte(staleValue), 0) }); !errors.Is(err, claim.ErrLost) {
		t.Errorf("holder's commit after the partition: %v, want ErrLost", err)
	}
	forged := last
	forged.Deadline = time.Now().Add(time.Hour)
	if err := definitive(20*time.Second, func(ctx context.Context) error { return holder.Commit(ctx, forged, []byte(staleValue), 0) }); !errors.Is(err, claim.ErrLost) {
		t.Errorf("holder's commit ignoring its deadline after the partition: %v, want ErrLost", err)
	}
	got, err := do(func(ctx context.Context) ([]byte, error) { return rival.Get(ctx, k) })
	if err != nil || string(got) != "rival" {
		t.Errorf("value after the partition: %q, %v; want the rival's", got, err)
	}
	_ = do0(func(ctx context.Context) error { return rival.Release(ctx, rl) })
	t.Logf("cut %s after the last renewal's deadline - TTL; loss %s after the fence (deadline - %s); rival's first claim %s after the loss",
		cut.Sub(last.Deadline.Add(-last.TTL)), late, partitionMargin, firstOK.start.Sub(lost))
	return firstOK.end.Sub(lost), late, true
}

func minOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	m := ds[0]
	for _, d := range ds[1:] {
		m = min(m, d)
	}
	return m
}

// TestBoundedErrors: with the client's link down (connection refused),
// resetting every connection (reset_peer), silent (blackhole) or slower
// than the call's timeout (latency), every operation returns an error
// within its context's timeout plus the backend's own I/O timeout, and
// never a false answer (ErrHeld, ErrLost, ErrNotFound); once the link is
// back, operations succeed again.
func TestBoundedErrors(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) {
		for _, mode := range []string{"down", "reset_peer", "blackhole", "latency"} {
			worst, recovery := boundedOnce(t, b, mode)
			if t.Failed() {
				return
			}
			figure(t, "bounded errors ("+mode+")", "slowest failing call (timeout 500 ms)", b.name, "%s", ms(worst))
			figure(t, "bounded errors ("+mode+")", "recovery after the link is back", b.name, "%s", ms(recovery))
		}
	})
}

// opTimeout is the context timeout of each call under a fault;
// errorGrace what a call may take beyond it (a backend's I/O timeout
// that does not follow the context, scheduling).
const (
	opTimeout  = 500 * time.Millisecond
	errorGrace = 3 * time.Second
)

func boundedOnce(t *testing.T, b backend, mode string) (worst, recovery time.Duration) {
	u := b.sharedURL(t)
	pu, p := proxied(t, u)
	c := open(t, pu)
	k := key(t, "bounded-"+mode)
	l, err := do(func(ctx context.Context) (claim.Lease, error) { return c.TryClaim(ctx, k, 30*time.Second) })
	if err != nil {
		t.Fatalf("claim before the fault: %v", err)
	}
	if err := do0(func(ctx context.Context) error { return c.Commit(ctx, l, []byte("v"), 0) }); err != nil {
		t.Fatalf("commit before the fault: %v", err)
	}
	switch mode {
	case "down":
		p.down()
	case "reset_peer":
		p.add("reset", "reset_peer", "upstream", 1, map[string]any{"timeout": 0})
	case "blackhole":
		p.blackhole()
	case "latency":
		p.add("slow", "latency", "upstream", 1, map[string]any{"latency": 3000})
	}
	ops := map[string]func(ctx context.Context) error{
		"TryClaim": func(ctx context.Context) error { _, err := c.TryClaim(ctx, k+"/other", time.Minute); return err },
		"Extend":   func(ctx context.Context) error { _, err := c.Extend(ctx, l, 30*time.Second); return err },
		"Commit":   func(ctx context.Context) error { return c.Commit(ctx, l, []byte("w"), 0) },
		"Get":      func(ctx context.Context) error { _, err := c.Get(ctx, k); return err },
		"Set":      func(ctx context.Context) error { return c.Set(ctx, k+"/set", []byte("s"), 0) },
		"Subscribe": func(ctx context.Context) error {
			s, err := c.Subscribe(ctx, k+"/sub")
			if err == nil {
				_ = s.Close()
			}
			return err
		},
	}
	var finish func()
	worst, finish = boundedCalls(t, b, mode, ops, opTimeout)
	if mode == "down" {
		p.up()
	} else {
		p.heal()
	}
	finish()
	back := time.Now()
	for {
		err := call0(2*time.Second, func(ctx context.Context) error {
			if _, err := c.Get(ctx, k); err != nil {
				return err
			}
			l2, err := c.TryClaim(ctx, k+"/after", b.ttl)
			if err != nil {
				return err
			}
			return c.Release(ctx, l2)
		})
		if err == nil {
			break
		}
		if time.Since(back) > 30*time.Second {
			t.Fatalf("no recovery 30 s after the %s fault ended: %v", mode, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return worst, time.Since(back)
}

// boundedCalls runs ops concurrently while a fault is on, each under a
// context with the given timeout, and checks that each returns an error
// (not a false answer) within timeout+errorGrace. Each call runs on its own
// goroutine, so that one that hangs is reported instead of hanging the
// test; finish, called once the fault is over, waits for those.
func boundedCalls(t *testing.T, b backend, fault string, ops map[string]func(ctx context.Context) error, timeout time.Duration) (worst time.Duration, finish func()) {
	bound := b.callBound(timeout, ioTimeout)
	type result struct {
		name string
		took time.Duration
		err  error
	}
	results := make(chan result, len(ops))
	for name, op := range ops {
		go func() {
			start := time.Now()
			err := call0(timeout, op)
			results <- result{name, time.Since(start), err}
		}()
	}
	pending := len(ops)
	for wait := time.After(bound + time.Second); pending > 0; {
		select {
		case r := <-results:
			pending--
			worst = max(worst, r.took)
			switch {
			case r.took > bound:
				t.Errorf("%s under %s took %s (timeout %s, bound %s): %v", r.name, fault, r.took, timeout, bound, r.err)
			case r.err == nil && r.name == "Subscribe":
				// A subscription may be served by local state: not an error.
			case r.err == nil:
				t.Errorf("%s under %s succeeded", r.name, fault)
			case isAnswer(r.err):
				t.Errorf("%s under %s: false answer %v", r.name, fault, r.err)
			}
			continue
		case <-wait:
		}
		t.Errorf("%d call(s) still running %s after they started with a %s timeout under %s", pending, bound+time.Second, timeout, fault)
		worst = bound + time.Second
		break
	}
	return worst, func() {
		for ; pending > 0; pending-- {
			select {
			case r := <-results:
				t.Logf("%s returned %s after it started, once %s was over: %v", r.name, r.took, fault, r.err)
			case <-time.After(60 * time.Second):
				t.Fatalf("%d call(s) still hung 60 s after %s was over", pending, fault)
			}
		}
	}
}
