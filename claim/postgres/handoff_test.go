package postgres

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// socketState tells a quiet socket from one with data waiting or closed by
// the peer, without consuming anything, and gives up on what it cannot
// look into.
func TestSocketState(t *testing.T) {
	p1, p2 := net.Pipe()
	defer p1.Close()
	defer p2.Close()
	if got := socketState(p1); got != socketUnknown {
		t.Errorf("net.Pipe: %v, want socketUnknown", got)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := socketState(c); got != socketQuiet {
		t.Errorf("open idle socket: %v, want socketQuiet", got)
	}
	eventually := func(want sockState, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for socketState(c) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v, want %v", what, socketState(c), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if _, err := s.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	eventually(socketBusy, "a byte waiting")
	// The peek left the byte queued.
	var buf [1]byte
	if n, err := c.Read(buf[:]); n != 1 || buf[0] != 'x' || err != nil {
		t.Fatalf("read after peek: %d %q %v", n, buf[:n], err)
	}
	if got := socketState(c); got != socketQuiet {
		t.Errorf("after reading the byte: %v, want socketQuiet", got)
	}
	s.Close()
	eventually(socketBusy, "closed by the peer")
	c.Close()
	if got := socketState(c); got != socketBusy {
		t.Errorf("closed locally: %v, want socketBusy", got)
	}
}

// A healthy idle connection costs no ping, however long idle; one the
// server terminated is pinged (and so replaced), however briefly idle.
func TestShouldPing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool := newPool(t)
	c, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	params := func(idle time.Duration) pgxpool.ShouldPingParams {
		return pgxpool.ShouldPingParams{Conn: c.Conn(), IdleDuration: idle}
	}
	if ShouldPing(ctx, params(time.Hour)) {
		t.Error("healthy connection idle for an hour: ShouldPing true, want false")
	}
	if _, err := newPool(t).Exec(ctx, "SELECT pg_terminate_backend($1)", c.Conn().PgConn().PID()); err != nil {
		t.Fatal(err)
	}
	for !ShouldPing(ctx, params(0)) {
		if ctx.Err() != nil {
			t.Fatal("ShouldPing still false after the server terminated the connection")
		}
		time.Sleep(time.Millisecond)
	}
}

// A Client opened by URL survives the server dropping its idle pool
// connections less than a second ago (pgxpool's default would hand them
// out unchecked and the next calls would fail).
func TestDroppedIdleConnsReplaced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := backendtest.Open(t, serverURL(t, "pool_max_conns", "4", "prefix", "drop"+randID()+"_"))
	d := b.Driver().(*backend)
	// Several pool connections, each having run the claim statements.
	done := make(chan error, 4)
	for i := range 4 {
		go func() {
			l, err := b.TryClaim(ctx, fmt.Sprint("warm", i), time.Minute)
			if err == nil {
				err = b.Release(ctx, l)
			}
			done <- err
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var pids []uint32
	for _, pc := range d.pool.AcquireAllIdle(ctx) {
		pids = append(pids, pc.Conn().PgConn().PID())
		pc.Release()
	}
	if len(pids) == 0 {
		t.Fatal("no idle connections")
	}
	admin := newPool(t)
	for _, pid := range pids {
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
	}
	for {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)", pids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range len(pids) + 1 {
		l, err := b.TryClaim(ctx, "after-drop", time.Minute)
		if err != nil {
			t.Fatalf("claim %d after the server dropped %d idle connections: %v", i, len(pids), err)
		}
		if err := b.Release(ctx, l); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
}

// AsyncRelease: the release still wakes and frees the key; only its own
// transaction runs with synchronous_commit=off, never the session (a claim
// on the same connection must stay synchronous).
func TestAsyncRelease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "ar" + randID() + "_"
	a, ad := newClient(t, nil, "prefix", prefix, "async_release", "true")
	w, wd := newClient(t, nil, "prefix", prefix)
	if !ad.opt.AsyncRelease || wd.opt.AsyncRelease {
		t.Fatalf("AsyncRelease: %v, %v", ad.opt.AsyncRelease, wd.opt.AsyncRelease)
	}
	l, sub := waitForHolder(ctx, t, a, w, "k", time.Minute)
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	awaitWake(ctx, t, sub, "from an async release")
	l2, err := w.TryClaim(ctx, "k", time.Minute)
	if err != nil || l2.Token <= l.Token {
		t.Fatalf("claim after the async release: %+v, %v", l2, err)
	}
	if err := a.Release(ctx, l); err == nil {
		t.Error("second release of the same lease: no error")
	}
	// CommitRelease: the value is there for the next holder.
	if err := w.CommitRelease(ctx, l2, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	l3, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("value after CommitRelease: %q, %v", v, err)
	}

	show := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) string {
		var s string
		if err := q.QueryRow(ctx, "SHOW synchronous_commit").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	conn, err := ad.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	enc := ad.keys.Encode("k")
	for _, tc := range []struct {
		b    *backend
		want string
	}{{ad, "off"}, {wd, "on"}} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tag, err := tx.Exec(ctx, tc.b.q.release, enc, int64(l3.Token), l3.Holder, ad.channel, keyPayload(enc))
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("release: %v, %v", tag, err)
		}
		if got := show(tx); got != tc.want {
			t.Errorf("synchronous_commit in the release's transaction (AsyncRelease %v): %s, want %s", tc.b.opt.AsyncRelease, got, tc.want)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// CommitReleaseMany's statement runs as CommitRelease's does;
	// Revoke's stays synchronous.
	crm := func(b *backend) []any {
		return []any{[]string{enc}, []int64{int64(l3.Token)}, []string{l3.Holder}, [][]byte{[]byte("w")}, []int64{0}, b.channel}
	}
	for _, tc := range []struct {
		name string
		sql  string
		args []any
		want string
	}{
		{"commit-release-many, async", ad.q.commitReleaseMany, crm(ad), "off"},
		{"commit-release-many", wd.q.commitReleaseMany, crm(wd), "on"},
		{"revoke, async", ad.q.revoke, []any{enc, ad.channel, keyPayload(enc)}, "on"},
	} {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tag, err := tx.Exec(ctx, tc.sql, tc.args...)
		if err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("%s: %v, %v", tc.name, tag, err)
		}
		if got := show(tx); got != tc.want {
			t.Errorf("synchronous_commit in the transaction of %s: %s, want %s", tc.name, got, tc.want)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// As an autocommit statement, as Release sends it.
	tag, err := conn.Exec(ctx, ad.q.release, enc, int64(l3.Token), l3.Holder, ad.channel, keyPayload(enc))
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("release: %v, %v", tag, err)
	}
	if got := show(conn); got != "on" {
		t.Errorf("synchronous_commit on the connection after an async release: %s, want on", got)
	}
}

// tracedDriver records when each of Acquire's TryClaim calls starts and
// returns (only Acquire's goroutine calls it), and calls onWake before
// each wake-up of a subscription.
type tracedDriver struct {
	*backend
	tries  []struct{ start, end time.Time }
	onWake func()
}

func (t *tracedDriver) Subscribe(ctx context.Context, key string, wake func()) error {
	return t.backend.Subscribe(ctx, key, func() {
		t.onWake()
		wake()
	})
}

func (t *tracedDriver) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	s := time.Now()
	l, err := t.backend.TryClaim(ctx, key, holder, ttl)
	t.tries = append(t.tries, struct{ start, end time.Time }{s, time.Now()})
	return l, err
}

