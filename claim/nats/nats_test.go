package nats

import (
	"errors"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// drv is the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

// prefix is the test's own key prefix.
func prefix(t testing.TB) string {
	return "test." + strings.NewReplacer("/", "-", ".", "-", "=", "-", "#", "-").Replace(t.Name())
}

// uniq returns srv's URL with the test's prefix (plus suffix) and the
// given query parameters (name, value, ...) added.
func uniq(t testing.TB, srv *testserver.Server, suffix string, params ...string) string {
	p := prefix(t)
	if suffix != "" {
		p += "." + suffix
	}
	return backendtest.WithQuery(t, srv.URL(), append([]string{"prefix", p}, params...)...)
}

// TestConformance runs the suite on a server of its own, which its
// DurableFence check kills and restarts.
func TestConformance(t *testing.T) {
	srv := testserver.Require(t, testserver.NATS)
	conformance.Run(t, backendtest.Harness(srv, func(ns string) string { return uniq(t, srv, ns) }))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	backendtest.FlightOn(t, backendtest.Harness(srv, func(ns string) string { return uniq(t, srv, ns) }))
}

func BenchmarkConformance(b *testing.B) {
	srv := testserver.Shared(b, testserver.NATS)
	conformance.Bench(b, backendtest.Harness(srv, func(ns string) string { return uniq(b, srv, ns) }))
}

// TestNew: a Client on the caller's own connection, with no I/O at New
// when lazy, leaves the connection open when closed; As reaches the
// connection and the bucket.
func TestNew(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	nc := userConn(t, srv.Addr())
	ctx := backendtest.Context(t)
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil connection) succeeded")
	}
	if _, err := New(nc, &Options{Prefix: "a..b"}); err == nil {
		t.Error("New with a malformed prefix succeeded")
	}
	c, err := New(nc, &Options{Prefix: prefix(t)})
	if err != nil {
		t.Fatal(err)
	}
	f := c.Features()
	if !f.AtomicCommit || !f.DurableFence || f.Notify != claim.Push || !f.Broadcast || f.MaxValueLen != DefaultMaxValueLen {
		t.Errorf("Features = %+v", f)
	}
	var got *natsgo.Conn
	if !c.As(&got) || got != nc {
		t.Errorf("As(**nats.Conn) = %p, want the connection given to New", got)
	}
	var kv jetstream.KeyValue
	if !c.As(&kv) || kv.Bucket() != DefaultBucket {
		t.Errorf("As(*jetstream.KeyValue) = %v", kv)
	}
	l, err := c.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// The record lives under the prefix, its revision is the token.
	e, err := kv.Get(ctx, prefix(t)+".=k.r")
	if err != nil || e.Revision() != l.Token {
		t.Errorf("record under the prefix: %v, %v (token %d)", e, err, l.Token)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if nc.IsClosed() {
		t.Error("the caller's connection was closed by the Client's Close")
	}
}

// outMsgs returns how many messages c's connection has sent.
func outMsgs(c *claim.Client) uint64 { return drv(c).nc.Stats().OutMsgs }

