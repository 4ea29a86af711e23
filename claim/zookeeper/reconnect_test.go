//go:build !race

package zookeeper

import (
	"errors"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"
	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// The tests here reconnect a client whose watches are set. go-zookeeper/zk
// (v1.0.4, the latest) reads Conn.lastZxid in sendSetWatches while the new
// connection's receive loop writes it, unsynchronized (samuel/go-zookeeper
// #178 and #260, go-zookeeper/zk PR #35, unmerged): the race detector
// reports it now and then, in go-zk's code, not ours. So these tests are
// built without -race, and `make test` runs them in a second pass of their
// own (go test -run '^TestReconnect'); everything else in the package runs
// with -race. docs/zookeeper.md says the same to users.

// TestReconnectSessionExpiry: a holder cut off for longer than its
// session timeout keeps its lease until the lease's TTL has run out (its
// nodes are persistent): another client cannot claim the key before the
// holder's Deadline, and claims it once the TTL is over; the holder's
// Extend then reports ErrLost once it is back, and its subscribers are
// woken while it is cut off, and again when their watches are re-armed on
// the new session. (Claims were ephemeral nodes once: the session's
// expiry ended the lease, before the holder's Deadline when the TTL was
// the longer: found by review.)
func TestReconnectSessionExpiry(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, p := openCut(t, srv, "expiry", "session", "500ms")
	b := open(t, srv, "expiry")
	l, s := backendtest.Claim(t, a, "held", 4*time.Second), backendtest.Subscribe(t, a, "watched")
	p.Cut()
	// Lost, and not back at the first attempt: subscribers are woken.
	if !backendtest.Woken(s, 10*time.Second) {
		t.Fatal("subscriber not woken while the connection is down")
	}
	// The session expires (500 ms) long before the lease (4 s): the key
	// stays the cut-off holder's until its Deadline, then is free.
	deadline := l.Deadline.Add(20 * time.Second)
	for {
		l2, err := b.TryClaim(ctx, "held", time.Minute)
		if err == nil {
			if early := time.Until(l.Deadline); early > 0 {
				t.Fatalf("key taken over %s before the cut-off holder's Deadline (lease 4s, session 500ms): tokens %d, %d", early, l.Token, l2.Token)
			}
			break
		}
		if !errors.Is(err, claim.ErrHeld) || time.Now().After(deadline) {
			t.Fatalf("TryClaim after the holder's lease ran out: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Restore()
	if !backendtest.Woken(s, 20*time.Second) {
		t.Errorf("subscriber not woken after its session expired")
	}
	if _, err := a.Extend(ctx, l, time.Minute); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend after the takeover: %v, want ErrLost", err)
	}
	// The re-armed watch works on the new session.
	if err := b.Notify(ctx, "watched"); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(s, 5*time.Second) {
		t.Errorf("subscriber not woken by Notify on the new session")
	}
}

// TestReconnectKeepsLease: a short disconnection (within the session
// timeout) loses nothing: the session, its leases and its watches survive.
func TestReconnectKeepsLease(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, p := openCut(t, srv, "reconnect")
	b := open(t, srv, "reconnect")
	l, s := backendtest.Claim(t, a, "k", time.Minute), backendtest.Subscribe(t, a, "k")
	p.Cut()
	time.Sleep(100 * time.Millisecond)
	p.Restore()
	l, err := a.Extend(ctx, l, time.Minute)
	if err != nil {
		t.Fatalf("Extend after reconnecting: %v", err)
	}
	select {
	case <-s.C(): // a wake-up for the outage, if there was one
	default:
	}
	if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim by another client: %v, want ErrHeld", err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(s, 5*time.Second) {
		t.Errorf("watch lost across a reconnection")
	}
}

// TestReconnectFenceAcrossRestart: tokens are zxids, kept in ZooKeeper's
// transaction log, so they keep increasing after the server is killed and
// restarted.
func TestReconnectFenceAcrossRestart(t *testing.T) {
	srv := testserver.Require(t, testserver.ZooKeeper)
	if srv.External() {
		t.Skip("needs a server of its own to kill")
	}
	ctx := backendtest.Context(t)
	a := open(t, srv, "restart")
	l := backendtest.Claim(t, a, "k", time.Minute)
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if l2 := backendtest.Claim(t, open(t, srv, "restart"), "k", time.Minute); l2.Token <= l.Token {
		t.Errorf("token after restart %d <= %d before", l2.Token, l.Token)
	}
	// The first client reconnects by itself: a call made while it is
	// still reconnecting fails with ErrUnavailable (bounded, never a
	// hang), and a later one succeeds.
	var err error
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err = a.Set(ctx, "v", []byte("x"), 0); err == nil || !errors.Is(err, claim.ErrUnavailable) {
			break
		}
	}
	if err != nil {
		t.Errorf("Set by the client that saw the restart: %v", err)
	}
}

// TestReconnectBroadcastReset: a subscriber whose session expired
// may have missed messages, so it gets a reset, then later messages.
func TestReconnectBroadcastReset(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a := open(t, srv, "broadcast2")
	b, p := openCut(t, srv, "broadcast2", "session", "500ms")
	resets := make(chan struct{}, 10)
	msgs := make(chan string, 10)
	stop, err := b.SubscribeTopic(ctx, "t", func(m []byte, reset bool) {
		if reset {
			resets <- struct{}{}
		} else {
			msgs <- string(m)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	p.Cut()
	time.Sleep(2 * time.Second) // > session timeout
	p.Restore()
	select {
	case <-resets:
	case <-time.After(20 * time.Second):
		t.Fatal("no reset after session expiry")
	}
	if err := a.Publish(ctx, "t", []byte("after")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-msgs:
		if m != "after" {
			t.Errorf("got %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("message after the reset not delivered")
	}
}

// TestReconnectLostConnectionWakes: when the connection of an established
// subscription is lost and cannot be re-established at once, the
// subscriber is woken, and its re-check sees the outage (ErrUnavailable);
// once the connection is back, the subscription still delivers. Through
// a URL (session events) and through New (pollSession).
func TestReconnectLostConnectionWakes(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	check := func(t *testing.T, c *claim.Client, p *securitytest.Proxy) {
		ctx := backendtest.Context(t)
		other := open(t, srv, "lost")
		s := backendtest.Subscribe(t, c, "k")
		p.Cut()
		if !backendtest.Woken(s, 10*time.Second) {
			t.Fatal("subscriber not woken while the connection is down")
		}
		if _, err := c.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("TryClaim while the connection is down: %v, want ErrUnavailable", err)
		}
		p.Restore()
		// Calls fail fast (no server) until go-zk has reconnected.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := c.Set(ctx, "after", []byte("v"), 0)
			if err == nil {
				break
			}
			if !errors.Is(err, claim.ErrUnavailable) || time.Now().After(deadline) {
				t.Fatalf("Set after the outage: %v", err)
			}
		}
		select {
		case <-s.C(): // a wake-up for the outage may follow the first
		default:
		}
		if err := other.Notify(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if !backendtest.Woken(s, 10*time.Second) {
			t.Error("subscription does not deliver after the outage")
		}
	}
	t.Run("URL", func(t *testing.T) {
		c, p := openCut(t, srv, "lost")
		check(t, c, p)
	})
	t.Run("New", func(t *testing.T) {
		p := securitytest.NewProxy(t, srv.Addr())
		conn, _, err := zk.Connect([]string{p.Addr()}, 10*time.Second, zk.WithLogger(quiet), zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		c, err := New(conn, &Options{Prefix: chroot(t, "lost")[1:] + "/" + DefaultPrefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		check(t, c, p)
	})
}