// BenchmarkHandoffBreakdown is conformance's Handoff (a holder releases
// after the hold while a waiter in another client blocks in claim.Acquire)
// split into its parts, each a p50 in µs from the start of Release:
// release-µs (Release returned), notify-µs (the waiter's LISTEN
// connection delivered the NOTIFY), claim-sent-µs (Acquire's TryClaim
// started), handoff-µs (Acquire returned; handoff-p99-µs too).
//
//   - fsync=off/hold=…: the shared test server, as conformance.Bench.
//   - fsync=off/hold=1.5s/idlecheck=…: a hold over a second, with
//     pgxpool's default ShouldPing (a ping before reusing a connection
//     idle over a second) and with this package's ShouldPing.
//   - fsync=on/release=…/hold=…: a server of its own with fsync=on, with
//     and without Options.AsyncRelease.
func BenchmarkHandoffBreakdown(b *testing.B) {
	params := []string{"pool_max_conns", "8", "prefix", "bench_"}
	b.Run("fsync=off", func(b *testing.B) {
		u := serverURL(b, params...)
		for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
			b.Run(fmt.Sprintf("hold=%s", hold), func(b *testing.B) { benchBreakdown(b, u, nil, hold) })
		}
		for _, check := range []string{"pgxpool", "stampede"} {
			b.Run("hold=1.5s/idlecheck="+check, func(b *testing.B) {
				ping := ShouldPing
				if check == "pgxpool" {
					ping = nil
				}
				benchBreakdown(b, u, ping, 1500*time.Millisecond)
			})
		}
	})
	b.Run("fsync=on", func(b *testing.B) {
		srv := testserver.RequireWith(b, testserver.Postgres, &testserver.Options{
			Args: []string{"-c", "fsync=on", "-c", "full_page_writes=on"}})
		for _, rel := range []string{"sync", "async"} {
			u := backendtest.WithQuery(b, srv.URL(), append(params, "async_release", fmt.Sprint(rel == "async"))...)
			for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
				b.Run(fmt.Sprintf("release=%s/hold=%s", rel, hold), func(b *testing.B) { benchBreakdown(b, u, ShouldPing, hold) })
			}
		}
	})
}

