package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// drv is the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

// withPrefix returns the server's URL with ?prefix=prefix.
func withPrefix(t testing.TB, srv *testserver.Server, prefix string) string {
	t.Helper()
	return backendtest.WithQuery(t, srv.URL(), "prefix", prefix)
}

// userClient is an etcd client of the user's own (closed when the test
// ends), configured by cfg plus a dial timeout and a quiet logger.
func userClient(t *testing.T, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.DialTimeout, cfg.Logger = 5*time.Second, zap.NewNop()
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestConformance runs the suite on a server of its own, which its
// DurableFence check may kill and restart.
func TestConformance(t *testing.T) {
	srv := testserver.Require(t, testserver.Etcd)
	conformance.Run(t, backendtest.Harness(srv, func(ns string) string {
		return withPrefix(t, srv, "conformance-"+ns)
	}))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	backendtest.FlightOn(t, backendtest.Harness(srv, func(string) string { return withPrefix(t, srv, "flight") }))
}

func BenchmarkConformance(b *testing.B) {
	srv := testserver.Shared(b, testserver.Etcd)
	conformance.Bench(b, backendtest.Harness(srv, func(string) string { return withPrefix(b, srv, "bench") }))
}

// TestNew: a Client on the caller's own etcd client, with no I/O at New,
// leaves the etcd client open when closed.
func TestNew(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	cli := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()}})
	ctx := context.Background()
	if _, err := New(nil, nil); err == nil {
		t.Error("New(nil client) succeeded")
	}
	d, err := New(cli, nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := d.Features(); f.MinTTL != DefaultMinTTL || f.MaxValueLen != DefaultMaxValueLen {
		t.Errorf("Features with nil Options = %+v, want MinTTL %s, MaxValueLen %d", f, DefaultMinTTL, DefaultMaxValueLen)
	}
	var got *clientv3.Client
	if !d.As(&got) || got != cli {
		t.Errorf("As(**clientv3.Client) = %v, %p; want the client given to New", d.As(&got), got)
	}
	d.Close()
	c, err := New(cli, &Options{Prefix: "mine/", MinTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Features(); f.MinTTL != time.Second || f.TTLGranularity != time.Second || !f.DurableFence || !f.AtomicCommit {
		t.Errorf("Features = %+v", f)
	}
	l, err := c.TryClaim(ctx, "k", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if l.TTL != 2*time.Second {
		t.Errorf("TTL granted for 1.5s = %s, want 2s (whole seconds, rounded up)", l.TTL)
	}
	r, err := cli.Get(ctx, "mine/c/=k")
	if err != nil || len(r.Kvs) != 1 || uint64(r.Kvs[0].CreateRevision) != l.Token {
		t.Errorf("lock key under the prefix: %v, %v (token %d)", r, err, l.Token)
	}
	// Extend with another TTL moves the lock key to a new lease.
	l2, err := c.Extend(ctx, l, 5*time.Second)
	if err != nil || l2.TTL != 5*time.Second || l2.Handle == l.Handle || l2.Token != l.Token {
		t.Fatalf("Extend to 5s = %v, %v", l2, err)
	}
	// The old handle is stale, but the renewal is judged by the token.
	if _, err := c.Extend(ctx, l, 5*time.Second); err != nil {
		t.Errorf("Extend retried with the pre-extension lease: %v", err)
	}
	if err := c.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "x"); err != nil {
		t.Errorf("client closed by the Client's Close: %v", err)
	}
}

// TestMinTTL: without minttl, Open asks the server (the test server runs
// with a 500 ms election timeout, so its minimum is 1 s; etcd's default is
// 2 s).
func TestMinTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	c := backendtest.Open(t, srv.URL())
	g, err := drv(c).cli.Load().Grant(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = drv(c).cli.Load().Revoke(context.Background(), g.ID)
	if got, want := c.Features().MinTTL, time.Duration(g.TTL)*time.Second; got != want {
		t.Errorf("MinTTL = %s, want %s (granted for a 1 s request)", got, want)
	}
	c = backendtest.Open(t, srv.URL()+"?minttl=3s")
	if got := c.Features().MinTTL; got != 3*time.Second {
		t.Errorf("MinTTL with minttl=3s = %s", got)
	}
	l, err := c.TryClaim(context.Background(), "minttl", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(context.Background(), l)
	if l.TTL != 3*time.Second {
		t.Errorf("TTL = %s, want the configured minimum 3s", l.TTL)
	}
}

func TestParseURL(t *testing.T) {
	tests := []struct {
		url       string
		endpoints string
		prefix    string
		user      string
		pass      string
		minTTL    time.Duration
		dial      time.Duration
		err       string
	}{
		{url: "etcd://", endpoints: "http://127.0.0.1:2379"},
		{url: "etcd://example.com/", endpoints: "http://example.com:2379"},
		{url: "etcd://h1,h2:2,h3:3?prefix=app/x/", endpoints: "http://h1:2379 http://h2:2 http://h3:3", prefix: "app/x/"},
		{url: "etcd://[::1]:3", endpoints: "http://[::1]:3"},
		{url: "etcd://[::1]", endpoints: "http://[::1]:2379"},
		{url: "etcds://u:p@h:1?prefix=p", endpoints: "https://h:1", prefix: "p", user: "u", pass: "p"},
		{url: "etcds://h?skip_verify=true&servername=n", endpoints: "https://h:2379"},
		{url: "etcd://u:p@h?minttl=2s&dial_timeout=1s&maxvalue=10", endpoints: "http://h:2379", user: "u", pass: "p", minTTL: 2 * time.Second, dial: time.Second},
		{url: "etcd://h?bogus=1", err: "unknown URL parameter(s): bogus"},
		{url: "etcd://h?dialtimeout=1s", err: "unknown URL parameter(s): dialtimeout"},
		{url: "etcd://h?username=u&password=secret", err: "unknown URL parameter(s): password, username"},
		{url: "etcd://h/app", err: "?prefix="},
		{url: "etcd://h?prefix=a&prefix=b", err: "given 2 times"},
		{url: "etcd://h?prefix=a;minttl=1s", err: "';' separator"},
		{url: "etcd://h?minttl=soon", err: "minttl"},
		{url: "etcd://h?dial_timeout=-1s", err: "dial_timeout"},
		{url: "etcd://h?cacert=/ca.pem", err: "need TLS"},
		{url: "etcds://h?skip_verify=maybe", err: "skip_verify"},
		{url: "etcds://h?cert=c.pem", err: "together"},
		{url: "etcds://h?cacert=/nonexistent/ca.pem", err: "CA certificate"},
		{url: "etcd://:secret@h", err: "without a user"},
		{url: "etcd://h:99999", err: "bad port"},
		{url: "etcd://h1,,h2", err: "empty host"},
		{url: "redis://h", err: "scheme"},
	}
	for _, tc := range tests {
		u, err := url.Parse(tc.url)
		if err != nil {
			t.Fatalf("%s: %v", tc.url, err)
		}
		cfg, opt, err := parseURL(u)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", tc.url, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: error shows the password: %v", tc.url, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if got := strings.Join(cfg.Endpoints, " "); got != tc.endpoints {
			t.Errorf("%s: endpoints %q, want %q", tc.url, got, tc.endpoints)
		}
		if tc.dial == 0 {
			tc.dial = DefaultDialTimeout
		}
		if opt.Prefix != tc.prefix || cfg.Username != tc.user || cfg.Password != tc.pass || opt.MinTTL != tc.minTTL || cfg.DialTimeout != tc.dial {
			t.Errorf("%s: prefix %q user %q pass %q minttl %s dial_timeout %s", tc.url, opt.Prefix, cfg.Username, cfg.Password, opt.MinTTL, cfg.DialTimeout)
		}
		if (cfg.TLS != nil) != strings.HasPrefix(tc.url, "etcds:") {
			t.Errorf("%s: TLS %v", tc.url, cfg.TLS != nil)
		}
	}
}

// TestOpenRedacts: no error of Open shows the password, wherever it was
// given.
func TestOpenRedacts(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{
		"etcd://user:s3cret@127.0.0.1:1?dial_timeout=300ms",
		"etcd://127.0.0.1:1?username=user&password=s3cret&dial_timeout=300ms",
		"etcd://user:s3cret@127.0.0.1:1/p",
		"etcd://user:s3cret@127.0.0.1:1?nope=1",
		"etcd://127.0.0.1:1?dial_timeout=300ms",
	} {
		c, err := claim.Open(ctx, u)
		if err == nil {
			c.Close()
			t.Errorf("%s: opened a backend on a closed port", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

// TestAuth: a server with authentication enabled, opened by URL with the
// user's password; a wrong password fails without showing it.
func TestAuth(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	ctx := context.Background()
	cli := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()}})
	for _, step := range []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	base := strings.TrimPrefix(srv.URL(), "etcd://")
	c := backendtest.Open(t, "etcd://root:rootpw@"+base+"?prefix=authed")
	if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Errorf("Set with auth: %v", err)
	}
	// The second claim reuses the first's lease, renewed on the driver's
	// own keep-alive stream, which must carry the token too.
	for i := range 2 {
		l, err := c.TryClaim(ctx, "k", time.Second)
		if err != nil {
			t.Fatalf("claim %d with auth: %v", i, err)
		}
		if l, err = c.Extend(ctx, l, l.TTL); err != nil {
			t.Errorf("Extend %d with auth: %v", i, err)
		}
		if err := c.Release(ctx, l); err != nil {
			t.Errorf("Release %d with auth: %v", i, err)
		}
	}
	if _, err := claim.Open(ctx, "etcd://root:wr0ng-pw@"+base+"?prefix=authed"); err == nil || strings.Contains(err.Error(), "wr0ng-pw") {
		t.Errorf("Open with a wrong password: err = %v", err)
	}
}

// TestValueTTL: value expiry is exact (stored in the value), not rounded
// to lease seconds, and values share one lease per TTL class.
func TestValueTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	c := backendtest.Open(t, withPrefix(t, srv, "valuettl"))
	ctx := context.Background()
	for i := range 5 {
		if err := c.Set(ctx, fmt.Sprint("k", i), []byte("v"), 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Get(ctx, "k0"); err != nil {
		t.Fatalf("Get before expiry: %v", err)
	}
	b := drv(c)
	b.gcMu.Lock()
	n := len(b.gc)
	b.gcMu.Unlock()
	if n != 1 {
		t.Errorf("%d shared leases for 5 values of one TTL, want 1", n)
	}
	time.Sleep(350 * time.Millisecond)
	for i := range 5 {
		if _, err := c.Get(ctx, fmt.Sprint("k", i)); !errors.Is(err, claim.ErrNotFound) {
			t.Errorf("Get after expiry: err = %v, want ErrNotFound", err)
		}
	}
}

// TestWatchCompacted: a client is cut off while it waits (which wakes
// it: its connection is gone and cannot be re-established), the key is
// released and the revision of the release compacted away; when the client
// reconnects its watch cannot resume (ErrCompacted). The driver must
// re-watch, wake the waiter (no lost release), and keep delivering later
// releases.
func TestWatchCompacted(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	p := securitytest.NewProxy(t, srv.Addr())
	ctx := context.Background()
	waiter := backendtest.Open(t, "etcd://"+p.Addr()+"?prefix=compact&dial_timeout=5s")
	holder := backendtest.Open(t, withPrefix(t, srv, "compact"))

	l, sub := backendtest.Claim(t, holder, "k", 30*time.Second), backendtest.Subscribe(t, waiter, "k")
	if _, err := waiter.TryClaim(ctx, "k", 30*time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim while held: %v", err)
	}

	p.Cut()
	if !backendtest.Woken(sub, 30*time.Second) {
		t.Fatal("the lost connection did not wake the waiter")
	}
	if n := drv(waiter).connLosses.Load(); n == 0 {
		t.Errorf("woken, but no lost connection seen")
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	var rev int64
	for i := range 10 {
		r, err := drv(holder).cli.Load().Put(ctx, fmt.Sprint("compact/filler/", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := drv(holder).cli.Load().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	p.Restore()

	for deadline := time.Now().Add(60 * time.Second); drv(waiter).watchGaps.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no broken watch seen after the reconnection (was the revision not compacted?)")
		}
	}
	if !backendtest.Woken(sub, 15*time.Second) {
		t.Fatal("the release during the outage never woke the waiter")
	}
	l2, err := waiter.TryClaim(ctx, "k", 30*time.Second)
	if err != nil {
		t.Fatalf("TryClaim after the wake-up: %v", err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token %d after %d", l2.Token, l.Token)
	}
	// The re-made watch still delivers.
	for len(sub.C()) > 0 {
		<-sub.C()
	}
	if err := waiter.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(sub, 15*time.Second) {
		t.Error("a release after the re-watch did not wake the subscriber")
	}
}

// TestRestart: etcd keeps leases and revisions across a crash (kill -9)
// and restart. The crash wakes the waiter (its connection is gone and
// cannot be re-established: it must not wait for a wake-up that cannot
// come); after the restart the holder can still release, the waiter's
// watch resumes and sees the release, and the next token is larger
// (DurableFence).
func TestRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	ctx := context.Background()
	holder, waiter := backendtest.Open(t, withPrefix(t, srv, "restart")), backendtest.Open(t, withPrefix(t, srv, "restart"))
	l, sub := backendtest.Claim(t, holder, "k", 30*time.Second), backendtest.Subscribe(t, waiter, "k")
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(sub, 30*time.Second) {
		t.Fatal("the server's crash did not wake the waiter")
	}
	if _, err := waiter.Get(ctx, "k"); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("Get with the server down: %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// The client reconnects by itself; a call made before it has may fail.
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := holder.Release(ctx, l)
		if err == nil {
			break
		}
		if errors.Is(err, claim.ErrLost) || time.Now().After(deadline) {
			t.Fatalf("Release after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !backendtest.Woken(sub, 30*time.Second) {
		t.Fatal("release after the restart did not wake the waiter")
	}
	l2, err := waiter.TryClaim(ctx, "k", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token after restart %d <= %d before", l2.Token, l.Token)
	}
	_ = waiter.Release(ctx, l2)
}

// TestKeepAlive: Client.KeepAlive renews through Extend's keep-alive path
// (same TTL: same etcd lease) well past the lease's TTL.
func TestKeepAlive(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	a, b := backendtest.Open(t, withPrefix(t, srv, "keepalive")), backendtest.Open(t, withPrefix(t, srv, "keepalive"))
	ctx := context.Background()
	l, err := a.TryClaim(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := a.KeepAlive(ctx, l, nil)
	time.Sleep(3 * l.TTL)
	if _, err := b.TryClaim(ctx, "k", time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim past 3 TTLs of a kept-alive lease: err = %v, want ErrHeld", err)
	}
	cur := k.Stop()
	if err := k.Err(); err != nil {
		t.Fatalf("keeper: %v", err)
	}
	if cur.Handle != l.Handle || !cur.Deadline.After(l.Deadline) {
		t.Errorf("renewed lease %v (handle %s, was %s): want the same etcd lease with a later deadline", cur, cur.Handle, l.Handle)
	}
	if err := a.Release(ctx, cur); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Extend(ctx, cur, cur.TTL); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend after Release: err = %v, want ErrLost", err)
	}
}

// FuzzParseURL: parsing never panics and never puts the password in an
// error.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"etcd://", "etcd://u:pw@h1:1,h2:2?prefix=p&minttl=1s", "etcds://h?cacert=x&cert=y&key=z&skip_verify=1",
		"etcd://u:pw@h?dial_timeout=1s", "etcd://[::1]:1/a/b/", "etcd://h?maxvalue=-1", "etcd://u:pw@h?prefix=a;b",
	} {
		f.Add(s, "pw")
	}
	f.Fuzz(func(t *testing.T, raw, secret string) {
		if len(secret) < 4 {
			return
		}
		u, err := url.Parse(raw)
		if err != nil {
			return
		}
		if u.User == nil {
			return // nowhere to plant the secret
		}
		u.User = url.UserPassword(u.User.Username(), secret)
		parse := func(u *url.URL) error { _, _, err := parseURL(u); return err }
		securitytest.HidesPassword(t, u, parse(u), parse)
	})
}
