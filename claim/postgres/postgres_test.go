package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testserver.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func randID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// withParams appends query parameters to u.
func withParams(u, params string) string {
	if params == "" {
		return u
	}
	if strings.Contains(u, "?") {
		return u + "&" + params
	}
	return u + "?" + params
}

// serverURL returns the shared server's URL with extra query parameters.
func serverURL(t testing.TB, params string) string {
	return withParams(testserver.Shared(t, testserver.Postgres).URL(), params)
}

// newPool returns a pool on the shared server, closed at cleanup.
func newPool(t testing.TB, params string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), serverURL(t, params))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// newClient returns a Client over its own pool, closed at cleanup, and
// its driver. params may hold this package's parameters; opt, if not nil,
// overrides them (all but the prefix).
func newClient(t testing.TB, params string, opt *Options) (*claim.Client, *backend) {
	t.Helper()
	u, err := url.Parse(serverURL(t, params))
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

// listenerPID returns the server pid of b's live LISTEN connection, or 0.
func listenerPID(b *backend) uint32 {
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	return b.l.pid
}

// TestConformance runs the suite on a server of its own, which the
// DurableFence check kills and restarts (tokens survive it); OpenIsolated
// is another table prefix on it.
func TestConformance(t *testing.T) {
	srv := testserver.Require(t, testserver.Postgres)
	open := func(prefix string) func(context.Context) (*claim.Client, error) {
		u := withParams(srv.URL(), "pool_max_conns=4&prefix="+prefix)
		return func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, u) }
	}
	h := conformance.Harness{Open: open("conf_"), OpenIsolated: open("conf_iso_")}
	if !srv.External() {
		h.Restart = func(ctx context.Context) error {
			if err := srv.Kill(); err != nil {
				return err
			}
			return srv.Restart(ctx)
		}
	}
	conformance.Run(t, h)
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
	for _, bad := range []string{
		"postgres://h/db?maxvalue=-1",
		"postgres://h/db?migrate=maybe",
		"postgres://h/db?sweep=soon",
		"postgres://h/db?async_release=sometimes",
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const pw = "s3cr3t-Pa55"
	for _, u := range []string{
		"postgres://user:" + pw + "@127.0.0.1:1/db?maxvalue=bogus",
		"postgres://user:" + pw + "@127.0.0.1:1/db?prefix=a;b",
		"postgres://user:" + pw + "@127.0.0.1:1/db?sslmode=bogus",
		"postgresql://user:" + pw + "@127.0.0.1:1/db?connect_timeout=2",
		"postgres://user@127.0.0.1:1/db?password=" + pw + "&connect_timeout=2",
	} {
		b, err := claim.Open(ctx, u)
		if err == nil {
			b.Close()
			t.Errorf("Open(%s): no error", claim.RedactURL(u))
			continue
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("Open error shows the password: %v", err)
		}
	}
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
	p := newPool(t, "")
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
	// A long schema+prefix still yields a channel name PostgreSQL accepts.
	b := c.Driver().(*backend)
	b2, err := newBackend(p, &Options{Schema: strings.Repeat("s", 63), TablePrefix: strings.Repeat("p", 40)})
	if err != nil {
		t.Fatal(err)
	}
	if len(b2.channel) > maxIdent || b2.channel == b.channel {
		t.Errorf("channel %q", b2.channel)
	}
}

