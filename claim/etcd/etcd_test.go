package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testserver.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func open(t testing.TB, rawURL string) *Backend {
	t.Helper()
	b, err := claim.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*Backend)
}

func TestConformance(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (claim.Backend, error) {
			return claim.Open(ctx, srv.URL()+"/conformance")
		},
	})
}

func BenchmarkConformance(b *testing.B) {
	srv := testserver.Shared(b, testserver.Etcd)
	conformance.Bench(b, conformance.Harness{
		Open: func(ctx context.Context) (claim.Backend, error) {
			return claim.Open(ctx, srv.URL()+"/bench")
		},
	})
}

// TestNew: a Backend on the caller's own client leaves the client open.
func TestNew(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	b, err := New(cli, &Options{Prefix: "mine/", MinTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if f := b.Features(); f.MinTTL != time.Second || f.TTLGranularity != time.Second || !f.DurableFence || !f.AtomicCommit {
		t.Errorf("Features = %+v", f)
	}
	l, err := b.TryClaim(ctx, "k", 1500*time.Millisecond)
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
	l2, err := b.Extend(ctx, l, 5*time.Second)
	if err != nil || l2.TTL != 5*time.Second || l2.Handle == l.Handle || l2.Token != l.Token {
		t.Fatalf("Extend to 5s = %v, %v", l2, err)
	}
	// The old handle is stale, but the renewal is judged by the token.
	if _, err := b.Extend(ctx, l, 5*time.Second); err != nil {
		t.Errorf("Extend retried with the pre-extension lease: %v", err)
	}
	if err := b.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Get(ctx, "x"); err != nil {
		t.Errorf("client closed by Backend.Close: %v", err)
	}
}

// TestMinTTL: without minttl the Backend asks the server (the test server
// runs with a 500 ms election timeout, so its minimum is 1 s; etcd's
// default is 2 s).
func TestMinTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	b := open(t, srv.URL())
	g, err := b.Client().Grant(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = b.Client().Revoke(context.Background(), g.ID)
	if got, want := b.Features().MinTTL, time.Duration(g.TTL)*time.Second; got != want {
		t.Errorf("MinTTL = %s, want %s (granted for a 1 s request)", got, want)
	}
	b = open(t, srv.URL()+"?minttl=3s")
	if got := b.Features().MinTTL; got != 3*time.Second {
		t.Errorf("MinTTL with minttl=3s = %s", got)
	}
	l, err := b.TryClaim(context.Background(), "minttl", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release(context.Background(), l)
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
		err       string
	}{
		{url: "etcd://", endpoints: "http://127.0.0.1:2379"},
		{url: "etcd://example.com", endpoints: "http://example.com:2379"},
		{url: "etcd://h1,h2:2,h3:3/app/x/", endpoints: "http://h1:2379 http://h2:2 http://h3:3", prefix: "app/x"},
		{url: "etcd://[::1]:3", endpoints: "http://[::1]:3"},
		{url: "etcd://[::1]", endpoints: "http://[::1]:2379"},
		{url: "etcds://u:p@h:1/p", endpoints: "https://h:1", prefix: "p", user: "u", pass: "p"},
		{url: "etcd://h?username=u&password=p&minttl=2s&dialtimeout=1s&maxvalue=10", endpoints: "http://h:2379", user: "u", pass: "p", minTTL: 2 * time.Second},
		{url: "etcd://h?bogus=1", err: "unknown URL parameter(s): bogus"},
		{url: "etcd://h?minttl=soon", err: "minttl"},
		{url: "etcd://h?cacert=/ca.pem", err: "need etcds"},
		{url: "etcds://h?cert=c.pem", err: "together"},
		{url: "etcds://h?cacert=/nonexistent/ca.pem", err: "cacert"},
		{url: "etcd://u:secret@h?password=other", err: "both"},
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
		if opt.Prefix != tc.prefix || cfg.Username != tc.user || cfg.Password != tc.pass || opt.MinTTL != tc.minTTL {
			t.Errorf("%s: prefix %q user %q pass %q minttl %s", tc.url, opt.Prefix, cfg.Username, cfg.Password, opt.MinTTL)
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
		"etcd://user:s3cret@127.0.0.1:1/p?dialtimeout=300ms",
		"etcd://127.0.0.1:1/p?username=user&password=s3cret&dialtimeout=300ms",
		"etcd://user:s3cret@127.0.0.1:1/p?nope=1",
	} {
		b, err := claim.Open(ctx, u)
		if err == nil {
			b.Close()
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
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{srv.Addr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
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
	b := open(t, "etcd://root:rootpw@"+base+"/authed")
	if err := b.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Errorf("Set with auth: %v", err)
	}
	if _, err := claim.Open(ctx, "etcd://root:wr0ng-pw@"+base+"/authed"); err == nil || strings.Contains(err.Error(), "wr0ng-pw") {
		t.Errorf("Open with a wrong password: err = %v", err)
	}
}

// TestValueTTL: value expiry is exact (stored in the value), not rounded
// to lease seconds, and values share one lease per TTL class.
func TestValueTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	b := open(t, srv.URL()+"/valuettl")
	ctx := context.Background()
	for i := range 5 {
		if err := b.Set(ctx, fmt.Sprint("k", i), []byte("v"), 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.Get(ctx, "k0"); err != nil {
		t.Fatalf("Get before expiry: %v", err)
	}
	b.gcMu.Lock()
	n := len(b.gc)
	b.gcMu.Unlock()
	if n != 1 {
		t.Errorf("%d shared leases for 5 values of one TTL, want 1", n)
	}
	time.Sleep(350 * time.Millisecond)
	for i := range 5 {
		if _, err := b.Get(ctx, fmt.Sprint("k", i)); !errors.Is(err, claim.ErrNotFound) {
			t.Errorf("Get after expiry: err = %v, want ErrNotFound", err)
		}
	}
}

// TestMaxValue: a value of exactly DefaultMaxValueLen fits in etcd's
// default request limit even under a long prefix and a long key.
func TestMaxValue(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	b := open(t, srv.URL()+"/"+strings.Repeat("p", MaxPrefixLen))
	ctx := context.Background()
	key := strings.Repeat("k", maxKeyLen-1)
	l, err := b.TryClaim(ctx, key, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Release(ctx, l)
	if err := b.Commit(ctx, l, bytes.Repeat([]byte{1}, DefaultMaxValueLen), time.Minute); err != nil {
		t.Errorf("Commit of DefaultMaxValueLen: %v", err)
	}
	if err := b.Commit(ctx, l, make([]byte, DefaultMaxValueLen+1), 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Commit over the limit: %v", err)
	}
	if err := b.Publish(ctx, "topic", make([]byte, DefaultMaxValueLen+1)); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Publish over the limit: %v", err)
	}
}

// proxy forwards TCP connections to an address until cut: Cut closes every
// connection and refuses new ones until Restore.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer p.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		go pipe(s, c)
		go pipe(c, s)
	}
}

func (p *proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

func (p *proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

func wokenWithin(s claim.Subscription, d time.Duration) bool {
	select {
	case _, ok := <-s.C():
		return ok
	case <-time.After(d):
		return false
	}
}

// TestWatchCompacted: a client is cut off while it waits, the key is
// released and the revision of the release compacted away; when the client
// reconnects its watch cannot resume (ErrCompacted). The Backend must
// re-watch, wake the waiter (no lost release), and keep delivering later
// releases.
func TestWatchCompacted(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	p := newProxy(t, srv.Addr())
	ctx := context.Background()
	waiter := open(t, "etcd://"+p.ln.Addr().String()+"/compact?dialtimeout=5s")
	holder := open(t, srv.URL()+"/compact")

	l, err := holder.TryClaim(ctx, "k", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := waiter.TryClaim(ctx, "k", 30*time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim while held: %v", err)
	}

	p.Cut()
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	var rev int64
	for i := range 10 {
		r, err := holder.Client().Put(ctx, fmt.Sprint("compact/filler/", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := holder.Client().Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	p.Restore()

	if !wokenWithin(sub, 60*time.Second) {
		t.Fatal("the release during the outage never woke the waiter")
	}
	if n := waiter.watchGaps.Load(); n == 0 {
		t.Errorf("woken, but no broken watch seen (was the revision not compacted?)")
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
	if !wokenWithin(sub, 15*time.Second) {
		t.Error("a release after the re-watch did not wake the subscriber")
	}
}

// TestTopics: Broadcaster messages reach every subscriber in order, and
// stop waits for the handler.
func TestTopics(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	a, b := open(t, srv.URL()+"/topics"), open(t, srv.URL()+"/topics")
	ctx := context.Background()
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	stop, err := b.SubscribeTopic(ctx, "inval", func(msg []byte, reset bool) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, fmt.Sprint(string(msg), reset))
		if len(got) == 3 {
			close(done)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"a", "b", "c"} {
		if err := a.Publish(ctx, "inval", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("messages not delivered")
	}
	stop()
	stop()
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(got, ",") != "afalse,bfalse,cfalse" {
		t.Errorf("got %v", got)
	}
}

// TestRestart: etcd keeps leases and revisions across a crash (kill -9)
// and restart: the holder can still release, the waiter's watch resumes
// and sees the release, and the next token is larger (DurableFence).
func TestRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	ctx := context.Background()
	holder, waiter := open(t, srv.URL()+"/restart"), open(t, srv.URL()+"/restart")
	l, err := holder.TryClaim(ctx, "k", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
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
	if !wokenWithin(sub, 30*time.Second) {
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

// TestKeepAlive: claim.KeepAlive renews through Extend's keep-alive path
// (same TTL: same etcd lease) well past the lease's TTL.
func TestKeepAlive(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	a, b := open(t, srv.URL()+"/keepalive"), open(t, srv.URL()+"/keepalive")
	ctx := context.Background()
	l, err := a.TryClaim(ctx, "k", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := claim.KeepAlive(ctx, a, l, nil)
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
		"etcd://", "etcd://u:pw@h1:1,h2:2/p?minttl=1s", "etcds://h?cacert=x&cert=y&key=z",
		"etcd://h?password=pw&username=u", "etcd://[::1]:1/a/b/", "etcd://h?maxvalue=-1",
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
		// An error that shows the secret's text with another password
		// in its place shows it anyway (a host or scheme spelled alike).
		u.User = url.UserPassword(u.User.Username(), "placeholder-password")
		if _, _, err := parseURL(u); err != nil && strings.Contains(err.Error(), secret) {
			return
		}
		u.User = url.UserPassword(u.User.Username(), secret)
		_, _, err = parseURL(u)
		if err != nil && strings.Contains(err.Error(), secret) && !strings.Contains(raw, secret) {
			t.Errorf("error shows the password: %v", err)
		}
	})
}
