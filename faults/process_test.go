package faults

import (
	"context"
	"errors"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// TestPause: a holder process is stopped (SIGSTOP) for twice its lease,
// another holder takes over, and the first is continued (SIGCONT) and
// tries to commit and release, both as an honest holder (which checks its
// local deadline) and as one that ignores it (the server must refuse):
// every attempt is refused with ErrLost, KeepAlive has reported the loss,
// and the new holder's value and lease are untouched.
func TestPause(t *testing.T) {
	forEach(t, needsProcesses, func(t *testing.T, b backend) {
		var takeovers, losses []time.Duration
		for range runs(5) {
			take, lost, ok := pauseOnce(t, b)
			for try := 1; !ok && try < 3; try++ {
				take, lost, ok = pauseOnce(t, b)
			}
			if !ok {
				t.Fatalf("the holder process lost its lease before it was stopped in 3 tries (machine too loaded for %s leases?)", b.ttl)
			}
			if t.Failed() {
				return
			}
			takeovers, losses = append(takeovers, take), append(losses, lost)
		}
		figure(t, "pause (SIGSTOP 2×lease)", "stale commits/releases accepted", b.name, "0 of %d", 3*len(takeovers))
		figure(t, "pause (SIGSTOP 2×lease)", "takeover after SIGSTOP (lease "+b.ttl.String()+")", b.name, "%s", ms(maxOf(takeovers)))
		figure(t, "pause (SIGSTOP 2×lease)", "KeepAlive loss signal after SIGCONT", b.name, "%s", ms(maxOf(losses)))
	})
}

// pauseOnce returns how long after SIGSTOP the other holder took over and
// how long after SIGCONT the stopped holder's KeepAlive reported the loss;
// ok is false if the holder lost its lease before it was stopped (slow
// renewals on a loaded machine), which is no finding: try again.
func pauseOnce(t *testing.T, b backend) (takeover, lostAfterResume time.Duration, ok bool) {
	u := b.sharedURL(t)
	k := key(t, "pause")
	holder := startHolder(t, u, k, b.ttl)
	old := holder.lease
	other := open(t, u)
	holder.signal(syscall.SIGSTOP)
	stopped := time.Now()
	if l, err := do(func(ctx context.Context) (claim.Lease, error) { return other.TryClaim(ctx, k, b.ttl) }); err == nil {
		t.Logf("the holder process lost its lease before it was stopped (claimed again at token %d): trying again", l.Token)
		_ = do0(func(ctx context.Context) error { return other.Release(ctx, l) })
		return 0, 0, false
	} else if !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim while the holder process holds the key: %v, want ErrHeld", err)
	}
	// The new holder's lease is long: only the stopped holder's is short.
	nl, err := call(2*old.TTL+b.slack+30*time.Second, func(ctx context.Context) (claim.Lease, error) {
		return other.Acquire(ctx, k, 10*time.Second)
	})
	if err != nil {
		t.Fatalf("takeover while the holder is stopped: %v", err)
	}
	takeover = time.Since(stopped)
	if nl.Token <= old.Token {
		t.Errorf("takeover token %d not above the stopped holder's %d", nl.Token, old.Token)
	}
	keeper := other.KeepAlive(context.Background(), nl, nil)
	defer keeper.Stop()
	if err := do0(func(ctx context.Context) error { return other.Commit(ctx, nl, []byte("new-holder"), 0) }); err != nil {
		t.Fatalf("new holder's commit: %v", err)
	}
	if rest := time.Until(stopped.Add(2 * old.TTL)); rest > 0 {
		time.Sleep(rest)
	}
	holder.signal(syscall.SIGCONT)
	holder.send("commit")
	r := holder.next(60 * time.Second)
	if r.Event != "result" {
		t.Fatalf("holder process: %s %s", r.Event, r.Error)
	}
	for _, c := range []struct{ what, got string }{
		{"commit (deadline checked)", r.Commit},
		{"commit ignoring the deadline", r.Forged},
		{"release ignoring the deadline", r.Release},
	} {
		if c.got != "lost" {
			t.Errorf("resumed stale holder's %s: %q, want ErrLost", c.what, c.got)
		}
	}
	if !r.KeeperLost {
		t.Errorf("resumed holder's KeepAlive did not report the loss (err %q)", r.KeeperErr)
	}
	holder.exit()

	got, err := do(func(ctx context.Context) ([]byte, error) { return other.Get(ctx, k) })
	if err != nil || string(got) != "new-holder" {
		t.Errorf("value after the stale holder's attempts: %q, %v; want the new holder's", got, err)
	}
	if err := keeper.Err(); err != nil {
		t.Errorf("new holder's KeepAlive: %v", err)
	}
	cur := keeper.Stop()
	if err := do0(func(ctx context.Context) error { return other.Release(ctx, cur) }); err != nil {
		t.Errorf("new holder's release: %v", err)
	}
	return takeover, r.LostAfterResume, true
}

