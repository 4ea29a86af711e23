package zookeeper

import (
	"context"
	"fmt"
	"github.com/go-zookeeper/zk"
	"slices"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// More of ZooKeeper's request opcodes.
const (
	opcodeGetChildren2 int32 = 12
	opcodePing         int32 = 11
)

// waitQueued waits until key's queue, as c's driver reads it, holds n
// live entries.
func waitQueued(t *testing.T, c *claim.Client, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := drv(c).readQueue(backendtest.Context(t), key)
		if err != nil {
			t.Fatal(err)
		}
		if len(q.live) == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters queued, want %d", len(q.live), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHandOffCostsWaiterNothing: counted at the substrate (a proxy in
// front of the waiter's connection counts its requests by opcode), a
// fair hand-over costs the waiter, from the moment it is queued until
// its AcquireFair has returned, no write at all (no multi-op: no claim,
// no Enqueue): only its grant watch's re-arm (one getData), which reads
// the grant, and, now that it holds the key, the start of the listing of
// its queue that it keeps for its own hand-over (off the hand-over's
// path). The holder's release is one multi-op and nothing else: it kept
// the queue read while it held the key. The same hand-over with Acquire
// costs the waiter its own claim (a multi-op at least: the contrast
// shows the count would catch one).
func TestHandOffCostsWaiterNothing(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	g, hg := newGate(t, srv.Addr()), newGate(t, srv.Addr())
	root := chroot(t, "handoff-cost")
	holder := backendtest.Open(t, "zookeeper://"+hg.addr()+root)
	waiter := backendtest.Open(t, "zookeeper://"+g.addr()+root)
	counts := func(g *gate) map[int32]int {
		g.mu.Lock()
		defer g.mu.Unlock()
		m := map[int32]int{}
		for op, n := range g.counts {
			if op != opcodePing {
				m[op] = n
			}
		}
		return m
	}
	delta := func(a, b map[int32]int) (d map[int32]int, total int) {
		d = map[int32]int{}
		for op, n := range b {
			if n != a[op] {
				d[op] = n - a[op]
				total += n - a[op]
			}
		}
		return d, total
	}
	for _, fair := range []bool{true, false} {
		key := fmt.Sprintf("k/fair=%v", fair)
		claimFn, acquire := holder.TryClaim, waiter.Acquire
		if fair {
			claimFn, acquire = holder.AcquireFair, waiter.AcquireFair
		}
		l0, err := claimFn(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		got := make(chan claim.Lease, 1)
		go func() {
			l, err := acquire(ctx, key, time.Minute)
			if err != nil {
				t.Errorf("fair=%v: %v", fair, err)
			}
			got <- l
		}()
		if fair {
			waitQueued(t, holder, key, 1)
		} else {
			time.Sleep(200 * time.Millisecond) // subscribed, its claim refused
		}
		time.Sleep(20 * time.Millisecond) // the queueing call's reply read, the queue tracked
		c0, h0 := counts(g), counts(hg)
		if err := holder.Release(ctx, l0); err != nil {
			t.Fatal(err)
		}
		hd, htotal := delta(h0, counts(hg))
		l := <-got
		d, total := delta(c0, counts(g))
		t.Logf("fair=%v: the holder's requests for its release, by opcode: %v", fair, hd)
		if fair && (htotal != 1 || hd[opcodeMulti] != 1) {
			t.Errorf("fair hand-over: the holder sent %v (opcode: count), want one multi-op (the queue was tracked while it held the key)", hd)
		}
		t.Logf("fair=%v: the waiter's requests during the hand-over, by opcode: %v", fair, d)
		// Besides its re-arm, the waiter, now holding the key, may have
		// started to keep its queue read for its own hand-over (track.go):
		// one listing (getChildren2, or exists if the queue node is gone).
		tracking := d[opcodeGetChildren2] + d[opcodeExists]
		if fair && (d[opcodeMulti] != 0 || d[opcodeGetData] != 1 || tracking > 1 || total != 1+tracking) {
			t.Errorf("fair hand-over: the waiter sent %v (opcode: count), want one getData (its watch's re-arm), no write, and at most its queue's listing", d)
		}
		if !fair && d[opcodeMulti] < 1 {
			t.Errorf("Acquire hand-over: the waiter sent %v, want its claim's multi-op at least (the count cannot see a claim)", d)
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

// TestGrantedLeaseOutlivesGranter: a lease granted by a HandOff does not
// end with the session of the process that granted it (its nodes are
// persistent, judged by their TTL): after the granter's Client is closed
// and its session expired, the grantee still holds the key, and a
// TryClaim is refused.
func TestGrantedLeaseOutlivesGranter(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	name := "outlives"
	granter := open(t, srv, name, "session", "500ms")
	waiter, other := open(t, srv, name), open(t, srv, name)
	key := "k"
	l0, err := granter.AcquireFair(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := waiter.AcquireFair(ctx, key, time.Minute)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	waitQueued(t, other, key, 1)
	if err := granter.Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	l := <-got
	// An ephemeral node of the granter's session, to see it end.
	gb := drv(granter)
	mark := gb.root + "/granter-session"
	if _, err := gb.conn.Create(mark, nil, zk.FlagEphemeral, gb.acl); err != nil {
		t.Fatal(err)
	}
	granter.Close()
	ob := drv(other)
	deadline := time.Now().Add(10 * time.Second)
	for { // the granter's session expires
		if ok, _, err := ob.conn.Exists(mark); err == nil && !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the granter's session never expired")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := other.TryClaim(ctx, key, time.Minute); err == nil {
		t.Fatal("TryClaim succeeded while the granted lease is live: it ended with the granter's session")
	}
	if err := waiter.Commit(ctx, l, []byte("v"), time.Minute); err != nil {
		t.Errorf("Commit with the granted lease after the granter's session ended: %v", err)
	}
	if err := waiter.Release(ctx, l); err != nil {
		t.Errorf("Release: %v", err)
	}
}

// TestGrantsReset: a lost connection (past the moment go-zk reconnects
// at once) calls grant with a zero Lease, so waiters enqueue again.
func TestGrantsReset(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	c, p := openCut(t, srv, "grants-reset")
	q := c.Driver().(driver.Queuer)
	got := make(chan driver.Lease, 16)
	if err := q.SubscribeGrants(ctx, "k", func(l driver.Lease) { got <- l }); err != nil {
		t.Fatal(err)
	}
	defer q.UnsubscribeGrants("k")
	p.Cut()
	select {
	case l := <-got:
		if l.Holder != "" {
			t.Errorf("grant %v after the connection was cut, want a zero Lease", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no zero grant after the connection was cut")
	}
}

// BenchmarkHandOver: a holder holds the key for hold (20 ms, then 300
// ms) and releases it while a waiter in another client blocks, in
// AcquireFair (fair: the release is a HandOff whose grant the waiter's
// watch reads) or in Acquire (acquire: the release wakes the waiter,
// which then claims); reported as handover-p50-ms and handover-p99-ms,
// from the start of the holder's Release to the waiter's call
// returning. Each op includes the hold: use -benchtime=Nx.
func BenchmarkHandOver(b *testing.B) {
	srv := testserver.Shared(b, testserver.ZooKeeper)
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		for _, mode := range []string{"fair", "acquire"} {
			b.Run(fmt.Sprintf("hold=%s/%s", hold, mode), func(b *testing.B) {
				benchHandOver(b, open(b, srv, "handover"), open(b, srv, "handover"), hold, mode == "fair")
			})
		}
	}
}

func benchHandOver(b *testing.B, holder, waiter *claim.Client, hold time.Duration, fair bool) {
	ctx := context.Background()
	key := fmt.Sprintf("handover/%v/%s/%d", fair, hold, time.Now().UnixNano())
	claimFn, acquire := holder.TryClaim, waiter.Acquire
	if fair {
		claimFn, acquire = holder.AcquireFair, waiter.AcquireFair
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		l, err := claimFn(ctx, key, 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		type result struct {
			at  time.Time
			err error
		}
		res := make(chan result, 1)
		go func() {
			wl, err := acquire(ctx, key, 30*time.Second)
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
		lat = append(lat, r.at.Sub(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1e3, "handover-p50-ms")
	b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1e3, "handover-p99-ms")
}

// TestWakeValueMarks: the wake-up carries a CommitRelease's value also
// when the value node existed (setData, not create), and none after a
// Commit followed by a Release (the value is current, but no
// CommitRelease wrote it), nor after a plain Set of a new value node
// (created: pzxid = mzxid, but cversion 0).
func TestWakeValueMarks(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, b := open(t, srv, "wakevalue"), open(t, srv, "wakevalue")
	vals := make(chan []byte, 16)
	vn := b.Driver().(driver.ValueNotifier)
	if err := vn.SubscribeValue(ctx, "k", func(v []byte) { vals <- v }); err != nil {
		t.Fatal(err)
	}
	defer b.Driver().Unsubscribe("k")
	// next returns the value of the first wake-up that follows a release
	// (claims' wake-ups, held back, may come first and carry none).
	next := func(what string) []byte {
		t.Helper()
		for {
			select {
			case v := <-vals:
				if v != nil || len(vals) == 0 {
					return v
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: no wake-up", what)
			}
		}
	}
	if err := a.Set(ctx, "k", []byte("old"), time.Minute); err != nil {
		t.Fatal(err)
	}
	l := backendtest.Claim(t, a, "k", time.Minute)
	if err := a.CommitRelease(ctx, l, []byte("new"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if v := next("CommitRelease over a value"); string(v) != "new" {
		t.Errorf("CommitRelease over an existing value: wake-up carried %q, want %q", v, "new")
	}
	l = backendtest.Claim(t, a, "k", time.Minute)
	if err := a.Commit(ctx, l, []byte("committed"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if v := next("Commit, Release"); v != nil {
		t.Errorf("Commit then Release: wake-up carried %q, want none", v)
	}
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "k", []byte("set"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := a.Notify(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if v := next("Set, Notify"); v != nil {
		t.Errorf("Set of a new value node, then Notify: wake-up carried %q, want none", v)
	}
}
