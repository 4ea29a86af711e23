package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// harness is the conformance harness on srv, in a chroot of its own (see
// chroot); the isolated namespace is a sibling prefix under it.
func harness(t testing.TB, srv *testserver.Server, name string) conformance.Harness {
	base := srv.URL() + chroot(t, name)
	return backendtest.Harness(srv, func(ns string) string {
		if ns == "" {
			return base
		}
		return backendtest.WithQuery(t, base, "prefix", ns)
	})
}

func TestConformance(t *testing.T) {
	// A server of its own, so that Restart disturbs no other test.
	conformance.Run(t, harness(t, testserver.Require(t, testserver.ZooKeeper), "conformance"))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) {
	backendtest.FlightOn(t, harness(t, testserver.Shared(t, testserver.ZooKeeper), "flight"))
}

func BenchmarkConformance(b *testing.B) {
	conformance.Bench(b, harness(b, testserver.Shared(b, testserver.ZooKeeper), "bench"))
}

// open opens a Client of srv in the chroot name (see chroot) with the
// query parameters params (name, value, ...), closed when the test ends.
func open(t testing.TB, srv *testserver.Server, name string, params ...string) *claim.Client {
	return backendtest.Open(t, backendtest.WithQuery(t, srv.URL()+chroot(t, name), params...))
}

// openCut is open through a proxy whose Cut partitions the Client from
// ZooKeeper (its session stays on the server until it times out).
func openCut(t testing.TB, srv *testserver.Server, name string, params ...string) (*claim.Client, *securitytest.Proxy) {
	p := securitytest.NewProxy(t, srv.Addr())
	return backendtest.Open(t, backendtest.WithQuery(t, "zookeeper://"+p.Addr()+chroot(t, name), params...)), p
}

// drv returns the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

// runIDs keeps the namespaces of each run of a test apart on a shared
// server (-count=N, STAMPEDE_TEST_ZOOKEEPER_URL): one ID per *testing.T.
var runIDs sync.Map

// chroot returns "/name-ID", with the same ID for every call of one test
// run (so two clients of a test share it).
func chroot(t testing.TB, name string) string {
	id, _ := runIDs.LoadOrStore(t, fmt.Sprintf("%x", time.Now().UnixNano()))
	return "/" + name + "-" + id.(string)
}

