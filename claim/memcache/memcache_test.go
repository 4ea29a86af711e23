package memcache

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"
	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testserver.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

func open(t testing.TB, url string) *claim.Client {
	t.Helper()
	c, err := claim.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// drv is the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

func harness(srv *testserver.Server) conformance.Harness {
	// Features.DurableFence is false: no Restart.
	return conformance.Harness{
		Open:         func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, srv.URL()) },
		OpenIsolated: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, srv.URL()+"?prefix=isolated") },
	}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, harness(testserver.Shared(t, testserver.Memcache)))
}

func TestURL(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []string{
		"memcache://127.0.0.1:1?nosuch=1",
		"memcache://127.0.0.1:1?io_timeout=soon",
		"memcache://127.0.0.1:1/path",
		"memcache://?prefix=x",
		"memcache://127.0.0.1:1?prefix=has%20space",
		"memcache://127.0.0.1:1?maxvalue=1023",
		"memcache://127.0.0.1:1?maxvalue=-1",
		"memcache://127.0.0.1:1?prefix=a&prefix=b",
		"memcache://127.0.0.1:1?prefix=a;poll_max=1s",
		"memcache://127.0.0.1:1?cacert=ca.pem",
		"memcache://127.0.0.1:1?tls=true&cert=only-the-cert.pem",
		// The names before the shared vocabulary.
		"memcache://127.0.0.1:1?timeout=1s",
		"memcache://127.0.0.1:1?item_size_max=2097152",
	} {
		if b, err := claim.Open(ctx, bad); err == nil {
			b.Close()
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	// A password never appears in an error.
	_, err := claim.Open(ctx, "memcache://user:hunter2@127.0.0.1:1?secret_token=hunter3")
	if err == nil || strings.Contains(err.Error(), "hunter") {
		t.Errorf("Open with credentials: err = %v (want an error without the secrets)", err)
	}
	_, err = claim.Open(ctx, "memcache://127.0.0.1:1?tls=true&cacert=/nonexistent/ca.pem&key=hunter4.pem&cert=c.pem")
	if err == nil || strings.Contains(err.Error(), "hunter4") {
		t.Errorf("Open with a key file: err = %v (want an error that does not show the secret-named parameter)", err)
	}
	c, err := claim.Open(ctx, "memcache://127.0.0.1:1,localhost:2?prefix=app&io_timeout=1s&max_idle_conns=4&poll_min=1ms&poll_max=20ms&maxvalue=2097152")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := drv(c)
	if b.prefix != "app" || b.c.Timeout != time.Second || b.c.MaxIdleConns != 4 {
		t.Errorf("options not applied: prefix %q timeout %s idle %d", b.prefix, b.c.Timeout, b.c.MaxIdleConns)
	}
	if got := c.Features().MaxValueLen; got != 2097152 {
		t.Errorf("MaxValueLen = %d with maxvalue=2097152", got)
	}
	var mc *gomemcache.Client
	if !c.As(&mc) || mc != b.c {
		t.Errorf("As(**gomemcache.Client) did not give the client")
	}
	if def := open(t, "memcache://127.0.0.1:1"); def.Features().MaxValueLen != DefaultItemSizeMax-itemOverhead {
		t.Errorf("default MaxValueLen = %d", def.Features().MaxValueLen)
	}
}

func TestKeys(t *testing.T) {
	b, err := newBackend(gomemcache.New("127.0.0.1:1"), Options{Prefix: strings.Repeat("p", 200)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, k := range []string{"a", strings.Repeat("x", 1000), "sp ace", "ctl\x01", "del\x7f", "ünï", "\xff\xfe"} {
		for _, role := range []byte("lfnv") {
			s := b.item(role, k)
			if len(s) > 250 {
				t.Errorf("key %q: item key %d bytes > 250", k, len(s))
			}
			for i := 0; i < len(s); i++ {
				if s[i] <= ' ' || s[i] == 0x7f {
					t.Errorf("key %q: item key %q has byte %#x", k, s, s[i])
				}
			}
		}
	}
	if _, err := New(gomemcache.New("127.0.0.1:1"), &Options{Prefix: strings.Repeat("p", 201)}); err == nil {
		t.Errorf("a 201-byte prefix was accepted")
	}
}

func TestExptime(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		sec  int64
		want int32
	}{
		{1, 1},
		{maxRelative, maxRelative},
		{maxRelative + 1, 1_800_000_000 + maxRelative + 1}, // absolute
	} {
		if got, err := exptime(c.sec, now); err != nil || got != c.want {
			t.Errorf("exptime(%d) = %d, %v; want %d", c.sec, got, err, c.want)
		}
	}
	if _, err := exptime(1<<31, now); err == nil {
		t.Errorf("exptime past 2038 accepted")
	}
	for _, c := range []struct {
		ttl  time.Duration
		want int64
	}{{time.Nanosecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {90 * time.Second, 90}} {
		if got := seconds(c.ttl); got != c.want {
			t.Errorf("seconds(%s) = %d, want %d", c.ttl, got, c.want)
		}
	}
}

// TestLongTTL: a lease and a value longer than 30 days are stored with an
// absolute exptime and live.
func TestLongTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	b := open(t, srv.URL())
	ctx := context.Background()
	l, err := b.TryClaim(ctx, "long-ttl", 40*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryClaim(ctx, "long-ttl", time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("a 40-day lease did not hold: %v", err)
	}
	if err := b.Commit(ctx, l, []byte("v"), 40*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "long-ttl"); err != nil || string(v) != "v" {
		t.Errorf("Get of a 40-day value = %q, %v", v, err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Error(err)
	}
}

// TestMaxValueAtServerLimit: a value of MaxValueLen under the longest
// item key fits the server's default 1 MiB item limit, and one byte more
// than the server's limit is reported as ErrTooLarge even when the client
// was told a larger limit.
func TestMaxValueAtServerLimit(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := context.Background()
	b, err := New(gomemcache.New(srv.Addr()), &Options{Prefix: strings.Repeat("p", 200)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	k := strings.Repeat("k", 46) // the longest readable key with this prefix
	if n := len(drv(b).item('v', k)); n != 250 {
		t.Fatalf("item key %d bytes, want 250", n)
	}
	if err := b.Set(ctx, k, bytes.Repeat([]byte{1}, b.Features().MaxValueLen), time.Minute); err != nil {
		t.Errorf("Set of MaxValueLen under a 250-byte key: %v", err)
	}
	big, err := New(gomemcache.New(srv.Addr()), &Options{ItemSizeMax: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if err := big.Set(ctx, k, make([]byte, 2<<20), 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set of 2 MiB on a 1 MiB server: %v, want ErrTooLarge", err)
	}
}

// TestReleaseIsCompareAndDelete: a stale Release finds another holder's
// lock and leaves it; the lock's value never names the stale holder.
func TestReleaseIsCompareAndDelete(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a, b := open(t, srv.URL()), open(t, srv.URL())
	ctx := context.Background()
	l1, err := a.TryClaim(ctx, "cad", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Simulate the lock vanishing under its holder (eviction, or expiry
	// while paused) and another holder claiming.
	if err := drv(a).c.Delete(drv(a).item('l', "cad")); err != nil {
		t.Fatal(err)
	}
	l2, err := b.TryClaim(ctx, "cad", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token %d after %d", l2.Token, l1.Token)
	}
	if err := a.Release(ctx, l1); !errors.Is(err, claim.ErrLost) {
		t.Errorf("stale Release: %v, want ErrLost", err)
	}
	if _, err := a.TryClaim(ctx, "cad", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("after a stale Release the key is not held: %v", err)
	}
	if err := b.Release(ctx, l2); err != nil {
		t.Error(err)
	}
}

// TestFenceSurvivesEviction: a fence counter lost to eviction (or a
// restart) comes back larger than it was.
func TestFenceSurvivesEviction(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a := open(t, srv.URL())
	ctx := context.Background()
	l1, err := a.TryClaim(ctx, "evict", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	if err := drv(a).c.Delete(drv(a).item('f', "evict")); err != nil {
		t.Fatal(err)
	}
	l2, err := a.TryClaim(ctx, "evict", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after the counter was lost: %d <= %d", l2.Token, l1.Token)
	}
	_ = a.Release(ctx, l2)
}

// slowConn delays writes that start with a given command.
type slowConn struct {
	net.Conn
	delay *atomic.Int64 // nanoseconds; 0: none
	cmd   string
}

func (c slowConn) Write(p []byte) (int, error) {
	if d := c.delay.Load(); d > 0 && bytes.HasPrefix(p, []byte(c.cmd)) {
		time.Sleep(time.Duration(d))
	}
	return c.Conn.Write(p)
}

// TestLateCommitWithdrawn: a Commit whose write is acknowledged only after
// the lease's local deadline (a slow network) returns ErrLost and takes
// its value back.
func TestLateCommitWithdrawn(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := context.Background()
	var delay atomic.Int64
	c := gomemcache.New(srv.Addr())
	c.Timeout = 10 * time.Second
	c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		return slowConn{conn, &delay, "set "}, err
	}
	defer c.Close()
	b, err := New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := b.TryClaim(ctx, "late", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	delay.Store(int64(time.Until(l.Deadline) + 100*time.Millisecond))
	err = b.Commit(ctx, l, []byte("late"), 0)
	delay.Store(0)
	if !errors.Is(err, claim.ErrLost) {
		t.Fatalf("late Commit: %v, want ErrLost", err)
	}
	if v, err := b.Get(ctx, "late"); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("late Commit's value still there: %q, %v", v, err)
	}
}

// TestServerRestart: while the server is down calls fail (and waiters are
// woken to see it); after it comes back, empty, the backend works again
// and fencing tokens did not go backwards.
func TestServerRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Memcache, nil)
	ctx := context.Background()
	b, w := open(t, srv.URL()), open(t, srv.URL())
	l1, err := b.TryClaim(ctx, "restart", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := w.Subscribe(ctx, "restart")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-time.After(15 * time.Second):
		t.Fatal("subscriber not woken when its polls started failing")
	}
	if _, err := b.TryClaim(ctx, "other", time.Second); err == nil || errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim with the server down: %v, want a connection error", err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	// The lock is gone with the restart: the key is free, the waiter is
	// woken by its first good poll, and the token is larger.
	select {
	case <-sub.C():
	case <-time.After(15 * time.Second):
		t.Fatal("subscriber not woken after the server came back without the lock")
	}
	l2, err := b.TryClaim(ctx, "restart", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after restart %d <= %d", l2.Token, l1.Token)
	}
	_ = b.Release(ctx, l2)
}

func BenchmarkConformance(b *testing.B) {
	conformance.Bench(b, harness(testserver.Shared(b, testserver.Memcache)))
}

// FuzzOpenURL: no URL makes the opener panic, and a password in a URL
// never reaches an error.
func FuzzOpenURL(f *testing.F) {
	for _, s := range []string{
		"memcache://127.0.0.1:11211",
		"memcache://a:1,b:2?prefix=x&io_timeout=1s",
		"memcache://u:secretpw@h:1",
		"memcache://h:1?maxvalue=-1&poll_max=x",
		"memcache://h:1?tls=true&cacert=x&servername=h&skip_verify=1",
		"memcache://h:1/%zz",
		"memcache://[::1]:1,[::2]:2?max_idle_conns=99999999999999999999",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		ctx := context.Background()
		b, err := claim.Open(ctx, raw)
		if err == nil {
			b.Close()
			return
		}
		if u, perr := url.Parse(raw); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) >= 4 && strings.Contains(err.Error(), pw) {
				// Unless the error shows that text with another
				// password in its place (part of the host, say).
				u.User = url.UserPassword(u.User.Username(), "placeholder-password")
				b2, err2 := claim.Open(ctx, u.String())
				if err2 == nil {
					b2.Close()
				}
				if err2 == nil || !strings.Contains(err2.Error(), pw) {
					t.Errorf("error %q contains the password", err)
				}
			}
		}
	})
}

// TestWakeRules: what the poll reads, step by step. A claim of a free key
// wakes nobody; a release, a notification, and a release followed by
// another claim between two reads (even after the notify counter was
// evicted) do. And end to end: a subscriber is not woken by a claim, and
// is by its release.
func TestWakeRules(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a, b := open(t, srv.URL()), open(t, srv.URL())
	ctx := context.Background()
	read := func(key string) driver.PollState {
		t.Helper()
		st, err := drv(b).readState(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	claimKey := func(key string) claim.Lease {
		t.Helper()
		l, err := a.TryClaim(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	release := func(l claim.Lease) {
		t.Helper()
		if err := a.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"wake-rules-new", "wake-rules-used"} {
		if k == "wake-rules-used" {
			release(claimKey(k))
		}
		free := read(k)
		l := claimKey(k)
		held := read(k)
		if driver.Wakes(free, held) {
			t.Errorf("%s: a claim of a free key wakes (%+v -> %+v)", k, free, held)
		}
		l, err := a.Extend(ctx, l, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if st := read(k); driver.Wakes(held, st) {
			t.Errorf("%s: Extend wakes (%+v -> %+v)", k, held, st)
		}
		release(l)
		if st := read(k); !driver.Wakes(held, st) || !driver.Wakes(free, st) {
			t.Errorf("%s: Release does not wake (%+v, %+v -> %+v)", k, free, held, st)
		}
		// Claim, release, claim between two reads.
		free = read(k)
		release(claimKey(k))
		l = claimKey(k)
		if st := read(k); !driver.Wakes(free, st) {
			t.Errorf("%s: claim, release, claim between two reads does not wake (%+v -> %+v)", k, free, st)
		}
		held = read(k)
		if err := a.Notify(ctx, k); err != nil {
			t.Fatal(err)
		}
		if st := read(k); !driver.Wakes(held, st) {
			t.Errorf("%s: Notify does not wake (%+v -> %+v)", k, held, st)
		}
		release(l)
	}
	// An evicted notify counter comes back at a value no poller saw.
	k := "wake-rules-evicted"
	release(claimKey(k))
	before := read(k)
	if err := drv(a).c.Delete(drv(a).item('n', k)); err != nil {
		t.Fatal(err)
	}
	release(claimKey(k))
	if st := read(k); !driver.Wakes(before, st) {
		t.Errorf("a release after the counter was evicted does not wake (%+v -> %+v)", before, st)
	}

	s, err := b.Subscribe(ctx, "wake-rules-sub")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := claimKey("wake-rules-sub")
	// Ten poll intervals at the cap: a wake-up would have come.
	select {
	case <-s.C():
		t.Fatal("a claim of a free key woke a subscriber")
	case <-time.After(10 * driver.DefaultPollMax):
	}
	release(l)
	select {
	case <-s.C():
	case <-time.After(10 * time.Second):
		t.Fatal("Release did not wake the subscriber")
	}
}

// TestOwnReleaseWakesAtOnce: Release and Notify wake the subscribers of
// their own Client without waiting for a poll (here: an hour away), and
// never after the subscription is gone.
func TestOwnReleaseWakesAtOnce(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	c := open(t, srv.URL()+"?poll_min=1h&poll_max=1h")
	ctx := context.Background()
	k := securitytest.Unique(t) + "own"
	s, err := c.Subscribe(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := c.TryClaim(ctx, k, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, what := range []string{"Release", "Notify"} {
		select {
		case <-s.C():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not wake its own Client's subscriber", what)
		}
		if what == "Release" {
			if err := c.Notify(ctx, k); err != nil {
				t.Fatal(err)
			}
		}
	}
	s.Close()
	b := drv(c)
	b.mu.Lock()
	n := len(b.wakes)
	b.mu.Unlock()
	if n != 0 || b.poller.Len() != 0 {
		t.Errorf("after the last subscriber left: %d wakes, %d poll loops", n, b.poller.Len())
	}
}