// TestCrash: a holder process is killed (SIGKILL) while a waiter in
// another process waits in Client.Acquire; the waiter takes over within the
// lease plus the backend's documented slack plus a small bound, every run.
func TestCrash(t *testing.T) {
	forEach(t, needsProcesses, func(t *testing.T, b backend) {
		var over []time.Duration
		for range runs(10) {
			took, ok := crashOnce(t, b)
			for try := 1; !ok && try < 3; try++ {
				took, ok = crashOnce(t, b)
			}
			if !ok {
				t.Fatalf("the holder process lost its lease before the crash in 3 tries (machine too loaded for %s leases?)", b.ttl)
			}
			if t.Failed() {
				return
			}
			over = append(over, took)
		}
		figure(t, "crash (SIGKILL)", "takeover after SIGKILL (lease "+b.ttl.String()+")", b.name, "%s", ms(maxOf(over)))
	})
}

// crashBound is the scheduling and round-trip allowance on top of the
// lease and the backend's slack.
const crashBound = 3 * time.Second

// crashOnce returns how long after the kill the waiter took over; ok is
// false if the holder lost its lease before the kill (its renewals were
// too slow on a loaded machine), which is no finding: try again.
func crashOnce(t *testing.T, b backend) (took time.Duration, ok bool) {
	u := b.sharedURL(t)
	k := key(t, "crash")
	holder := startHolder(t, u, k, b.ttl)
	ttl := holder.lease.TTL
	waiter := open(t, u)
	type result struct {
		l   claim.Lease
		at  time.Time
		err error
	}
	res := make(chan result, 1)
	ctx := ctxFor(t, ttl+b.slack+60*time.Second)
	go func() {
		l, err := waiter.Acquire(ctx, k, b.ttl)
		res <- result{l, time.Now(), err}
	}()
	time.Sleep(ttl / 2) // the waiter is waiting (and the holder renewing)
	select {
	case r := <-res:
		if r.err != nil {
			t.Fatalf("waiter before the crash: %v", r.err)
		}
		t.Logf("the holder process lost its lease before the crash (waiter took over at token %d): trying again", r.l.Token)
		_ = do0(func(ctx context.Context) error { return waiter.Release(ctx, r.l) })
		return 0, false
	default:
	}
	holder.signal(syscall.SIGKILL)
	killed := time.Now()
	r := <-res
	if r.err != nil {
		t.Fatalf("waiter after the crash: %v", r.err)
	}
	took = r.at.Sub(killed)
	if limit := ttl + b.slack + crashBound; took > limit {
		t.Errorf("waiter took over %s after the kill, more than lease %s + slack %s + %s", took, ttl, b.slack, crashBound)
	}
	if r.l.Token <= holder.lease.Token {
		t.Errorf("waiter's token %d not above the crashed holder's %d", r.l.Token, holder.lease.Token)
	}
	_ = do0(func(ctx context.Context) error { return waiter.Release(ctx, r.l) })
	return took, true
}

func maxOf(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return slices.Max(ds)
}