// benchBreakdown runs handoffs between two Clients opened as by URL u,
// with ping as their pools' ShouldPing.
func benchBreakdown(b *testing.B, u string, ping func(context.Context, pgxpool.ShouldPingParams) bool, hold time.Duration) {
	ctx := context.Background()
	open := func() *backend {
		pu, err := url.Parse(u)
		if err != nil {
			b.Fatal(err)
		}
		opt, conn, err := ParseURL(pu)
		if err != nil {
			b.Fatal(err)
		}
		cfg, err := pgxpool.ParseConfig(conn)
		if err != nil {
			b.Fatal(err)
		}
		cfg.ShouldPing = ping
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		d, err := newBackend(pool, opt)
		if err != nil {
			b.Fatal(err)
		}
		d.ownPool = true
		return d
	}
	traced := &tracedDriver{backend: open()}
	holder, waiter := claim.NewClient(open(), nil), claim.NewClient(traced, nil)
	b.Cleanup(func() { holder.Close(); waiter.Close() })
	var start, notified atomic.Int64
	traced.onWake = func() {
		if now := time.Now().UnixNano(); now >= start.Load() {
			notified.CompareAndSwap(0, now)
		}
	}
	key := "breakdown-" + randID()
	// A subscription of the waiter's own, held throughout, so every
	// NOTIFY of key reaches onWake, even one that arrives after Acquire
	// (which won the key without it) closed its subscription.
	sub, err := waiter.Subscribe(ctx, key)
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Close()
	const ttl = 30 * time.Second
	var rel, note, sent, total []time.Duration
	b.ResetTimer()
	for range b.N {
		l, err := holder.TryClaim(ctx, key, ttl)
		if err != nil {
			b.Fatal(err)
		}
		traced.tries = traced.tries[:0]
		done := make(chan error, 1)
		var at time.Time
		go func() {
			wl, err := waiter.Acquire(ctx, key, ttl)
			at = time.Now()
			if err == nil {
				err = waiter.Release(ctx, wl)
			}
			done <- err
		}()
		time.Sleep(hold)
		notified.Store(0)
		t0 := time.Now()
		start.Store(t0.UnixNano())
		if err := holder.Release(ctx, l); err != nil {
			b.Fatal(err)
		}
		rel = append(rel, time.Since(t0))
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		last := traced.tries[len(traced.tries)-1]
		note = append(note, time.Unix(0, notified.Load()).Sub(t0))
		sent = append(sent, last.start.Sub(t0))
		total = append(total, at.Sub(t0))
	}
	b.StopTimer()
	b.ReportMetric(pct(rel, 0.5), "release-µs")
	b.ReportMetric(pct(note, 0.5), "notify-µs")
	b.ReportMetric(pct(sent, 0.5), "claim-sent-µs")
	b.ReportMetric(pct(total, 0.5), "handoff-µs")
	b.ReportMetric(pct(total, 0.99), "handoff-p99-µs")
}

// BenchmarkRoundTrip is the floor of a handoff: SELECT 1 on a pool
// connection after the connection (and, on a quiet machine, the CPU) sat
// idle for the hold (cold-µs), and right after that (warm-µs), p50.
func BenchmarkRoundTrip(b *testing.B) {
	for _, idle := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		b.Run(fmt.Sprintf("idle=%s", idle), func(b *testing.B) {
			ctx := context.Background()
			c, err := newPool(b).Acquire(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Release()
			var cold, warm []time.Duration
			for range b.N {
				time.Sleep(idle)
				t0 := time.Now()
				if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
					b.Fatal(err)
				}
				cold, warm = append(cold, t1.Sub(t0)), append(warm, time.Since(t1))
			}
			b.ReportMetric(pct(cold, 0.5), "cold-µs")
			b.ReportMetric(pct(warm, 0.5), "warm-µs")
		})
	}
}

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return float64(s[int(p*float64(len(s)-1))].Nanoseconds()) / 1e3
}