// raw returns a plain zk connection to srv, closed when the test ends.
func raw(t testing.TB, srv *testserver.Server) *zk.Conn {
	t.Helper()
	c, _, err := zk.Connect([]string{srv.Addr()}, 10*time.Second, zk.WithLogger(quiet), zk.WithLogInfo(false))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestStaleHolderFenced proves the design point of the package doc: a
// stale holder whose claim was taken over (or released and re-claimed, so
// that a new lock node with version 0 again sits at the same path) cannot
// release, extend or commit, even with a local deadline still ahead (a
// paused process, a wrong clock): the server refuses it because its owner
// node is gone.
func TestStaleHolderFenced(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, b := open(t, srv, "fenced"), open(t, srv, "fenced")
	for _, how := range []string{"expired and taken over", "released and re-claimed"} {
		key := "k-" + how
		old, err := a.TryClaim(ctx, key, 100*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if how == "expired and taken over" {
			time.Sleep(150 * time.Millisecond)
		} else if err := a.Release(ctx, old); err != nil {
			t.Fatal(err)
		}
		cur, err := b.TryClaim(ctx, key, time.Minute)
		if err != nil {
			t.Fatalf("%s: TryClaim by b: %v", how, err)
		}
		if err := b.Commit(ctx, cur, []byte("b"), 0); err != nil {
			t.Fatal(err)
		}
		paused := old
		paused.Deadline = time.Now().Add(time.Hour) // its clock says it still holds
		if err := a.Commit(ctx, paused, []byte("a"), 0); !errors.Is(err, claim.ErrLost) {
			t.Errorf("%s: stale Commit: %v, want ErrLost", how, err)
		}
		if _, err := a.Extend(ctx, paused, time.Minute); !errors.Is(err, claim.ErrLost) {
			t.Errorf("%s: stale Extend: %v, want ErrLost", how, err)
		}
		if err := a.Release(ctx, paused); !errors.Is(err, claim.ErrLost) {
			t.Errorf("%s: stale Release: %v, want ErrLost", how, err)
		}
		if v, err := a.Get(ctx, key); err != nil || string(v) != "b" {
			t.Errorf("%s: value = %q, %v; want b's", how, v, err)
		}
		if _, err := a.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("%s: b's claim did not survive: %v", how, err)
		}
		if err := b.Release(ctx, cur); err != nil {
			t.Errorf("%s: b's Release: %v", how, err)
		}
	}
}

// TestTakeoverLosesToExtend: a claimer that judged a lease expired cannot
// take it over if the holder's Extend landed after it read the lease.
func TestTakeoverLosesToExtend(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, b := open(t, srv, "race"), open(t, srv, "race")
	l := backendtest.Claim(t, a, "k", time.Minute)
	bd := drv(b)
	s, ok, err := bd.inspect(ctx, "k")
	if err != nil || !ok || s.holder != l.Holder {
		t.Fatalf("inspect = %+v, %v, %v", s, ok, err)
	}
	if _, err := a.Extend(ctx, l, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, _, err := bd.multi(ctx, bd.claimOps("k", "taker", 1000, &s)...); !errors.Is(err, zk.ErrBadVersion) {
		t.Fatalf("takeover after the holder's Extend: %v, want ErrBadVersion", err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("holder's Release after the failed takeover: %v", err)
	}
}

// TestExtendWakesNobody: renewals touch only the owner node, so waiters
// watching the lock node are not woken by every KeepAlive.
func TestExtendWakesNobody(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, b := open(t, srv, "extend"), open(t, srv, "extend")
	l, s := backendtest.Claim(t, a, "k", time.Minute), backendtest.Subscribe(t, b, "k")
	for i := 0; i < 3; i++ {
		var err error
		if l, err = a.Extend(ctx, l, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if backendtest.Woken(s, 200*time.Millisecond) {
		t.Errorf("Extend woke a subscriber")
	}
	// Notify on a held key wakes, and leaves the claim intact.
	if err := a.Notify(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(s, 5*time.Second) {
		t.Errorf("Notify on a held key did not wake")
	}
	if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("after Notify, TryClaim: %v, want ErrHeld", err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("Release after Notify: %v", err)
	}
	if !backendtest.Woken(s, 5*time.Second) {
		t.Errorf("Release did not wake")
	}
	bd := drv(b)
	bd.mu.Lock()
	n := len(bd.watches)
	bd.mu.Unlock()
	if n != 1 {
		t.Errorf("%d watched keys, want 1", n)
	}
}

// TestValueExpiry: an expired value is not returned, and the Get that
// finds it deletes its node; a rewritten value is not deleted.
func TestValueExpiry(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a := open(t, srv, "values")
	c := raw(t, srv)
	if err := a.Set(ctx, "k", []byte("v"), 50*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(80 * time.Millisecond)
	if _, err := a.Get(ctx, "k"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatalf("Get of an expired value: %v", err)
	}
	if ok, _, err := c.Exists(drv(a).valuePath("k")); err != nil || ok {
		t.Errorf("expired value node still there after Get (%v, %v)", ok, err)
	}
	if err := a.Set(ctx, "k", []byte("v2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || string(v) != "v2" {
		t.Errorf("Get = %q, %v", v, err)
	}
	// Set overwrites, with a new TTL.
	if err := a.Set(ctx, "k", []byte("v3"), 0); err != nil {
		t.Fatal(err)
	}
	if v, err := a.Get(ctx, "k"); err != nil || string(v) != "v3" {
		t.Errorf("Get = %q, %v", v, err)
	}
	// A node not written by this package is an error, not a value.
	if _, err := c.Create(drv(a).valuePath("alien"), []byte("x"), 0, zk.WorldACL(zk.PermAll)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "alien"); err == nil || errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get of a foreign node: %v, want an error", err)
	}
}

// TestBroadcast: messages reach every subscriber in every client, in
// order; stop ends delivery; a published message is deleted after
// MessageLife.
func TestBroadcast(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a := open(t, srv, "broadcast", "messagelife", "300ms")
	b := open(t, srv, "broadcast")
	type rec struct {
		msg   string
		reset bool
	}
	got := make(chan rec, 100)
	stop, err := b.SubscribeTopic(ctx, "inval", func(m []byte, reset bool) { got <- rec{string(m), reset} })
	if err != nil {
		t.Fatal(err)
	}
	own := make(chan string, 100)
	stopOwn, err := a.SubscribeTopic(ctx, "inval", func(m []byte, reset bool) { own <- string(m) })
	if err != nil {
		t.Fatal(err)
	}
	defer stopOwn()
	for i := 0; i < 5; i++ {
		if err := a.Publish(ctx, "inval", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 5; i++ {
		select {
		case r := <-got:
			if r.reset || r.msg != fmt.Sprint(i) {
				t.Errorf("message %d: %+v", i, r)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %d not delivered", i)
		}
		select {
		case m := <-own:
			if m != fmt.Sprint(i) {
				t.Errorf("own message %d: %q", i, m)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("own message %d not delivered", i)
		}
	}
	stop()
	stop() // idempotent
	time.Sleep(350 * time.Millisecond)
	if err := a.Publish(ctx, "inval", []byte("late")); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		t.Errorf("delivered after stop: %+v", r)
	case m := <-own:
		if m != "late" {
			t.Errorf("own: %q", m)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("message after stop not delivered to the other subscription")
	}
	// The first five are older than MessageLife: their deletion was
	// started by the last Publish.
	c := raw(t, srv)
	deadline := time.Now().Add(10 * time.Second)
	for {
		names, _, err := c.Children(drv(a).topicDir("inval"))
		if err != nil {
			t.Fatal(err)
		}
		if len(names) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("messages left: %v, want only the last", names)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := a.Publish(ctx, "t", make([]byte, drv(a).maxVal+1)); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Publish of an oversized message: %v", err)
	}
}

// TestNew: a Client on the caller's own connection uses its prefix, As
// hands the connection back, and Close leaves the connection (and so its
// leases) alone.
func TestNew(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	c := raw(t, srv)
	mine := chroot(t, "mine")
	b, err := New(c, &Options{Prefix: mine + "/app/", MaxValueLen: 10})
	if err != nil {
		t.Fatal(err)
	}
	f := b.Features()
	if f.Name != Scheme || f.Notify != claim.Push || !f.AtomicCommit || !f.DurableFence || f.MaxValueLen != 10 || !f.Broadcast || f.MinTTL != time.Millisecond {
		t.Errorf("Features = %+v", f)
	}
	var conn *zk.Conn
	if !b.As(&conn) || conn != c {
		t.Errorf("As(**zk.Conn) = %p, want the connection given to New %p", conn, c)
	}
	var other *zk.Stat
	if b.As(&other) {
		t.Errorf("As(**zk.Stat) succeeded")
	}
	backendtest.Claim(t, b, "k", time.Minute)
	if ok, _, err := c.Exists(mine + "/app/l/=k"); err != nil || !ok {
		t.Errorf("lock node not under the prefix: %v %v", ok, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Exists(mine); err != nil {
		t.Errorf("the caller's connection was closed: %v", err)
	}
	again := open(t, srv, "mine", "prefix", "app") // same namespace: chroot is stable within a run
	if _, err := again.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("lease of the closed Client: %v, want ErrHeld", err)
	}
	if _, err := New(nil, nil); err == nil {
		t.Errorf("New(nil) succeeded")
	}
	for _, p := range []string{"a//b", "zookeeper", "a/../b", "."} {
		if _, err := New(c, &Options{Prefix: p}); err == nil {
			t.Errorf("New with prefix %q succeeded", p)
		}
	}
}

// TestAuth: with credentials in the URL, nodes are created for that user
// only; a client without them, or with a wrong password, is refused with
// ErrConfig; the password never shows in errors.
func TestAuth(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	host := strings.TrimPrefix(srv.URL(), "zookeeper://")
	ab := backendtest.Open(t, "zookeeper://alice:s3cr3t@"+host+chroot(t, "auth"))
	l := backendtest.Claim(t, ab, "k", time.Minute)
	if err := ab.Commit(ctx, l, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	// Without credentials, or with a wrong password, the ACLs refuse the
	// Client: a configuration error, at Open and at every call.
	securitytest.ConfigRefused(t, srv.URL()+chroot(t, "auth"), "")
	securitytest.ConfigRefused(t, "zookeeper://alice:wrong-pw@"+host+chroot(t, "auth"), "wrong-pw")
	anon := open(t, srv, "auth", "lazy", "true")
	if _, err := anon.TryClaim(ctx, "other", time.Minute); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("TryClaim without credentials: %v, want ErrConfig", err)
	}
	if v, err := ab.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("Get with credentials = %q, %v", v, err)
	}
	_ = ab.Release(ctx, l)
}

func TestURL(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	host := strings.TrimPrefix(srv.URL(), "zookeeper://")
	b := open(t, srv, "chroot", "prefix", "x/p/q", "session", "5s", "maxvalue", "1000", "messagelife", "1m", "acl", "open")
	if d := drv(b); d.root != chroot(t, "chroot")+"/x/p/q" || d.maxVal != 1000 || d.msgLife != time.Minute {
		t.Errorf("root %q maxVal %d msgLife %s", d.root, d.maxVal, d.msgLife)
	}
	if b.Features().MaxValueLen != 1000 {
		t.Errorf("maxvalue=1000: Features.MaxValueLen = %d", b.Features().MaxValueLen)
	}
	if l, err := b.TryClaim(ctx, "k", time.Second); err != nil {
		t.Error(err)
	} else {
		_ = b.Release(ctx, l)
	}
	// Several hosts, one of them dead: the live one serves.
	dead := "127.0.0.1:1"
	m := backendtest.Open(t, "zookeeper://"+dead+","+host+chroot(t, "multi"))
	if err := m.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Errorf("Set through a two-host URL: %v", err)
	}
	securitytest.OpenFails(t, "hunter2",
		"zookeeper://"+host+"/x?bogus=1",
		"zookeeper://"+host+"/x?session=soon",
		"zookeeper://"+host+"/x?acl=everyone",
		"zookeeper://"+host+"/x?acl=creator",
		"zookeeper://"+host+"/zookeeper",
		"zookeeper://"+host+"/x?prefix=a//b",
		"zookeeper://u:hunter2@"+host+"/x?bogus=1&password=hunter2",
	)
	// An unreachable server fails within the context, without the password.
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if b, err := claim.Open(sctx, "zookeeper://u:hunter2@127.0.0.1:1/x"); err == nil {
		b.Close()
		t.Errorf("Open of an unreachable server succeeded")
	} else if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestKeyEncoding(t *testing.T) {
	for _, k := range []string{"plain", ".", "..", "a/b", strings.Repeat("x", 300), "ü", "sp ace"} {
		e := keys.Encode(k)
		if len(e) > maxKeyLen || strings.ContainsAny(e, "/ ") || e == "." || e == ".." {
			t.Errorf("Encode(%q) = %q: not a valid znode name", k, e)
		}
	}
	if keys.Encode("plain") != "=plain" {
		t.Errorf("readable keys should stay readable")
	}
}

func TestParseURL(t *testing.T) {
	u, err := url.Parse("zookeeper://alice:pw@zk1,zk2:2182/apps/x?prefix=s&session=5s&dial_timeout=3s")
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"zk1:2181", "zk2:2182"}
	if fmt.Sprint(c.servers) != fmt.Sprint(want) || c.session != 5*time.Second || c.dialTimeout != 3*time.Second || string(c.auth) != "alice:pw" ||
		c.opt.Prefix != "apps/x/s" || len(c.opt.ACL) != 1 || c.opt.ACL[0].Scheme != "auth" {
		t.Errorf("parseURL = %+v", c)
	}
	u, _ = url.Parse("zookeeper://[::1]:2183")
	if c, err := parseURL(u); err != nil || fmt.Sprint(c.servers) != "[[::1]:2183]" {
		t.Errorf("IPv6: %+v, %v", c, err)
	}
	u, _ = url.Parse("zookeeper://")
	if c, err := parseURL(u); err != nil || fmt.Sprint(c.servers) != "[127.0.0.1:2181]" || c.opt.Prefix != DefaultPrefix || c.opt.ACL != nil || c.tls != nil {
		t.Errorf("defaults: %+v, %v", c, err)
	}
	// The shared TLS parameters, read only with tls=true.
	u, _ = url.Parse("zookeeper://zk1/x?tls=true&servername=zk.example&skip_verify=true")
	if c, err := parseURL(u); err != nil || c.tls == nil || c.tls.ServerName != "zk.example" || !c.tls.InsecureSkipVerify {
		t.Errorf("tls=true&servername&skip_verify: %+v, %v", c.tls, err)
	}
	u, _ = url.Parse("zookeeper://zk1/x?tls=true")
	if c, err := parseURL(u); err != nil || c.tls == nil || c.tls.ServerName != "" {
		t.Errorf("tls=true: %+v, %v (want each host's name verified, ServerName empty)", c.tls, err)
	}
	for _, bad := range []string{
		"zookeeper://zk1/x?skip_verify=true",         // TLS parameter without tls=true
		"zookeeper://zk1/x?servername=zk.example",    // likewise
		"zookeeper://zk1/x?tls=true&skip_verify=yes", // malformed
		"zookeeper://zk1/x?session=1s&session=2s",    // repeated
		"zookeeper://zk1/x?dial_timeout=-1s",         // negative
		"zookeeper://zk1/x?session=1s;prefix=p",      // ';' separator
		"zookeeper://zk1/x?tls=true&cacert=/nonexistent/ca.pem",
	} {
		u, _ := url.Parse(bad)
		if _, err := parseURL(u); err == nil {
			t.Errorf("parseURL(%q) succeeded", bad)
		}
	}
}

// FuzzParseURL: no URL makes parseURL panic or puts its password in an
// error, and what it accepts has servers and a valid prefix.
func FuzzParseURL(f *testing.F) {
	securitytest.FuzzURL(f, func(t *testing.T, u *url.URL) error {
		c, err := parseURL(u)
		if err != nil {
			return err
		}
		if len(c.servers) == 0 {
			t.Errorf("no servers from %q", u)
		}
		if _, err := validPrefix(c.opt.Prefix); err != nil {
			t.Errorf("accepted an invalid prefix %q", c.opt.Prefix)
		}
		return nil
	},
		"zookeeper://h:1,h2:2/chroot?prefix=p&session=1s&dial_timeout=2s",
		"zookeeper://u:p@[::1]:2181/x?acl=creator",
		"zookeeper:///..?prefix=zookeeper",
		"zookeeper://h/x?tls=true&servername=s&skip_verify=1",
	)
}

// TestKeepAlive: background renewals keep a short lease held well past
// its TTL; once stopped and released, the key is free.
func TestKeepAlive(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	a, b := open(t, srv, "keepalive"), open(t, srv, "keepalive")
	// A short lease, renewed every TTL/3: a renewal may be late by about
	// half a TTL (a loaded machine) before the lease runs out.
	const ttl = time.Second
	l, err := a.TryClaim(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	k := a.KeepAlive(ctx, l, nil)
	for i := 0; i < 4; i++ {
		time.Sleep(ttl * 3 / 5)
		if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("%s into a kept-alive %s lease: TryClaim %v, want ErrHeld", time.Duration(i+1)*ttl*3/5, ttl, err)
		}
	}
	if err := k.Err(); err != nil {
		t.Fatalf("keeper: %v", err)
	}
	cur := k.Stop()
	if err := a.Commit(ctx, cur, []byte("done"), 0); err != nil {
		t.Errorf("Commit with the renewed lease: %v", err)
	}
	// The original copy is past its own Deadline, but the lease it names
	// was renewed: releasing it releases the lease.
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("Release of the original copy of a renewed lease: %v", err)
	}
	if l2, err := b.TryClaim(ctx, "k", time.Minute); err != nil {
		t.Errorf("TryClaim after release: %v", err)
	} else if l2.Token <= l.Token {
		t.Errorf("token %d <= %d", l2.Token, l.Token)
	}
}
