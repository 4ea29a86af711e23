package faults

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestRestart: the server is killed (SIGKILL) and restarted. While it is
// down every call fails within its timeout (no hang, no false answer);
// after the restart calls succeed again, and a subscription made before the
// crash still delivers a release made after it. On durable servers the
// holder keeps its lease, the value survives and fencing tokens keep
// increasing; on volatile ones (Redis without persistence, memcached,
// consul -dev) the loss is reported by the holder's KeepAlive, and
// whether tokens went backwards is recorded.
func TestRestart(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) {
		if b.kind == testserver.Redis {
			t.Run("no-persistence", func(t *testing.T) { restartOnce(t, b, nil, false, "restart (kill -9)") })
			t.Run("aof", func(t *testing.T) {
				restartOnce(t, b, &testserver.Options{AppendOnly: true}, true, "restart (kill -9), Redis with appendfsync always")
			})
			return
		}
		restartOnce(t, b, nil, b.durable, "restart (kill -9)")
	})
}

func restartOnce(t *testing.T, b backend, opts *testserver.Options, durable bool, fault string) {
	srv := testserver.RequireWith(t, b.kind, opts)
	u := b.urlOf(srv.URL(), ioTimeout)
	holder, rival, waiter := open(t, u), open(t, u), open(t, u)
	held, cycled, other := key(t, "held"), key(t, "cycled"), key(t, "other")
	const heldTTL = 30 * time.Second
	l1, err := do(func(ctx context.Context) (claim.Lease, error) { return holder.TryClaim(ctx, held, heldTTL) })
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if err := do0(func(ctx context.Context) error { return holder.Commit(ctx, l1, []byte("before"), 0) }); err != nil {
		t.Fatalf("commit: %v", err)
	}
	l2, err := do(func(ctx context.Context) (claim.Lease, error) { return holder.TryClaim(ctx, cycled, b.ttl) })
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	if err := do0(func(ctx context.Context) error { return holder.Release(ctx, l2) }); err != nil {
		t.Fatalf("release: %v", err)
	}
	sub, err := do(func(ctx context.Context) (*claim.Subscription, error) { return waiter.Subscribe(ctx, held) })
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	defer sub.Close()
	var lostAt atomic.Int64
	keeper := holder.KeepAlive(context.Background(), l1, &claim.KeepAliveOptions{
		Interval: 300 * time.Millisecond,
		OnLost:   func(error) { lostAt.Store(time.Now().UnixNano()) },
	})
	defer keeper.Stop()

	if err := srv.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	ops := map[string]func(ctx context.Context) error{
		"TryClaim": func(ctx context.Context) error { _, err := rival.TryClaim(ctx, other, b.ttl); return err },
		"Extend":   func(ctx context.Context) error { _, err := holder.Extend(ctx, l1, heldTTL); return err },
		"Commit":   func(ctx context.Context) error { return holder.Commit(ctx, l1, []byte("while-down"), 0) },
		"Get":      func(ctx context.Context) error { _, err := rival.Get(ctx, held); return err },
		"Set":      func(ctx context.Context) error { return rival.Set(ctx, other, []byte("s"), 0) },
	}
	worst, finish := boundedCalls(t, b, "server down", ops, time.Second)
	restartCtx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := srv.Restart(restartCtx); err != nil {
		t.Fatalf("restart: %v", err)
	}
	restarted := time.Now()
	finish()

	// Recovery: a fresh claim and release go through.
	var recovery time.Duration
	for {
		err := call0(2*time.Second, func(ctx context.Context) error {
			l, err := rival.TryClaim(ctx, other, b.ttl)
			if err != nil {
				return err
			}
			return rival.Release(ctx, l)
		})
		if err == nil {
			recovery = time.Since(restarted)
			break
		}
		if time.Since(restarted) > time.Minute {
			t.Fatalf("no recovery a minute after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Fencing tokens across the restart.
	l2b, err := do(func(ctx context.Context) (claim.Lease, error) { return rival.TryClaim(ctx, cycled, time.Minute) })
	if err != nil {
		t.Fatalf("claim after the restart: %v", err)
	}
	fence := "increasing"
	if l2b.Token <= l2.Token {
		fence = "went back"
		if durable {
			t.Errorf("token after the restart %d not above the one before %d", l2b.Token, l2.Token)
		}
	}
	t.Logf("token before the restart %d, after %d", l2.Token, l2b.Token)

	// The lease held across the restart, and the value.
	var leaseFate string
	if durable {
		time.Sleep(time.Second) // a few renewals against the restarted server
		if err := keeper.Err(); err != nil {
			t.Errorf("holder's KeepAlive after the restart of a durable server: %v", err)
		}
		if _, err := do(func(ctx context.Context) (claim.Lease, error) { return rival.TryClaim(ctx, held, b.ttl) }); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("rival's claim of the held key after the restart: %v, want ErrHeld", err)
		}
		got, err := do(func(ctx context.Context) ([]byte, error) { return rival.Get(ctx, held) })
		if err != nil || string(got) != "before" {
			t.Errorf("value after the restart: %q, %v; want \"before\"", got, err)
		}
		leaseFate = "kept"
	} else {
		t.Logf("volatile server: %s", b.restartNote)
		select {
		case <-keeper.Lost():
			leaseFate = "lost, detected: KeepAlive reported ErrLost " + ms(time.Unix(0, lostAt.Load()).Sub(restarted)) + " after the restart"
			if !errors.Is(keeper.Err(), claim.ErrLost) {
				t.Errorf("KeepAlive's error: %v, want ErrLost", keeper.Err())
			}
		case <-time.After(10 * time.Second):
			if _, err := do(func(ctx context.Context) (claim.Lease, error) { return rival.TryClaim(ctx, held, b.ttl) }); err == nil {
				t.Errorf("the held lease was lost in the restart (the key could be claimed again) but the holder's KeepAlive did not report it")
			}
			leaseFate = "kept"
		}
	}
	if err := do0(func(ctx context.Context) error { return rival.Release(ctx, l2b) }); err != nil {
		t.Errorf("release after the restart: %v", err)
	}

	// The subscription made before the crash sees a release made after it.
	select {
	case <-sub.C():
	default:
	}
	var rel claim.Lease
	if leaseFate == "kept" {
		rel = keeper.Stop()
	} else {
		rel, err = do(func(ctx context.Context) (claim.Lease, error) { return rival.TryClaim(ctx, held, b.ttl) })
		if err != nil {
			t.Fatalf("claim of the lost key after the restart: %v", err)
		}
	}
	if err := do0(func(ctx context.Context) error { return holder.Release(ctx, rel) }); err != nil {
		if err := do0(func(ctx context.Context) error { return rival.Release(ctx, rel) }); err != nil {
			t.Fatalf("release after the restart: %v", err)
		}
	}
	select {
	case <-sub.C():
	case <-time.After(15 * time.Second):
		t.Errorf("subscription made before the crash: no wake-up 15 s after a release made after the restart")
	}
	if t.Failed() {
		return
	}
	figure(t, fault, "slowest call while down (timeout 1 s)", b.name, "%s", ms(worst))
	figure(t, fault, "first success after the restart", b.name, "%s", ms(recovery))
	figure(t, fault, "fencing tokens after the restart", b.name, "%s", fence)
	figure(t, fault, "lease held across the restart", b.name, "%s", leaseFate)
}
