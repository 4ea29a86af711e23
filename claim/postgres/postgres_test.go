package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

func randID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// serverURL returns the shared server's URL with the query parameters
// params (name, value, ...) set.
func serverURL(t testing.TB, params ...string) string {
	t.Helper()
	return backendtest.WithQuery(t, testserver.Shared(t, testserver.Postgres).URL(), params...)
}

// newPool returns a pool on the shared server, closed at cleanup.
func newPool(t testing.TB, params ...string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), serverURL(t, params...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// newClient returns a Client over its own pool, closed at cleanup, and
// its driver. params may hold this package's parameters; opt, if not nil,
// overrides them (all but the prefix).
func newClient(t testing.TB, opt *Options, params ...string) (*claim.Client, *backend) {
	t.Helper()
	u, err := url.Parse(serverURL(t, params...))
	if err != nil {
		t.Fatal(err)
	}
	o, conn, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if opt != nil {
		opt.TablePrefix = o.TablePrefix
		o = opt
	}
	p, err := pgxpool.New(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, err := New(p, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, c.Driver().(*backend)
}

// listenQuery is what pg_stat_activity shows for d's LISTEN connection
// until its first health-check ping.
func listenQuery(d *backend) string { return "LISTEN " + pgx.Identifier{d.channel}.Sanitize() }

// awaitWake waits for a wake-up on sub.
func awaitWake(ctx context.Context, t *testing.T, sub *claim.Subscription, what string) {
	t.Helper()
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatalf("no wake-up: %s", what)
	}
}

// waitForHolder claims key in holder for ttl and subscribes to it in
// waiter, which sees it held: a waiter waiting for the holder's release.
func waitForHolder(ctx context.Context, t *testing.T, holder, waiter *claim.Client, key string, ttl time.Duration) (claim.Lease, *claim.Subscription) {
	t.Helper()
	l, sub := backendtest.Claim(t, holder, key, ttl), backendtest.Subscribe(t, waiter, key)
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim on a held key: %v", err)
	}
	return l, sub
}

// TestConformance runs the suite on a server of its own, which the
// DurableFence check kills and restarts (tokens survive it). The isolated
// namespace is another schema with the same table names; maxvalue is low
// enough for TooLarge to round-trip a value of exactly the limit.
func TestConformance(t *testing.T) {
	srv := testserver.Require(t, testserver.Postgres)
	conformance.Run(t, backendtest.Harness(srv, func(ns string) string {
		return backendtest.WithQuery(t, srv.URL(), "pool_max_conns", "4", "schema", "conf"+ns, "prefix", "conf_", "maxvalue", "1048576")
	}))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) {
	srv := testserver.Shared(t, testserver.Postgres)
	backendtest.FlightOn(t, backendtest.Harness(srv, func(string) string {
		return backendtest.WithQuery(t, srv.URL(), "pool_max_conns", "4", "schema", "flight")
	}))
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, conn string
		want     Options
	}{
		{"postgres://u@h:5432/db?sslmode=disable", "postgres://u@h:5432/db?sslmode=disable", Options{}},
		{"postgresql://u@h/db?schema=s1&pool_max_conns=3&prefix=app_",
			"postgresql://u@h/db?pool_max_conns=3", Options{Schema: "s1", TablePrefix: "app_"}},
		{"postgres://h/db?maxvalue=1024&migrate=false&sweep=10s&sslrootcert=/ca.pem",
			"postgres://h/db?sslrootcert=%2Fca.pem", Options{MaxValueLen: 1024, SkipMigrate: true, SweepInterval: 10 * time.Second}},
		{"postgres://h/db?sweep=0", "postgres://h/db", Options{SweepInterval: -1}},
		{"postgres://h/db?async_release=true", "postgres://h/db", Options{AsyncRelease: true}},
		{"postgres://h/db?value_wake=false", "postgres://h/db", Options{NoValueWake: true}},
		{"postgres://h/db?value_wake=true", "postgres://h/db", Options{}},
	} {
		u, _ := url.Parse(tc.in)
		o, conn, err := ParseURL(u)
		if err != nil {
			t.Errorf("ParseURL(%s): %v", tc.in, err)
			continue
		}
		if conn != tc.conn || *o != tc.want {
			t.Errorf("ParseURL(%s) = %+v, %q; want %+v, %q", tc.in, *o, conn, tc.want, tc.conn)
		}
	}
	// The Client's parameters, for New: Options.Client.
	u, _ := url.Parse("postgres://h/db?lazy=true&op_timeout=2s&sslmode=disable")
	if o, conn, err := ParseURL(u); err != nil || conn != "postgres://h/db?sslmode=disable" || o.Client == nil || !o.Client.Lazy || o.Client.OpTimeout != 2*time.Second {
		t.Errorf("ParseURL(%s) = %+v, %q, %v; want Client{Lazy, 2s}", u, o, conn, err)
	}
	for _, bad := range []string{
		"postgres://h/db?lazy=maybe",
		"postgres://h/db?op_timeout=soon",
		"postgres://h/db?maxvalue=-1",
		"postgres://h/db?migrate=maybe",
		"postgres://h/db?sweep=soon",
		"postgres://h/db?async_release=sometimes",
		"postgres://h/db?value_wake=sometimes",
		"postgres://h/db?schema=a&schema=b",
		"postgres://h/db?prefix=a;sslmode=disable",
		"postgres://h/db?prefix=%zz",
		"postgres://h/db?stampede_prefix=a_",
		"postgres://h/db?cacert=/ca.pem",
		"postgres://h/db?dial_timeout=1s",
		"mysql://h/db",
	} {
		u, _ := url.Parse(bad)
		if _, _, err := ParseURL(u); err == nil {
			t.Errorf("ParseURL(%s): no error", bad)
		}
	}
}