// TestListenReconnect kills the LISTEN connection's server process while a
// waiter waits, releases the key while that connection is down (so the
// NOTIFY is lost), and shows the waiter still wakes: the reconnect wakes
// every subscriber to re-check.
func TestListenReconnect(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prefix := "prefix=rc" + randID() + "_"
	waiter, wd := newClient(t, prefix, nil)
	holder, hd := newClient(t, prefix, nil)
	gate := make(chan struct{})
	var openGate sync.Once
	defer openGate.Do(func() { close(gate) })
	dialing := make(chan struct{}, 10)
	var dials atomic.Int32
	wd.testHookDial = func() {
		if dials.Add(1) > 1 { // the reconnect, not the first dial
			dialing <- struct{}{}
			<-gate
		}
	}
	const key = "reconnect"
	l, err := holder.TryClaim(ctx, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The waiter: subscribe, see the key held, wait for a wake-up, claim.
	sub, err := waiter.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim on a held key: %v", err)
	}
	pid := listenerPID(wd)
	if pid == 0 {
		t.Fatal("no live listener after Subscribe")
	}
	var ok bool
	if err := hd.pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int32(pid)).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
	}
	select {
	case <-dialing:
	case <-ctx.Done():
		t.Fatal("listener did not notice the terminated connection")
	}
	// The listener is down: this release's NOTIFY reaches nobody here.
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
		t.Fatal("woken during the outage")
	case <-time.After(100 * time.Millisecond):
	}
	openGate.Do(func() { close(gate) })
	// Woken by the reconnect, long before the holder's hour-long lease
	// could have let the waiter in.
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatal("subscriber not woken after reconnect")
	}
	l2, err := waiter.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("TryClaim after wake-up: %v", err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token %d after %d", l2.Token, l.Token)
	}
	if p := listenerPID(wd); p == 0 || p == pid {
		t.Errorf("listener pid %d after reconnect (was %d)", p, pid)
	}
	// Notifications flow again on the new connection.
	if err := holder.Notify(ctx, key); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatal("no wake-up after reconnect")
	}
}

