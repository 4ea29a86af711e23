package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// countedClient is a Client over a pool of one connection whose requests
// (and those of its LISTEN connection, dialled from the pool's
// configuration) rc counts.
func countedClient(t *testing.T, rc *requestCounter, prefix string) *claim.Client {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(serverURL(t, "pool_max_conns", "1"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.AfterNetConnect = rc.afterNetConnect
	cfg.ShouldPing = ShouldPing // no ping after a second idle
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c, err := New(pool, &Options{TablePrefix: prefix, SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// queued waits until key (as the Client names it) has n live entries in
// c's queue table.
func queued(ctx context.Context, t *testing.T, c *claim.Client, key string, n int) {
	t.Helper()
	d := c.Driver().(*backend)
	for {
		var got int
		err := d.pool.QueryRow(ctx, `SELECT count(*) FROM `+d.q.tableArgs[3].(string)+` WHERE key = $1 AND expires_at > clock_timestamp()`,
			d.keys.Encode(key)).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d entries queued for %q, want %d", got, key, n)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestFairRoundTrips counts requests on the wire: Enqueue, HandOff and
// Dequeue are one request each (two statements in one pipeline) once
// their statements are prepared on the connection; and a waiter in
// AcquireFair sends nothing at all between the holder's release and
// holding the key: the hand-over costs it no claim of its own, the
// grant comes in the NOTIFY.
func TestFairRoundTrips(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "frt" + randID() + "_"
	var hrc, wrc requestCounter
	h, w := countedClient(t, &hrc, prefix), countedClient(t, &wrc, prefix)
	hq, wq := h.Driver().(driver.Queuer), w.Driver().(driver.Queuer)
	const ttl = time.Minute // no renewal (ttl/3) during the test
	cost := func(rc *requestCounter, what string, f func() error) int64 {
		t.Helper()
		before := rc.n.Load()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return rc.n.Load() - before
	}
	for round := range 2 { // round 0 prepares the statements
		k := fmt.Sprintf("k%d", round)
		var l driver.Lease
		costs := map[string]int64{}
		costs["Enqueue (free key)"] = cost(&hrc, "Enqueue of a free key", func() (err error) {
			l, err = hq.Enqueue(ctx, k, "holder", ttl)
			return err
		})
		costs["Enqueue (held key)"] = cost(&wrc, "Enqueue of a held key", func() error {
			_, err := wq.Enqueue(ctx, k, "waiter", ttl)
			if errors.Is(err, driver.ErrHeld) {
				return nil
			}
			return fmt.Errorf("err %v, want ErrHeld", err)
		})
		var g driver.Lease
		costs["HandOff (grant)"] = cost(&hrc, "HandOff", func() (err error) {
			g, err = hq.HandOff(ctx, l)
			if err == nil && g.Holder != "waiter" {
				err = fmt.Errorf("granted to %q", g.Holder)
			}
			return err
		})
		costs["Dequeue (hands on)"] = cost(&wrc, "Dequeue", func() error { return wq.Dequeue(ctx, k, "waiter") })
		l, err := hq.Enqueue(ctx, k, "holder", ttl)
		if err != nil {
			t.Fatalf("Enqueue after the Dequeue released: %v", err)
		}
		costs["HandOff (release)"] = cost(&hrc, "HandOff", func() (err error) {
			g, err = hq.HandOff(ctx, l)
			if err == nil && g.Holder != "" {
				err = fmt.Errorf("granted to %q, nobody queued", g.Holder)
			}
			return err
		})
		for what, n := range costs {
			if round == 0 && n > 2 || round > 0 && n != 1 {
				t.Errorf("%s: %d requests, want 1 (2 the first time)", what, n)
			}
		}
	}

	// Through the Clients: the waiter's AcquireFair queues (one Enqueue)
	// and then sends nothing until it holds the key.
	l, err := h.AcquireFair(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		wl, err := w.AcquireFair(ctx, "k", ttl)
		if err != nil {
			t.Error(err)
		}
		got <- wl
	}()
	queued(ctx, t, h, "k", 1)
	before := wrc.n.Load()
	if err := h.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	wl := <-got
	if n := wrc.n.Load() - before; n != 0 {
		t.Errorf("the waiter sent %d requests from the release to holding the key, want 0", n)
	}
	if wl.Token <= l.Token {
		t.Errorf("granted token %d <= %d", wl.Token, l.Token)
	}
	if _, err := w.Extend(ctx, wl, ttl); err != nil {
		t.Errorf("Extend of the granted lease: %v", err)
	}
	if err := w.Release(ctx, wl); err != nil {
		t.Error(err)
	}
}

// TestFairGrantReconnect: a lost LISTEN connection tells the grant
// subscription it may have missed a grant (a zero Lease), and a grant
// sent while the listener was down reaches the waiter through its next
// Enqueue (step 2) once the listener is back, long before its renewal.
func TestFairGrantReconnect(t *testing.T) {
	ctx := backendtest.Context(t)
	srv := testserver.Shared(t, testserver.Postgres)
	px := securitytest.NewProxy(t, srv.Addr())
	lc, err := pgx.ParseConfig(strings.Replace(srv.URL(), srv.Addr(), px.Addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	prefix := "frc" + randID() + "_"
	waiter, _ := newClient(t, &Options{ListenConfig: lc}, "prefix", prefix)
	holder, _ := newClient(t, nil, "prefix", prefix)
	const ttl = time.Minute // renewal after 20 s: not in this test

	// The driver: a zero Lease on the loss.
	resets := make(chan driver.Lease, 16)
	wq := waiter.Driver().(driver.Queuer)
	if err := wq.SubscribeGrants(ctx, "sub", func(l driver.Lease) { resets <- l }); err != nil {
		t.Fatal(err)
	}
	px.Cut()
	select {
	case l := <-resets:
		if l != (driver.Lease{}) {
			t.Fatalf("grant %v on a connection loss, want a zero Lease", l)
		}
	case <-ctx.Done():
		t.Fatal("no zero Lease after the LISTEN connection was lost")
	}
	px.Restore()
	wq.UnsubscribeGrants("sub")
	// Live again before the second outage: a reconnect (and its wake-up
	// of every grant subscription) still pending from the first would
	// otherwise land in the second, and the waiter's re-Enqueue could
	// find the release's grant while its listener is down (a CI run).
	wd := waiter.Driver().(*backend)
	for {
		wd.l.mu.Lock()
		live, changed := wd.l.live, wd.l.changed
		wd.l.mu.Unlock()
		if live {
			break
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatal("the LISTEN connection did not come back")
		}
	}

	// The Client: a grant lost in the outage is found by the re-Enqueue.
	l, err := holder.AcquireFair(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		wl, err := waiter.AcquireFair(ctx, "k", ttl)
		if err != nil {
			t.Error(err)
		}
		got <- wl
	}()
	queued(ctx, t, holder, "k", 1)
	d := holder.Driver().(*backend)
	entry := func() (exp time.Time) {
		t.Helper()
		err := d.pool.QueryRow(ctx, `SELECT expires_at FROM `+d.q.tableArgs[3].(string)+` WHERE key = $1`, d.keys.Encode("k")).Scan(&exp)
		if err != nil {
			t.Fatal(err)
		}
		return exp
	}
	before := entry()
	px.Cut()
	// The first reconnect fails, the waiter is told it may have missed a
	// grant, and enqueues again (the key is still held): its entry is
	// renewed. Then the release's grant is lost.
	for entry().Equal(before) {
		select {
		case <-ctx.Done():
			t.Fatal("the waiter did not enqueue again after the LISTEN connection was lost")
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	select {
	case wl := <-got:
		t.Fatalf("AcquireFair returned %v while its listener was down", wl)
	case <-time.After(200 * time.Millisecond):
	}
	px.Restore()
	select {
	case wl := <-got:
		if wl.Token <= l.Token {
			t.Errorf("token %d <= %d", wl.Token, l.Token)
		}
		if err := waiter.Release(ctx, wl); err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the grant sent during the outage did not reach the waiter after the reconnect")
	}
}

// TestFairStress: several clients, each with its own pool and LISTEN
// connection, and several waiters in each take turns on one key; some
// waiters give up at random moments (Dequeue, possibly of a grant in
// flight) and some holders die (never release; their short lease is
// taken over by a waiter's Enqueue). Never two holders at once, every
// granted lease is current on the server (the driver's Extend), tokens strictly
// increase in the order of the turns.
func TestFairStress(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "fst" + randID() + "_"
	const clients, perClient, rounds = 6, 3, 8
	const ttl, dieTTL = 5 * time.Second, time.Second
	var (
		inside           atomic.Int32
		mu               sync.Mutex
		tokens           []uint64
		quits, deaths, n atomic.Int32
	)
	var wg sync.WaitGroup
	for ci := range clients {
		c, _ := newClient(t, nil, "prefix", prefix, "pool_max_conns", "3")
		// The LISTEN connection up before the first AcquireFair: a
		// waiter that gives up while its Client's first grant
		// subscription is being made fails the others that joined it
		// (claim's fanout hands them its ctx error).
		backendtest.Subscribe(t, c, "warm")
		for wi := range perClient {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(ci), uint64(wi)))
				for r := range rounds {
					actx, cancel := ctx, context.CancelFunc(func() {})
					if rng.IntN(8) == 0 {
						actx, cancel = context.WithTimeout(ctx, time.Duration(1+rng.IntN(30))*time.Millisecond)
					}
					die := rng.IntN(20) == 0
					lttl := ttl
					if die {
						lttl = dieTTL
					}
					l, err := c.AcquireFair(actx, "k", lttl)
					// (A socket's deadline can pass before ctx's timer fires.)
					dl, timed := actx.Deadline()
					gaveUp := actx.Err() != nil || timed && !time.Now().Before(dl)
					cancel()
					if err != nil {
						if gaveUp && errors.Is(err, context.DeadlineExceeded) {
							quits.Add(1)
							continue
						}
						t.Errorf("client %d waiter %d round %d: AcquireFair: %v (gave up: %v, %#v)", ci, wi, r, err, gaveUp, errors.Unwrap(err))
						return
					}
					if k := inside.Add(1); k != 1 {
						t.Errorf("%d holders at once", k)
					}
					mu.Lock()
					tokens = append(tokens, l.Token)
					mu.Unlock()
					n.Add(1)
					// The driver's Extend: the server judges the lease (the
					// Client's would refuse a short lease whose local,
					// conservative deadline a slow scheduler let pass).
					if _, err := c.Driver().Extend(ctx, l, lttl); err != nil {
						t.Errorf("Extend of a granted lease (token %d): %v", l.Token, err)
					}
					time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
					inside.Add(-1)
					if die {
						deaths.Add(1)
						continue // its lease runs out; a waiter takes over
					}
					if err := c.Release(ctx, l); err != nil {
						t.Errorf("Release: %v", err)
					}
				}
			}()
		}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("turn %d: token %d <= the previous turn's %d", i, tokens[i], tokens[i-1])
		}
	}
	t.Logf("%d turns, %d waiters gave up, %d holders died", n.Load(), quits.Load(), deaths.Load())
	if int(n.Load()+quits.Load()) != clients*perClient*rounds {
		t.Errorf("%d turns + %d give-ups, want %d", n.Load(), quits.Load(), clients*perClient*rounds)
	}
}

func TestParseGrant(t *testing.T) {
	l, err := parseGrant("a%20b 42 1500000 holder with spaces")
	if err != nil {
		t.Fatal(err)
	}
	want := driver.Lease{Key: "a%20b", Holder: "holder with spaces", Token: 42, TTL: 1500 * time.Millisecond}
	if l != want {
		t.Errorf("parseGrant: %+v, want %+v", l, want)
	}
	for _, p := range []string{"", "k", "k 1 2", "k 1 2 ", "k x 2 h", "k 1 -2 h", "k 1 y h"} {
		if _, err := parseGrant(p); err == nil {
			t.Errorf("parseGrant(%q): no error", p)
		}
	}
}

// BenchmarkFairHandoff compares the hand-over of AcquireFair (the grant
// in the NOTIFY) with Acquire's (a wake-up, then the waiter's claim), as
// conformance's Handoff benchmark measures it: from the start of the
// holder's Release to the waiter, in another Client, holding the key.
// Each op is one hand-over of each kind, interleaved (so a busy machine
// slows both alike), and includes the hold twice: use -benchtime=Nx.
// fair-… and acquire-… are the hand-over's percentiles, …-release-p50
// the holder's Release call alone (HandOff: two statements, one round
// trip; Release: one statement).
func BenchmarkFairHandoff(b *testing.B) {
	const hold = 20 * time.Millisecond
	ctx := context.Background()
	u := serverURL(b, "pool_max_conns", "4", "prefix", "bench_")
	open := func() *claim.Client {
		c, err := claim.Open(ctx, u)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	holder, waiter := open(), open()
	key := "fairbench/" + randID()
	const ttl = 30 * time.Second
	type mode struct {
		name         string
		acquire      func(c *claim.Client) (claim.Lease, error)
		lat, release []time.Duration
	}
	modes := []*mode{
		{name: "acquire", acquire: func(c *claim.Client) (claim.Lease, error) { return c.Acquire(ctx, key+"/acquire", ttl) }},
		{name: "fair", acquire: func(c *claim.Client) (claim.Lease, error) { return c.AcquireFair(ctx, key+"/fair", ttl) }},
	}
	b.ResetTimer()
	for range b.N {
		for _, m := range modes {
			l, err := m.acquire(holder)
			if err != nil {
				b.Fatal(err)
			}
			type result struct {
				at  time.Time
				err error
			}
			res := make(chan result, 1)
			go func() {
				wl, err := m.acquire(waiter)
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
			m.release = append(m.release, time.Since(start))
			r := <-res
			if r.err != nil {
				b.Fatal(r.err)
			}
			m.lat = append(m.lat, r.at.Sub(start))
		}
	}
	for _, m := range modes {
		b.ReportMetric(pct(m.lat, 0.5), m.name+"-p50-µs")
		b.ReportMetric(pct(m.lat, 0.99), m.name+"-p99-µs")
		b.ReportMetric(pct(m.release, 0.5), m.name+"-release-p50-µs")
	}
}

// TestFairExecModes: the queue operations (two-statement pipelines) in
// each of pgx's query modes, with holder IDs that need quoting (the
// simple protocol inlines the arguments).
func TestFairExecModes(t *testing.T) {
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			ctx := backendtest.Context(t)
			prefix := "fem" + randID() + "_"
			h, _ := newClient(t, nil, "prefix", prefix, "default_query_exec_mode", mode)
			w, _ := newClient(t, nil, "prefix", prefix, "default_query_exec_mode", mode)
			hq, wq := h.Driver().(driver.Queuer), w.Driver().(driver.Queuer)
			const k, hid, wid = "k'", `h'1\`, "w 'x"
			grants := make(chan driver.Lease, 4)
			if err := wq.SubscribeGrants(ctx, k, func(l driver.Lease) { grants <- l }); err != nil {
				t.Fatal(err)
			}
			defer wq.UnsubscribeGrants(k)
			l, err := hq.Enqueue(ctx, k, hid, time.Hour)
			if err != nil {
				t.Fatalf("Enqueue of a free key: %v", err)
			}
			if _, err := wq.Enqueue(ctx, k, wid, time.Hour); !errors.Is(err, driver.ErrHeld) {
				t.Fatalf("Enqueue of a held key: %v, want ErrHeld", err)
			}
			g, err := hq.HandOff(ctx, l)
			if err != nil || g.Holder != wid || g.Token <= l.Token || g.TTL != time.Hour {
				t.Fatalf("HandOff: %+v, %v; want a grant to %q, token > %d, TTL 1h", g, err, wid, l.Token)
			}
			select {
			case got := <-grants:
				if got != g {
					t.Errorf("grant delivered %+v, HandOff returned %+v", got, g)
				}
			case <-ctx.Done():
				t.Fatal("no grant delivered")
			}
			if err := wq.Dequeue(ctx, k, wid); err != nil {
				t.Fatalf("Dequeue of the granted waiter: %v", err)
			}
			l2, err := h.TryClaim(ctx, k, time.Hour)
			if err != nil || l2.Token <= g.Token {
				t.Fatalf("TryClaim after the granted waiter left: %+v, %v", l2, err)
			}
		})
	}
}