func TestOpenErrorsHideSecrets(t *testing.T) {
	const pw = "s3cr3t-Pa55"
	securitytest.OpenFails(t, pw,
		"postgres://user:"+pw+"@127.0.0.1:1/db?maxvalue=bogus",
		"postgres://user:"+pw+"@127.0.0.1:1/db?prefix=a;b",
		"postgres://user:"+pw+"@127.0.0.1:1/db?sslmode=bogus",
		"postgresql://user:"+pw+"@127.0.0.1:1/db?connect_timeout=2",
		"postgres://user@127.0.0.1:1/db?password="+pw+"&connect_timeout=2",
	)
	// Both schemes are registered.
	for _, s := range []string{"postgres", "postgresql"} {
		found := false
		for _, r := range claim.Schemes() {
			found = found || r == s
		}
		if !found {
			t.Errorf("scheme %q not registered", s)
		}
	}
}

func TestOptions(t *testing.T) {
	p := newPool(t)
	for _, o := range []Options{
		{MaxValueLen: MaxValueLimit + 1},
		{MaxValueLen: -1},
		{Schema: strings.Repeat("s", 64)},
		{TablePrefix: strings.Repeat("p", 50)},
	} {
		if _, err := New(p, &o); err == nil {
			t.Errorf("New(%+v): no error", o)
		}
	}
	c, err := New(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f := c.Features()
	if f.MaxValueLen != DefaultMaxValueLen || !f.DurableFence || !f.AtomicCommit || f.Notify != claim.Push || !f.Broadcast {
		t.Errorf("Features = %+v", f)
	}
	var got *pgxpool.Pool
	if !c.As(&got) || got != p {
		t.Errorf("As(**pgxpool.Pool) = %v, %p; want the pool %p", c.As(&got), got, p)
	}
	var other *pgx.Conn
	if c.As(&other) {
		t.Error("As(**pgx.Conn) = true")
	}
	mem, _ := memory.New(nil, nil)
	defer mem.Close()
	if err := Migrate(context.Background(), mem); err == nil {
		t.Error("Migrate of a Client of another backend: no error")
	}
}

// TestListenReconnect cuts the LISTEN connection while a waiter waits: it
// cannot come back at once, so the waiter is woken to re-check (and finds
// the key still held). Then the key is released while the connection is
// down (so the NOTIFY is lost), and the waiter still wakes: the reconnect
// wakes every subscriber to re-check.
func TestListenReconnect(t *testing.T) {
	ctx := backendtest.Context(t)
	srv := testserver.Shared(t, testserver.Postgres)
	px := securitytest.NewProxy(t, srv.Addr())
	// The pool goes to the server directly, the LISTEN connection
	// through the proxy.
	lc, err := pgx.ParseConfig(strings.Replace(srv.URL(), srv.Addr(), px.Addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	prefix := "rc" + randID() + "_"
	waiter, _ := newClient(t, &Options{ListenConfig: lc}, "prefix", prefix)
	holder, _ := newClient(t, nil, "prefix", prefix)
	l, sub := waitForHolder(ctx, t, holder, waiter, "reconnect", time.Hour)
	px.Cut()
	awaitWake(ctx, t, sub, "LISTEN connection lost, not back at once")
	if _, err := waiter.TryClaim(ctx, "reconnect", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim after the outage's wake-up: %v, want ErrHeld", err)
	}
	// The listener is down: this release's NOTIFY reaches nobody here.
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
		t.Fatal("woken twice during one outage")
	case <-time.After(100 * time.Millisecond):
	}
	px.Restore()
	// Woken by the reconnect, long before the holder's hour-long lease
	// could have let the waiter in.
	awaitWake(ctx, t, sub, "after reconnect")
	l2, err := waiter.TryClaim(ctx, "reconnect", time.Minute)
	if err != nil {
		t.Fatalf("TryClaim after wake-up: %v", err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token %d after %d", l2.Token, l.Token)
	}
	if n := px.Accepted(); n < 2 {
		t.Errorf("%d connections through the proxy: the LISTEN connection was not replaced", n)
	}
	// Notifications flow again on the new connection.
	if err := holder.Notify(ctx, "reconnect"); err != nil {
		t.Fatal(err)
	}
	awaitWake(ctx, t, sub, "Notify after reconnect")
}

// TestTinyPool: many waiters on a Client whose pool has two connections.
// Waiting takes no pool connection (the LISTEN connection is separate), so
// the pool stays free for other work, and every waiter gets its turn.
func TestTinyPool(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "tp" + randID() + "_"
	b, bd := newClient(t, nil, "prefix", prefix, "pool_max_conns", "2")
	other, od := newClient(t, nil, "prefix", prefix)
	const key, waiters = "tiny", 40
	l, err := other.TryClaim(ctx, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var waiting, done sync.WaitGroup
	var acquired atomic.Int32
	var maxToken atomic.Uint64
	errs := make(chan error, waiters)
	waiting.Add(waiters)
	done.Add(waiters)
	for range waiters {
		go func() {
			defer done.Done()
			sub, err := b.Subscribe(ctx, key)
			if err != nil {
				errs <- err
				waiting.Done()
				return
			}
			defer sub.Close()
			first := true
			for {
				lease, err := b.TryClaim(ctx, key, time.Minute)
				if err == nil {
					acquired.Add(1)
					if lease.Token > maxToken.Load() {
						maxToken.Store(lease.Token)
					}
					if first {
						waiting.Done()
					}
					errs <- b.Release(ctx, lease)
					return
				}
				if !errors.Is(err, claim.ErrHeld) {
					errs <- err
					if first {
						waiting.Done()
					}
					return
				}
				if first {
					waiting.Done()
					first = false
				}
				select {
				case <-sub.C():
				case <-ctx.Done():
					errs <- ctx.Err()
					return
				}
			}
		}()
	}
	waiting.Wait()
	if n := acquired.Load(); n != 0 {
		t.Fatalf("%d waiters acquired a held key", n)
	}
	// Everyone is waiting: the pool is idle and usable.
	if s := bd.pool.Stat(); s.AcquiredConns() != 0 || s.TotalConns() > 2 {
		t.Errorf("while waiting: %d pool connections acquired, %d total", s.AcquiredConns(), s.TotalConns())
	}
	qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
	if err := b.Set(qctx, "tiny-other", []byte("v"), 0); err != nil {
		t.Errorf("Set while %d waiters wait: %v", waiters, err)
	}
	qcancel()
	var listeners int
	if err := od.pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = $1", listenQuery(bd)).Scan(&listeners); err != nil || listeners != 1 {
		t.Errorf("LISTEN connections: %d, %v; want 1", listeners, err)
	}
	if err := other.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	done.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := acquired.Load(); n != waiters {
		t.Errorf("%d of %d waiters acquired", n, waiters)
	}
	if mt := maxToken.Load(); mt != l.Token+waiters {
		t.Errorf("last token %d, want %d", mt, l.Token+waiters)
	}
}

// TestConcurrentMigrate starts many Clients at once on a fresh schema:
// creating the schema and tables must not race.
func TestConcurrentMigrate(t *testing.T) {
	ctx := backendtest.Context(t)
	schema := "mig_" + randID()
	p := newPool(t, "pool_max_conns", "10")
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half migrate when New checks the server (and then
			// explicitly), half on first use.
			pool, err := pgxpool.New(ctx, serverURL(t))
			if err != nil {
				errs <- err
				return
			}
			defer pool.Close()
			c, err := New(pool, &Options{Schema: schema, Client: &claim.Options{Lazy: i%2 == 1}})
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if i%2 == 0 {
				errs <- Migrate(ctx, c)
			} else {
				errs <- c.Set(ctx, fmt.Sprint("k", i), []byte("v"), 0)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	var tables int
	if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&tables); err != nil || tables != 3 {
		t.Errorf("tables in %s: %d, %v", schema, tables, err)
	}
	// SkipMigrate leaves a missing table missing: the first call of a
	// Client made lazily says so (New's check: TestNewKeepsPoolOnFailure).
	nomig := &Options{Schema: "nomig_" + randID(), SkipMigrate: true, Client: &claim.Options{Lazy: true}}
	b, err := New(p, nomig)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Get with SkipMigrate on a missing table: %v, want ErrConfig", err)
	}
}

// TestBroadcast: topics share the keys' channel (other topics' messages
// are not delivered), and a LISTEN connection the server terminated is
// reported to topic handlers as a reset.
func TestBroadcast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "bc" + randID() + "_"
	a, ad := newClient(t, nil, "prefix", prefix)
	b, bd := newClient(t, nil, "prefix", prefix)
	got := make(chan string, 10)
	stop, err := a.SubscribeTopic(ctx, "inval", func(msg []byte, reset bool) {
		if reset {
			got <- "<reset>"
			return
		}
		got <- string(msg)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, m := range []string{"k1", "", "k\x00\xff"} {
		if err := b.Publish(ctx, "inval", []byte(m)); err != nil {
			t.Fatal(err)
		}
		if err := b.Publish(ctx, "other", []byte("x")); err != nil {
			t.Fatal(err)
		}
		select {
		case g := <-got:
			if g != m {
				t.Errorf("got %q, want %q", g, m)
			}
		case <-ctx.Done():
			t.Fatal("message not delivered")
		}
	}
	var ok bool
	if err := bd.pool.QueryRow(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = $1", listenQuery(ad)).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend: %v, %v", ok, err)
	}
	select {
	case g := <-got:
		if g != "<reset>" {
			t.Errorf("got %q after reconnect, want a reset", g)
		}
	case <-ctx.Done():
		t.Fatal("no reset after reconnect")
	}
}

func TestSweep(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _ := newClient(t, &Options{SweepInterval: -1}, "prefix", "sw"+randID()+"_")
	for i := range 5 {
		if err := b.Set(ctx, fmt.Sprint("short", i), []byte("v"), time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Set(ctx, "long", []byte("v"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(ctx, "forever", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	n, err := Sweep(ctx, b)
	if err != nil || n != 5 {
		t.Errorf("Sweep = %d, %v; want 5", n, err)
	}
	for _, k := range []string{"long", "forever"} {
		if _, err := b.Get(ctx, k); err != nil {
			t.Errorf("Get(%s) after sweep: %v", k, err)
		}
	}
}

func TestHeldRemainingFromServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _ := newClient(t, nil, "prefix", "hr"+randID()+"_")
	if _, err := b.TryClaim(ctx, "k", 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err := b.TryClaim(ctx, "k", time.Second)
	var held *claim.HeldError
	if !errors.As(err, &held) || held.Remaining <= 9*time.Minute || held.Remaining > 10*time.Minute {
		t.Errorf("TryClaim on held key: %v", err)
	}
	// Sub-microsecond and tiny TTLs are rounded up.
	l2, err := b.TryClaim(ctx, "tiny", time.Nanosecond)
	if err != nil || l2.TTL != MinTTL {
		t.Errorf("TryClaim(1ns) = %v, %v", l2, err)
	}
}

// A TryClaimRead that waits for the claim row lock of a CommitRelease
// still in progress, and wins the claim when it commits, returns the value
// that CommitRelease wrote, although that value is not in the snapshot the
// claim statement started with. So does TryClaimMany, for that key, with
// another key in the same batch.
func TestClaimReadSeesReleaseDuringWait(t *testing.T) {
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) { claimReadSeesReleaseDuringWait(t, batch) })
	}
}

func claimReadSeesReleaseDuringWait(t *testing.T, batch bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "fp" + randID() + "_"
	a, ad := newClient(t, nil, "prefix", prefix)
	b, _ := newClient(t, nil, "prefix", prefix)
	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "other", []byte("o"), 0); err != nil {
		t.Fatal(err)
	}
	// a's CommitRelease, held open in a transaction.
	enc := ad.keys.Encode("k")
	tx, tag := openStatement(ctx, t, ad, ad.q.commitRelease, enc, []byte("committed"), int64(0), int64(l.Token), l.Holder, ad.channel, keyPayload(enc))
	if tag.RowsAffected() != 1 {
		t.Fatalf("commit-release in a transaction changed %d rows", tag.RowsAffected())
	}
	type res struct {
		v     []byte
		found bool
		err   error
	}
	done := make(chan error, 1)
	var r res
	go func() {
		if !batch {
			l, v, found, err := b.TryClaimRead(ctx, "k", time.Minute)
			if err == nil {
				_ = b.Release(context.Background(), l)
			}
			r = res{v, found, err}
			done <- err
			return
		}
		got, err := b.TryClaimMany(ctx, []string{"other", "k"}, time.Minute)
		if err == nil {
			for _, g := range got {
				if g.Err == nil {
					_ = b.Release(context.Background(), g.Lease)
				}
			}
			if o := got[0]; o.Err != nil || !o.Found || string(o.Value) != "o" {
				t.Errorf("TryClaimMany: the other key: %q, found %v, %v; want its value", o.Value, o.Found, o.Err)
			}
			r = res{got[1].Value, got[1].Found, got[1].Err}
		}
		done <- err
	}()
	// Wait until the claim statement is blocked on the row lock.
	start := "WITH snap AS"
	if batch {
		start = "WITH req AS"
	}
	awaitLockWait(ctx, t, ad, start, prefix, done)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r.err != nil || !r.found || string(r.v) != "committed" {
		t.Fatalf("TryClaimRead after a concurrent CommitRelease: %q, found %v, %v; want the committed value", r.v, r.found, r.err)
	}
}

// FuzzParseURL: no URL makes ParseURL panic or puts its password in an
// error, and what it accepts is Options and a connection string without
// this package's parameters.
func FuzzParseURL(f *testing.F) {
	securitytest.FuzzURL(f, func(t *testing.T, u *url.URL) error {
		o, conn, err := ParseURL(u)
		if err != nil {
			return err
		}
		c, err := url.Parse(conn)
		if err != nil {
			t.Fatalf("connection string %q does not parse: %v", conn, err)
		}
		for _, k := range ourParams {
			if c.Query().Has(k) {
				t.Errorf("connection string %q keeps %s", conn, k)
			}
		}
		if o == nil {
			t.Fatal("nil Options without error")
		}
		return nil
	},
		"postgres://u:pw@h:5432/db?sslmode=disable&prefix=a_",
		"postgresql://h/db?schema=s&sweep=1s&migrate=false&async_release=true",
		"postgres://h/db?stampede_prefix=1&x=y",
		"postgres://u:12@h/db?maxvalue=12x",
		"postgres://u:pw@h/db?prefix=a;b",
	)
}

// TestSubscribeUnreachable: when the LISTEN connection cannot be made,
// Subscribe fails with the dial error instead of hanging.
func TestSubscribeUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	lc, err := pgx.ParseConfig("postgres://postgres:hunter2@" + dead + "/postgres?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newClient(t, &Options{ListenConfig: lc})
	s, err := b.Subscribe(ctx, "k")
	if err == nil {
		s.Close()
		t.Fatal("Subscribe succeeded without a LISTEN connection")
	}
	if ctx.Err() != nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Subscribe: %v", err)
	}
	// Close ends the background reconnect loop (goleak checks).
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Subscribe(ctx, "k"); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("Subscribe after Close: %v", err)
	}
}

// TestHealthCheckKeepsConnection: health-check pings on a quiet but
// healthy LISTEN connection keep it (no reconnect, which would wake every
// subscriber), and notifications still arrive.
func TestHealthCheckKeepsConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "hc" + randID() + "_"
	b, _ := newClient(t, &Options{HealthInterval: 200 * time.Millisecond}, "prefix", prefix)
	other, _ := newClient(t, nil, "prefix", prefix)
	sub, err := b.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	time.Sleep(time.Second) // several health-check rounds
	select {
	case <-sub.C():
		t.Fatal("spurious wake-up: the healthy connection was replaced")
	default:
	}
	if err := other.Notify(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	awaitWake(ctx, t, sub, "Notify")
}

func BenchmarkConformance(b *testing.B) {
	u := serverURL(b, "pool_max_conns", "8", "prefix", "bench_")
	conformance.Bench(b, conformance.Harness{
		Open: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, u) },
	})
}