// TestTinyPool: many waiters on a Client whose pool has two connections.
// Waiting takes no pool connection (the LISTEN connection is separate), so
// the pool stays free for other work, and every waiter gets its turn.
func TestTinyPool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prefix := "prefix=tp" + randID() + "_"
	b, bd := newClient(t, prefix+"&pool_max_conns=2", nil)
	other, od := newClient(t, prefix, nil)
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
	if err := od.pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int32(listenerPID(bd))).Scan(&listeners); err != nil || listeners != 1 {
		t.Errorf("listener connection: %d, %v", listeners, err)
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
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	schema := "mig_" + randID()
	p := newPool(t, "pool_max_conns=10")
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half migrate explicitly, half on first use.
			pool, err := pgxpool.New(ctx, serverURL(t, ""))
			if err != nil {
				errs <- err
				return
			}
			defer pool.Close()
			c, err := New(pool, &Options{Schema: schema})
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
	if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE schemaname = $1`, schema).Scan(&tables); err != nil || tables != 2 {
		t.Errorf("tables in %s: %d, %v", schema, tables, err)
	}
	// SkipMigrate leaves a missing table missing.
	b, err := New(p, &Options{Schema: "nomig_" + randID(), SkipMigrate: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Get(ctx, "k"); err == nil || errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get with SkipMigrate on a missing table: %v", err)
	}
}

func TestBroadcast(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "prefix=bc" + randID() + "_"
	a, ad := newClient(t, prefix, nil)
	b, bd := newClient(t, prefix, nil)
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
	big := make([]byte, 6000)
	if err := b.Publish(ctx, "inval", big); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Publish of %d bytes: %v, want ErrTooLarge", len(big), err)
	}
	// A dropped LISTEN connection is reported as a reset.
	var ok bool
	if err := bd.pool.QueryRow(ctx, "SELECT pg_terminate_backend($1)", int32(listenerPID(ad))).Scan(&ok); err != nil || !ok {
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
	b, _ := newClient(t, "prefix=sw"+randID()+"_", &Options{SweepInterval: -1})
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
	b, _ := newClient(t, "prefix=hr"+randID()+"_", nil)
	l, err := b.TryClaim(ctx, "k", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.TryClaim(ctx, "k", time.Second)
	var held *claim.HeldError
	if !errors.As(err, &held) || held.Remaining <= 9*time.Minute || held.Remaining > 10*time.Minute {
		t.Errorf("TryClaim on held key: %v", err)
	}
	// Sub-microsecond and tiny TTLs are rounded up.
	l2, err := b.TryClaim(ctx, "tiny", time.Nanosecond)
	if err != nil || l2.TTL != MinTTL {
		t.Errorf("TryClaim(1ns) = %v, %v", l2, err)
	}
	_ = l
}

// proxy forwards TCP connections to target. Freeze makes every connection
// open at that moment silent without closing it: bytes are swallowed in
// both directions, as when a network path dies without an RST.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*proxyConn
	wg     sync.WaitGroup
}

type proxyConn struct {
	a, b   net.Conn
	frozen atomic.Bool
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", target)
			if err != nil {
				a.Close()
				continue
			}
			c := &proxyConn{a: a, b: b}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			p.wg.Add(2)
			go p.pipe(c, a, b)
			go p.pipe(c, b, a)
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) pipe(c *proxyConn, from, to net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 && !c.frozen.Load() {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			to.Close()
			return
		}
	}
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) freeze() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.frozen.Store(true)
	}
	return len(p.conns)
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.a.Close()
		c.b.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// TestSilentListenConnection: the LISTEN connection goes silent (no RST,
// no error) while a waiter waits and the holder releases. The health check
// finds the dead connection, the driver reconnects and wakes the waiter.
func TestSilentListenConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := testserver.Shared(t, testserver.Postgres)
	px := newProxy(t, srv.Addr())
	prefix := "prefix=sl" + randID() + "_"
	holder, _ := newClient(t, prefix, nil)
	// The pool goes to the server directly, the LISTEN connection
	// through the proxy.
	lc, err := pgx.ParseConfig(strings.Replace(srv.URL(), srv.Addr(), px.addr(), 1))
	if err != nil {
		t.Fatal(err)
	}
	waiter, _ := newClient(t, prefix, &Options{HealthInterval: 200 * time.Millisecond, ListenConfig: lc})
	const key = "silent"
	l, err := holder.TryClaim(ctx, key, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim on a held key: %v", err)
	}
	if n := px.freeze(); n != 1 {
		t.Fatalf("%d proxied connections, want the LISTEN connection only", n)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatal("waiter not woken after its LISTEN connection went silent")
	}
	if _, err := waiter.TryClaim(ctx, key, time.Minute); err != nil {
		t.Fatalf("TryClaim after wake-up: %v", err)
	}
	px.mu.Lock()
	n := len(px.conns)
	px.mu.Unlock()
	if n < 2 {
		t.Errorf("%d proxied connections: the LISTEN connection was not replaced", n)
	}
}

func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"postgres://u:pw@h:5432/db?sslmode=disable&prefix=a_",
		"postgresql://h/db?schema=s&sweep=1s&migrate=false&async_release=true",
		"postgres://h/db?stampede_prefix=1&x=y",
		"postgres://u:12@h/db?maxvalue=12x",
		"postgres://u:pw@h/db?prefix=a;b",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		o, conn, err := ParseURL(u)
		if err != nil {
			if pw, ok := u.User.Password(); ok && pw != "" && strings.Contains(err.Error(), pw) {
				// Unless the message holds that text anyway.
				anon := *u
				anon.User = nil
				_, _, err2 := ParseURL(&anon)
				if err2 == nil || !strings.Contains(err2.Error(), pw) {
					t.Errorf("error shows the password: %v", err)
				}
			}
			return
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
	})
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
	b, _ := newClient(t, "", &Options{ListenConfig: lc})
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
// healthy LISTEN connection keep it (no reconnect, no spurious wake-up),
// and notifications still arrive.
func TestHealthCheckKeepsConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := "prefix=hc" + randID() + "_"
	b, bd := newClient(t, prefix, &Options{HealthInterval: 200 * time.Millisecond})
	other, _ := newClient(t, prefix, nil)
	sub, err := b.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	pid := listenerPID(bd)
	time.Sleep(time.Second) // several health-check rounds
	select {
	case <-sub.C():
		t.Fatal("spurious wake-up: the healthy connection was replaced")
	default:
	}
	if p := listenerPID(bd); p != pid {
		t.Fatalf("listener pid %d, was %d", p, pid)
	}
	if err := other.Notify(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatal("no wake-up")
	}
}

func BenchmarkConformance(b *testing.B) {
	u := serverURL(b, "pool_max_conns=8&prefix=bench_")
	conformance.Bench(b, conformance.Harness{
		Open: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, u) },
	})
}