// TestRoundTrips counts the messages each call sends (every request and
// every publish is one; each waits for one answer): Get, Notify, Revoke,
// and the holder's Extend, Commit, CommitRelease and Release are one
// round trip (the holder remembers its record's revision); TryClaim and
// Set, which read the record first, two.
func TestRoundTrips(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	c := backendtest.Open(t, uniq(t, srv, ""))
	ctx := backendtest.Context(t)
	count := func(what string, want uint64, op func() error) {
		t.Helper()
		before := outMsgs(c)
		if err := op(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := outMsgs(c) - before; got != want {
			t.Errorf("%s sent %d messages, want %d", what, got, want)
		}
	}
	var l claim.Lease
	count("TryClaim", 2, func() (err error) { l, err = c.TryClaim(ctx, "k", time.Minute); return err })
	count("Extend", 1, func() (err error) { l, err = c.Extend(ctx, l, time.Minute); return err })
	count("Commit", 1, func() error { return c.Commit(ctx, l, []byte("v"), time.Minute) })
	count("Release", 1, func() error { return c.Release(ctx, l) })
	count("TryClaim", 2, func() (err error) { l, err = c.TryClaim(ctx, "k", time.Minute); return err })
	count("CommitRelease", 1, func() error { return c.CommitRelease(ctx, l, []byte("w"), time.Minute) })
	count("Get", 1, func() error { _, err := c.Get(ctx, "k"); return err })
	count("Set", 2, func() error { return c.Set(ctx, "k", []byte("x"), time.Minute) })
	count("Notify", 1, func() error { return c.Notify(ctx, "k") })
	count("Revoke", 1, func() error { return c.Revoke(ctx, "k") })
}

// TestSkewMargin: a waiter that first sees a lease after it expired takes
// it over only at its recorded expiry plus clock_skew (which comes
// before its own sighting plus the TTL); HeldError.Remaining includes
// the margin. The driver judges expiry by the record, whatever the
// lease's Deadline says.
func TestSkewMargin(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	backendtest.SkewMargin(t, backendtest.Open(t, uniq(t, srv, "")), backendtest.Open(t, uniq(t, srv, "", "clock_skew", "300ms")))
}

// TestTakeoverBySighting: a waiter that saw a claim being made takes it
// over about a TTL after it saw it, not at its recorded expiry plus
// clock_skew (2 s here): the holder's Deadline precedes the first
// sighting plus the TTL the record names, whatever the clocks read
// (driver.Sightings). A write that leaves the lease as it was (a Set)
// does not start the count again: a HeldError read after it, pause
// later, has at least pause less Remaining (the count's end is the same,
// read later).
func TestTakeoverBySighting(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	a, b := backendtest.Open(t, uniq(t, srv, "")), backendtest.Open(t, uniq(t, srv, "", "clock_skew", "2s"))
	backendtest.TakeoverBySighting(t, a, b, func(he *claim.HeldError) *claim.HeldError {
		ctx := backendtest.Context(t)
		const pause = 200 * time.Millisecond
		time.Sleep(pause)
		if err := a.Set(ctx, "k", []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
		_, err := b.TryClaim(ctx, "k", time.Minute)
		var he2 *claim.HeldError
		if !errors.As(err, &he2) {
			t.Fatalf("TryClaim of a held key after a Set: %v, want HeldError", err)
		}
		if he2.Remaining > he.Remaining-pause {
			t.Errorf("Remaining = %s after a Set, %s before it (%s earlier): the Set started the count again", he2.Remaining, he.Remaining, pause)
		}
		return he2
	})
}

// TestFairTakeoverBySighting: the fair queue's takeover of a dead
// holder's lease counts from the first sighting too, though every
// Enqueue rewrites the record (a new revision, the same lease write):
// after another waiter's Enqueue, pause later, Remaining is at least
// pause less.
func TestFairTakeoverBySighting(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	ctx := backendtest.Context(t)
	a, b := backendtest.Open(t, uniq(t, srv, "")), backendtest.Open(t, uniq(t, srv, "", "clock_skew", "2s"))
	const ttl = time.Second
	l, err := a.TryClaim(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	q, other := drv(b), drv(backendtest.Open(t, uniq(t, srv, "")))
	const pause = 200 * time.Millisecond
	var remaining time.Duration
	for i := range 2 {
		_, err := q.Enqueue(ctx, "k", "waiter", time.Minute)
		var he *driver.HeldError
		if !errors.As(err, &he) {
			t.Fatalf("Enqueue %d behind a live lease: %v, want HeldError", i, err)
		}
		if he.Remaining <= 0 || he.Remaining > ttl+100*time.Millisecond || (i > 0 && he.Remaining > remaining-pause) {
			t.Fatalf("Enqueue %d: Remaining = %s (before: %s, %s earlier), want at most the TTL (%s) and a little, not the TTL plus clock_skew, nor counted from the other waiter's write", i, he.Remaining, remaining, pause, ttl)
		}
		remaining = he.Remaining
		if i == 0 {
			time.Sleep(pause)
			var he *driver.HeldError
			if _, err := other.Enqueue(ctx, "k", "other", time.Minute); !errors.As(err, &he) {
				t.Fatalf("another waiter's Enqueue: %v, want HeldError", err)
			}
		}
	}
	defer func() { _ = other.Dequeue(ctx, "k", "other") }()
	time.Sleep(remaining + 20*time.Millisecond)
	nl, err := q.Enqueue(ctx, "k", "waiter", time.Minute)
	got := time.Now()
	if err != nil {
		t.Fatalf("Enqueue past the sighting's end: %v", err)
	}
	defer func() { _ = q.Dequeue(ctx, "k", "waiter") }()
	if nl.Token <= l.Token {
		t.Errorf("token %d after the holder's %d", nl.Token, l.Token)
	}
	if got.Before(l.Deadline) {
		t.Errorf("taken over %s before the holder's Deadline", l.Deadline.Sub(got))
	}
}

// TestLeaseRev: every write of one lease has its own leaseRev, even a
// renewal from a clock that reads behind the grant's writer; a write
// that keeps the lease keeps it.
func TestLeaseRev(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_000)
	r := record{op: opGrant}.withLease("h", time.Second, now, true)
	r.token = 42
	seen := map[driver.Rev]bool{leaseRev(r): true}
	for _, at := range []time.Time{now.Add(-time.Minute), now, now.Add(300 * time.Microsecond), now.Add(time.Millisecond), now.Add(time.Second)} {
		for _, ttl := range []time.Duration{time.Second, 500 * time.Millisecond} {
			n := r.extended(ttl, at)
			if seen[leaseRev(n)] {
				t.Fatalf("extended(%s, %s): leaseRev %v seen before", ttl, at, leaseRev(n))
			}
			if n.leaseExp < ceilMs(at.Add(ttl)) || n.leaseTTL != ttl.Milliseconds() {
				t.Fatalf("extended(%s, %s): expiry %d TTL %d ms, want expiry >= %d", ttl, at, n.leaseExp, n.leaseTTL, ceilMs(at.Add(ttl)))
			}
			seen[leaseRev(n)] = true
			r = n
		}
	}
	kept := r.withValue([]byte("v"), 0, now)
	kept.queue = append(kept.queue, entry{holder: "w", exp: 1, ttl: 1})
	if leaseRev(kept) != leaseRev(r) {
		t.Error("a write that keeps the lease changed its leaseRev")
	}
}

// TestFenceAcrossRestart: the server is killed (SIGKILL) and restarted
// on its data: a live lease is still held, a stored value is still
// there, the next claim's token is greater than every earlier one, and
// the earlier holder's calls fail with ErrLost.
func TestFenceAcrossRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.NATS, nil)
	ctx := backendtest.Context(t)
	a := backendtest.Open(t, uniq(t, srv, ""))
	short, err := a.TryClaim(ctx, "short", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Commit(ctx, short, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	long, err := a.TryClaim(ctx, "long", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	b := backendtest.Open(t, uniq(t, srv, ""))
	if _, err := b.TryClaim(ctx, "long", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim of a key leased for a minute, after the restart: %v, want ErrHeld", err)
	}
	var next claim.Lease
	for {
		next, err = b.TryClaim(ctx, "short", time.Minute)
		if err == nil {
			break
		}
		if !errors.Is(err, claim.ErrHeld) || ctx.Err() != nil {
			t.Fatalf("TryClaim after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if next.Token <= short.Token || next.Token <= long.Token {
		t.Errorf("token after the restart %d, before %d and %d: the fence went back", next.Token, short.Token, long.Token)
	}
	if v, err := b.Get(ctx, "short"); err != nil || string(v) != "v" {
		t.Errorf("Get after the restart = %q, %v", v, err)
	}
	// a reconnects by itself (until then its calls fail at once,
	// ErrUnavailable); its old lease is lost.
	for {
		err := a.Commit(ctx, short, []byte("late"), 0)
		if errors.Is(err, claim.ErrLost) {
			break
		}
		if !errors.Is(err, claim.ErrUnavailable) || ctx.Err() != nil {
			t.Fatalf("Commit of the lease taken over: %v, want ErrLost", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Calls fail at once until a has reconnected (ErrUnavailable).
	for {
		err := a.Release(ctx, long)
		if err == nil {
			break
		}
		if !errors.Is(err, claim.ErrUnavailable) || ctx.Err() != nil {
			t.Fatalf("Release of the minute's lease after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestSweep: Sweep deletes the records that hold nothing live (a
// released key without a value, an expired value) and keeps a held key,
// a live value and a key written after the listing; a swept key can be
// claimed again with a greater token.
func TestSweep(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	c := backendtest.Open(t, uniq(t, srv, ""))
	ctx := backendtest.Context(t)
	l, err := c.TryClaim(ctx, "released", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "expired", []byte("v"), time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "live", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	held, err := c.TryClaim(ctx, "held", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	n, err := Sweep(ctx, c)
	if err != nil || n != 2 {
		t.Errorf("Sweep = %d, %v; want 2 (released, expired)", n, err)
	}
	if v, err := c.Get(ctx, "live"); err != nil || string(v) != "v" {
		t.Errorf("live value after Sweep: %q, %v", v, err)
	}
	if _, err := c.TryClaim(ctx, "held", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("held key after Sweep: %v, want ErrHeld", err)
	}
	l2, err := c.TryClaim(ctx, "released", time.Minute)
	if err != nil || l2.Token <= held.Token {
		t.Errorf("claim of a swept key: %v, %v (token must pass %d)", l2, err, held.Token)
	}
}

// TestWatchAcrossRestart: a subscription outlives a restart of the server
// (SIGKILL; the watch's consumer is gone with it): the reconnection wakes
// the subscriber, and a release after the restart wakes it again.
func TestWatchAcrossRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.NATS, nil)
	ctx := backendtest.Context(t)
	a, b := backendtest.Open(t, uniq(t, srv, "")), backendtest.Open(t, uniq(t, srv, ""))
	s, err := b.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.C():
	case <-ctx.Done():
		t.Fatal("the reconnection did not wake the subscriber")
	}
	var l claim.Lease
	for {
		if l, err = a.TryClaim(ctx, "k", time.Minute); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The watch is made again at the reconnection: a release wakes the
	// subscriber at once, not once nats.go has missed the old consumer's
	// heartbeats.
	time.Sleep(time.Second)
	select {
	case <-s.C():
	default:
	}
	start := time.Now()
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.C():
		t.Logf("a release after the restart woke the subscriber in %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(5 * time.Second):
		t.Fatal("a release after the restart did not wake the subscriber within 5 s")
	}
}

// TestLeaderReads: the reads a replicated bucket makes through the
// stream's leader (not a direct get, which a lagging follower may answer)
// see what direct gets see: records, values, absent and deleted keys.
func TestLeaderReads(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	c := backendtest.Open(t, uniq(t, srv, ""))
	drv(c).leaderReads = true
	securitytest.Roundtrip(t, c)
	ctx := backendtest.Context(t)
	if _, err := c.Get(ctx, "absent"); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get of an absent key: %v, want ErrNotFound", err)
	}
	l, err := c.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if n, err := Sweep(ctx, c); err != nil || n < 1 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	l2, err := c.TryClaim(ctx, "k", time.Minute) // over a delete marker
	if err != nil || l2.Token <= l.Token {
		t.Errorf("TryClaim of a deleted record: %v, %v", l2, err)
	}
}

// TestServerDown: while the server is down (SIGKILL), the disconnection
// wakes a subscriber (it re-checks, and learns that the server is gone),
// and calls fail at once with ErrUnavailable instead of at the operation
// timeout (nats.go would hold them in its reconnect buffer); after the
// restart calls succeed again.
func TestServerDown(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.NATS, nil)
	ctx := backendtest.Context(t)
	const opTimeout = 30 * time.Second
	c := backendtest.Open(t, uniq(t, srv, "", "op_timeout", opTimeout.String()))
	s, err := c.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.C():
	case <-time.After(opTimeout / 2):
		t.Fatal("the disconnection did not wake the subscriber")
	}
	for _, op := range []struct {
		name string
		f    func() error
	}{
		{"TryClaim", func() error { _, err := c.TryClaim(ctx, "k", time.Minute); return err }},
		{"Get", func() error { _, err := c.Get(ctx, "k"); return err }},
		{"Set", func() error { return c.Set(ctx, "k", []byte("v"), 0) }},
		{"Publish", func() error { return c.Publish(ctx, "topic", []byte("m")) }},
	} {
		start := time.Now()
		err := op.f()
		took := time.Since(start)
		t.Logf("%s while the server is down: %v (%s)", op.name, err, took.Round(time.Microsecond))
		if !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("%s while the server is down: %v, want ErrUnavailable", op.name, err)
		}
		if took >= opTimeout/3 {
			t.Errorf("%s while the server is down took %s, want far less than the operation timeout %s", op.name, took, opTimeout)
		}
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for {
		l, err := c.TryClaim(ctx, "k", time.Minute)
		if err == nil {
			if err := c.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("no claim after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestEarlierVersionsByClockRule: a record whose holder carries no
// sightedMark was written by, or granted to, a process of a version
// before takeover by sightings, whose Extend could repeat a grant's
// leaseRev: a waiter that saw it written still waits for the recorded
// expiry plus clock_skew. With the mark, the same record is taken over
// by the sighting.
func TestEarlierVersionsByClockRule(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	const skew = 2 * time.Second
	w := backendtest.Open(t, uniq(t, srv, "", "clock_skew", skew.String()))
	b := drv(w)
	ctx := backendtest.Context(t)
	kv, _, err := b.bucket(ctx)
	if err != nil {
		t.Fatal(err)
	}
	backendtest.EarlierVersionsByClockRule(t, w, skew, func(key string, marked bool) {
		r := record{op: opGrant}.withLease("old", time.Second, time.Now(), marked)
		if _, err := kv.Create(ctx, b.recKey(key), r.encode()); err != nil {
			t.Fatal(err)
		}
	})
}