// TestClaimReadAfterRevoke: a claim of a key whose revocation (Revoke's
// transaction, played here by hand: its first statement, then the
// value's write, then the commit) is under way waits for it, and then
// reads the value the revocation stored, although that value is not in
// the snapshot the claim statement started with. For a free key (claimed
// and released before, no value) and for a key never claimed (no claim
// row), by TryClaimRead and by TryClaimMany. With the revocation leaving
// the token as it was, the first case read no value (the claim row
// looked unchanged since the snapshot), and in the second the claim did
// not wait at all and the revocation did not end it: either way a holder
// that then computed the value committed it over RevokeSet's (found by
// the soak: a value loaded in a call that began after a Set returned).
func TestClaimReadAfterRevoke(t *testing.T) {
	for _, fresh := range []bool{false, true} {
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprintf("fresh=%v/batch=%v", fresh, batch), func(t *testing.T) { claimReadAfterRevoke(t, fresh, batch) })
		}
	}
}

func claimReadAfterRevoke(t *testing.T, fresh, batch bool) {
	ctx := backendtest.Context(t)
	prefix := "rv" + randID() + "_"
	a, ad := newClient(t, nil, "prefix", prefix)
	b, _ := newClient(t, nil, "prefix", prefix)
	if !fresh {
		l, err := a.TryClaim(ctx, "k", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	enc := ad.keys.Encode("k")
	tx, _ := openStatement(ctx, t, ad, ad.q.revoke, enc, ad.channel, keyPayload(enc))
	type res struct {
		l     claim.Lease
		v     []byte
		found bool
		err   error
	}
	done := make(chan error, 1)
	var r res
	go func() {
		if batch {
			var got []claim.Claimed
			if got, r.err = b.TryClaimMany(ctx, []string{"k"}, time.Minute); r.err == nil {
				r = res{got[0].Lease, got[0].Value, got[0].Found, got[0].Err}
			}
		} else {
			r.l, r.v, r.found, r.err = b.TryClaimRead(ctx, "k", time.Minute)
		}
		done <- r.err
	}()
	start := "WITH snap AS"
	if batch {
		start = "WITH req AS"
	}
	awaitLockWait(ctx, t, ad, start, prefix, done)
	if _, err := tx.Exec(ctx, ad.q.set, enc, []byte("new"), int64(0)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("claim: %v", err)
	}
	if !r.found || string(r.v) != "new" {
		t.Errorf("a claim that waited for a revocation read %q (found %v), want the value it stored", r.v, r.found)
	}
	if err := b.CommitRelease(ctx, r.l, []byte("mine"), time.Minute); err != nil {
		t.Errorf("CommitRelease of a lease taken after the revocation: %v", err)
	}
}
