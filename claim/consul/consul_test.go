package consul_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// prefix is the test's own key prefix.
func prefix(t testing.TB) string { return "test/" + strings.ReplaceAll(t.Name(), "/", "-") }

// uniq returns the server's URL with the test's prefix and the given query
// parameters (name, value, ...) added.
func uniq(t testing.TB, srv *testserver.Server, params ...string) string {
	return backendtest.WithQuery(t, srv.URL(), slices.Concat([]string{"prefix", prefix(t)}, params)...)
}

// harness opens clients of srv under the test's prefix; the isolated ones
// under a prefix nested in it, which must share nothing with it either.
// No Restart: the test server is `consul agent -dev`, which keeps its
// state (and the raft index, the fencing token) in memory only.
func harness(t testing.TB, srv *testserver.Server, params ...string) conformance.Harness {
	h := backendtest.Harness(srv, func(ns string) string {
		return uniq(t, srv, slices.Concat(params, []string{"prefix", path.Join(prefix(t), ns)})...)
	})
	h.Restart = nil
	return h
}

// apiClient returns a Consul client of srv of the test's own.
func apiClient(t testing.TB, srv *testserver.Server) *capi.Client {
	cfg := capi.DefaultConfig()
	cfg.Address = srv.Addr()
	c, err := capi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// expectWake checks whether what just happened woke s. A blocking query
// answers within a round trip of a write, so a wake-up arrives well
// within half a second.
func expectWake(t *testing.T, s *claim.Subscription, what string, wake bool) {
	t.Helper()
	window := 500 * time.Millisecond
	if wake {
		window = 30 * time.Second
	}
	select {
	case <-s.C():
		if !wake {
			t.Fatalf("%s woke the subscriber", what)
		}
	case <-time.After(window):
		if wake {
			t.Fatalf("%s did not wake the subscriber", what)
		}
	}
}

func TestConformance(t *testing.T) {
	conformance.Run(t, harness(t, testserver.Shared(t, testserver.Consul)))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1 (through the topic log), on this backend.
func TestFlight(t *testing.T) {
	backendtest.FlightOn(t, harness(t, testserver.Shared(t, testserver.Consul)))
}

func BenchmarkConformance(b *testing.B) {
	conformance.Bench(b, harness(b, testserver.Shared(b, testserver.Consul)))
}

// A renewal whose reply was lost is retried with the same lease: both
// calls succeed, the current holder never sees ErrLost, and the lease
// from either call keeps working.
func TestAmbiguousExtend(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	a, b := backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv))
	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	l1, err := a.Extend(ctx, l, time.Minute)
	if err != nil {
		t.Fatalf("first Extend: %v", err)
	}
	l2, err := a.Extend(ctx, l, 2*time.Minute) // the same, older lease
	if err != nil {
		t.Fatalf("Extend retried with the older lease: %v", err)
	}
	if l2.Token != l.Token || l1.Token != l.Token {
		t.Errorf("tokens changed by Extend: %d, %d, %d", l.Token, l1.Token, l2.Token)
	}
	// Any of the three copies still commits, extends and (once) releases.
	for i, x := range []claim.Lease{l, l1, l2} {
		if err := a.Commit(ctx, x, []byte{byte('0' + i)}, 0); err != nil {
			t.Errorf("Commit with copy %d: %v", i, err)
		}
	}
	// Concurrent Extends of one lease (a keeper racing a manual renewal).
	var wg sync.WaitGroup
	var failed atomic.Int32
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Extend(ctx, l1, time.Minute); err != nil {
				t.Errorf("concurrent Extend: %v", err)
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim by another client: %v, want ErrHeld", err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("Release with the original lease: %v", err)
	}
	if _, err := a.Extend(ctx, l2, time.Minute); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend after Release: %v, want ErrLost", err)
	}
}

// Of many clients racing to take over one expired lease, exactly one wins.
func TestTakeoverRace(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	u := uniq(t, srv, "clock_skew", "10ms")
	const n = 8
	cs := make([]*claim.Client, n)
	for i := range cs {
		cs[i] = backendtest.Open(t, u)
	}
	for round := 0; round < 5; round++ {
		old, err := cs[0].TryClaim(ctx, "k", 20*time.Millisecond)
		if err != nil {
			t.Fatalf("round %d: TryClaim: %v", round, err)
		}
		time.Sleep(time.Until(old.Deadline) + 30*time.Millisecond)
		var wins atomic.Int32
		var wg sync.WaitGroup
		leases := make(chan claim.Lease, n)
		for _, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, err := c.TryClaim(ctx, "k", time.Minute)
				switch {
				case err == nil:
					wins.Add(1)
					leases <- l
				case !errors.Is(err, claim.ErrHeld):
					t.Errorf("TryClaim: %v", err)
				}
			}()
		}
		wg.Wait()
		close(leases)
		if w := wins.Load(); w != 1 {
			t.Fatalf("round %d: %d clients took over one expired lease, want exactly 1", round, w)
		}
		l := <-leases
		if l.Token <= old.Token {
			t.Errorf("takeover token %d <= %d", l.Token, old.Token)
		}
		if err := cs[0].Release(ctx, l); err != nil {
			t.Errorf("Release: %v", err)
		}
	}
}

// A waiter that first sees a lease after it expired takes it over only
// at the lease's recorded expiry plus the clock-skew margin (when that
// comes before its own sighting plus the TTL); HeldError.Remaining
// includes the margin.
func TestSkewMargin(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	backendtest.SkewMargin(t, backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv, "clock_skew", "300ms")))
}

// A waiter that saw a claim being made takes it over within a round
// trip of the holder's Deadline, not its recorded expiry plus
// clock_skew: it judges by its own first sighting of the record plus the
// TTL the record names (driver.Sightings), which the holder's Deadline
// precedes whatever the two clocks read.
func TestTakeoverBySighting(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	backendtest.TakeoverBySighting(t, backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv, "clock_skew", "2s")), nil)
}

// A subscribed waiter sees an Extend through its blocking query (which
// the Extend ends, though it wakes nobody) and counts the renewed lease
// from about then, not from its own next read: read 600 ms after the
// Extend, the renewed lease of 1 s has at most 400 ms and a little left
// by its sighting (from its own read it would have the whole TTL; by
// the clock rule, that plus the 2 s of clock_skew).
func TestExtendSeenByWatch(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := backendtest.Context(t)
	a, b := backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv, "clock_skew", "2s"))
	const ttl = time.Second
	l := backendtest.Claim(t, a, "k", ttl)
	backendtest.Subscribe(t, b, "k")
	time.Sleep(200 * time.Millisecond) // the blocking query is waiting
	l, err := a.Extend(ctx, l, ttl)
	if err != nil {
		t.Fatal(err)
	}
	extended := time.Now()
	time.Sleep(600 * time.Millisecond)
	_, err = b.TryClaim(ctx, "k", time.Minute)
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("TryClaim of a held key: %v, want HeldError", err)
	}
	if limit := ttl - time.Since(extended) + 300*time.Millisecond; he.Remaining > limit {
		t.Errorf("Remaining = %s %s after the Extend, want at most %s: the Extend was not seen when it was made", he.Remaining, time.Since(extended), limit)
	}
	_ = a.Release(ctx, l)
}

// Neither a claim of a free key (waiters wait for its end, and checked
// the key themselves after subscribing) nor Extend wakes a subscriber;
// the release does.
func TestClaimAndExtendWakeNobody(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	a, b := backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv))
	s := backendtest.Subscribe(t, b, "k")
	l := backendtest.Claim(t, a, "k", time.Minute)
	expectWake(t, s, "a claim of a free key", false)
	for i := 0; i < 3; i++ {
		var err error
		if l, err = a.Extend(ctx, l, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	expectWake(t, s, "Extend", false)
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	expectWake(t, s, "Release", true)
}

// A subscriber survives a server restart: the failed blocking query
// wakes it at once (the backend cannot rule out a missed release, and
// no wake-up can come while the agent is down), the re-read after the
// restart wakes it again, and then releases and notifications reach it
// again.
func TestReconnect(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Consul, nil)
	ctx := context.Background()
	a, b := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
	s := backendtest.Subscribe(t, b, "k")
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	expectWake(t, s, "the server's crash", true)
	if _, err := a.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("TryClaim with the server down: %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	expectWake(t, s, "the server's restart", true)
	// The -dev server came back empty; claims work again, and the
	// blocking query is live again: the release wakes the subscriber.
	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("TryClaim after restart: %v", err)
	}
	if err := a.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	expectWake(t, s, "the release after the restart", true)
}

// The blocking query's rules, with the KV writes made by hand so that what
// one read sees is exact: a lock key appearing (a claim) wakes nobody; a
// notify key that moved wakes, even when a lock key appeared in the same
// read (a release, then a claim, between two reads); a lock key the
// previous read saw, gone or replaced, wakes. And Release and
// CommitRelease move the notify key.
func TestWakeRules(t *testing.T) {
	c := apiClient(t, testserver.Shared(t, testserver.Consul))
	b, err := consul.New(c, &consul.Options{Prefix: "test/" + t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	names := consul.NamesForTest(b, "k")
	lock, notify := names[0], names[1]
	s, err := b.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	txn := func(ops ...*capi.TxnOp) {
		t.Helper()
		ok, resp, _, err := c.Txn().Txn(ops, nil)
		if err != nil || !ok {
			t.Fatalf("txn: %v %+v", err, resp)
		}
	}
	n := 0
	set := func(k string) *capi.TxnOp {
		n++ // a write of the same value does not move the index
		return &capi.TxnOp{KV: &capi.KVTxnOp{Verb: capi.KVSet, Key: k, Value: []byte{byte(n)}}}
	}
	del := func(k string) *capi.TxnOp {
		return &capi.TxnOp{KV: &capi.KVTxnOp{Verb: capi.KVDelete, Key: k}}
	}
	// A key never claimed nor notified has an empty prefix, whose index
	// Consul reports as the whole store's: writes elsewhere move it and
	// must wake nobody (an idle topic-log subscription, say).
	other := consul.NamesForTest(b, "another key")[1]
	txn(set(other))
	txn(set(other))
	expectWake(t, s, "writes to another key, this key's prefix empty", false)
	txn(set(lock))
	expectWake(t, s, "a lock key appearing (claim)", false)
	txn(set(lock))
	expectWake(t, s, "a rewrite of the lock key (Extend)", false)
	txn(del(lock))
	expectWake(t, s, "the lock key gone (expired and swept)", true)
	txn(set(lock))
	expectWake(t, s, "a lock key appearing (claim)", false)
	txn(del(lock), set(lock))
	expectWake(t, s, "the lock key replaced (takeover)", true)
	txn(del(lock), set(notify))
	expectWake(t, s, "the lock key gone and the notify key moved (release)", true)
	txn(set(lock), del(lock), set(notify), set(lock))
	expectWake(t, s, "claim, release, claim in one read", true)
	txn(set(notify))
	expectWake(t, s, "the notify key moved (Notify)", true)
	txn(del(lock))
	expectWake(t, s, "the lock key gone", true)

	// Release, CommitRelease and Notify write the notify key, each time
	// with a new value (Consul ignores a write of the value a key holds),
	// however close together.
	index := func() uint64 {
		t.Helper()
		p, _, err := c.KV().Get(notify, nil)
		if err != nil || p == nil {
			t.Fatalf("notify key: %v, %v", p, err)
		}
		return p.ModifyIndex
	}
	for _, how := range []string{"Release", "CommitRelease", "Notify", "Notify"} {
		l, err := b.TryClaim(ctx, "k", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		before := index()
		switch how {
		case "Release":
			err = b.Release(ctx, l)
		case "CommitRelease":
			err = b.CommitRelease(ctx, l, []byte("v"), 0)
		default:
			err = b.Notify(ctx, "k")
		}
		if err != nil {
			t.Fatal(err)
		}
		if after := index(); after <= before {
			t.Errorf("%s left the notify key at index %d", how, after)
		}
		if how == "Notify" {
			if err := b.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// The default value limit is DefaultMaxValueLen, under Consul's own 512
// KiB (conformance's TooLarge round-trips values of that size); a limit
// raised past what the server accepts gets ErrTooLarge from its HTTP 413.
// Keys at the 256-byte limit of readable keys and one byte past it
// (hashed) both go through Consul's HTTP paths and stay distinct.
func TestLimits(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	b := backendtest.Open(t, uniq(t, srv))
	if got := b.Features().MaxValueLen; got != consul.DefaultMaxValueLen {
		t.Errorf("MaxValueLen = %d", got)
	}
	if _, err := apiClient(t, srv).KV().Put(&capi.KVPair{Key: "raw", Value: make([]byte, 512<<10+1)}, nil); err == nil {
		t.Error("Consul accepted a value over 512 KiB")
	}
	securitytest.LongKeys(t, b, []int{256, 257})
	big := backendtest.Open(t, uniq(t, srv, "maxvalue", "700000"))
	l, err := big.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	v := bytes.Repeat([]byte("z"), 600000)
	if err := big.Commit(ctx, l, v, 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Commit over the server's limit: %v, want ErrTooLarge", err)
	}
	if err := big.Set(ctx, "k", v, 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set over the server's limit: %v, want ErrTooLarge", err)
	}
	_ = big.Release(ctx, l)
}

func TestSweep(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	b := backendtest.Open(t, uniq(t, srv, "clock_skew", "1ms"))
	if err := b.Set(ctx, "short", []byte("v"), 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := b.Set(ctx, "forever", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryClaim(ctx, "crashed", 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	live, err := b.TryClaim(ctx, "live", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	n, err := consul.Sweep(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("Sweep deleted %d keys, want 2 (an expired value and a crashed lease)", n)
	}
	if _, err := b.Get(ctx, "forever"); err != nil {
		t.Errorf("Sweep deleted a live value: %v", err)
	}
	if err := b.Release(ctx, live); err != nil {
		t.Errorf("Sweep broke a live lease: %v", err)
	}
}

func TestNew(t *testing.T) {
	c := apiClient(t, testserver.Shared(t, testserver.Consul))
	if _, err := consul.New(nil, nil); err == nil {
		t.Errorf("New(nil) succeeded")
	}
	if _, err := consul.New(c, &consul.Options{Prefix: "a/../b"}); err == nil {
		t.Errorf("prefix with .. accepted")
	}
	b, err := consul.New(c, &consul.Options{Prefix: "/mine/"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	if err := b.Set(ctx, "x", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	p, _, err := c.KV().Get("mine/v/=x", nil)
	if err != nil || p == nil {
		t.Fatalf("value not under the prefix: %v, %v", p, err)
	}
	if s := fmt.Sprint(b.Driver()); !strings.Contains(s, "mine") {
		t.Errorf("String() = %q", s)
	}
	var got *capi.Client
	if !b.As(&got) || got != c {
		t.Errorf("As(**api.Client) = %v, %p; want the client given to New", b.As(&got), got)
	}
	if n, err := consul.Sweep(ctx, b); err != nil || n != 0 {
		t.Errorf("Sweep of a fresh prefix: %d, %v", n, err)
	}
	b.Close()
	if _, err := consul.Sweep(ctx, b); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("Sweep after Close: %v, want ErrClosed", err)
	}
	m, _ := memory.New(nil, nil)
	defer m.Close()
	if _, err := consul.Sweep(ctx, m); err == nil {
		t.Errorf("Sweep of a memory client succeeded")
	}
}

// Every byte a readable key may contain survives Consul's HTTP paths
// (Get, Set, the blocking query) and its transactions (claim, commit)
// alike, and the key is stored readably.
func TestReadableKeys(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := context.Background()
	b := backendtest.Open(t, uniq(t, srv))
	var all []byte
	for c := byte(0x21); c < 0x7f; c++ {
		if !strings.ContainsRune(`/\"<>&%?#`, rune(c)) {
			all = append(all, c)
		}
	}
	keys := []string{string(all), ".", "..", "=", "a+b c", "x;y", "~user"}
	for _, k := range keys {
		l, err := b.TryClaim(ctx, k, time.Minute)
		if err != nil {
			t.Fatalf("TryClaim(%q): %v", k, err)
		}
		s, err := b.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe(%q): %v", k, err)
		}
		if err := b.Commit(ctx, l, []byte(k), 0); err != nil {
			t.Errorf("Commit(%q): %v", k, err)
		}
		if v, err := b.Get(ctx, k); err != nil || string(v) != k {
			t.Errorf("Get(%q) = %q, %v", k, v, err)
		}
		if err := b.Release(ctx, l); err != nil {
			t.Errorf("Release(%q): %v", k, err)
		}
		expectWake(t, s, fmt.Sprintf("Release(%q)", k), true)
		s.Close()
	}
}

func TestURL(t *testing.T) {
	const secret = "s3cr3t-T0KEN"
	bad := map[string]string{
		"consul://127.0.0.1:1/?token=" + secret + "&bogus=1":                             "unknown URL parameter",
		"consul://127.0.0.1:1/?token=" + secret + "&clock_skew=soon":                     "clock_skew",
		"consuls://127.0.0.1:1/?token=" + secret + "&skip_verify=maybe":                  "skip_verify",
		"consul://127.0.0.1:1/?token=" + secret + "&maxvalue=-1":                         "maxvalue",
		"consul://127.0.0.1:1/?token=" + secret + "&maxconns=-1":                         "maxconns",
		"consul://127.0.0.1:1/?token=" + secret + "&maxwatches=many":                     "maxwatches",
		"consul://127.0.0.1:1/?token=" + secret + "&prefix=a/../b":                       "prefix",
		"consul://127.0.0.1:1/app/cache?token=" + secret:                                 "?prefix=",
		"consul://127.0.0.1:1/?token=" + secret + "&cacert=/ca.pem":                      "TLS scheme",
		"consuls://127.0.0.1:1/?token=" + secret + "&cacert=/nonexistent":                "CA certificate",
		"consuls://127.0.0.1:1/?token=" + secret + "&cert=/c.pem":                        "together",
		"consul://127.0.0.1:1/?token=" + secret + ";dc=x":                                "';'",
		"consul://user:" + secret + "@127.0.0.1:1/?token=" + secret + "&token=" + secret: "2 times",
		// The names of earlier versions.
		"consul://127.0.0.1:1/?token=" + secret + "&skew=1s":            "skew",
		"consul://127.0.0.1:1/?token=" + secret + "&tls=true":           "tls",
		"consuls://127.0.0.1:1/?token=" + secret + "&cafile=/x":         "cafile",
		"consuls://127.0.0.1:1/?token=" + secret + "&insecure=1":        "insecure",
		"consuls://127.0.0.1:1/?certfile=/x&keyfile=/y&token=" + secret: "certfile, keyfile",
	}
	for u, want := range bad {
		_, err := claim.Open(context.Background(), u)
		if err == nil {
			t.Errorf("Open(%q) succeeded, want an error", claim.RedactURL(u))
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q): %v; want it to say %q", claim.RedactURL(u), err, want)
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
	}
	good := []string{
		"consul://127.0.0.1:1",
		"consul://127.0.0.1:1/?prefix=app/cache&token=" + secret + "&dc=dc1&clock_skew=0&wait=1m&maxvalue=1000",
		"consuls://127.0.0.1:1/?skip_verify=true&servername=consul.internal&maxconns=4&maxwatches=2",
		"consuls://user:" + secret + "@127.0.0.1:1",
	}
	lazy := &claim.Options{Lazy: true}
	for _, u := range good {
		// Nothing listens on port 1: Open's check fails (unavailable),
		// and errors name the request, never the token or password.
		_, err := claim.Open(context.Background(), u)
		if !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("Open(%q) with nothing listening: %v, want ErrUnavailable", claim.RedactURL(u), err)
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
		c, err := claim.OpenOptions(context.Background(), u, lazy)
		if err != nil {
			t.Errorf("Open(%q) lazily: %v", claim.RedactURL(u), err)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.TryClaim(ctx, "k", time.Second)
		cancel()
		if err == nil {
			t.Errorf("TryClaim against a closed port succeeded")
		} else if strings.Contains(err.Error(), secret) {
			t.Errorf("error leaks the secret: %v", err)
		}
		if s := fmt.Sprint(c.Driver()); strings.Contains(s, secret) {
			t.Errorf("String leaks the secret: %s", s)
		}
		c.Close()
	}
	if got := claim.RedactURL(good[1]); strings.Contains(got, secret) {
		t.Errorf("RedactURL = %s", got)
	}
}

// The token reaches Consul (an agent with ACLs, default deny) and never
// appears in errors; without it, or with a wrong one, Open fails with
// ErrConfig, and so does every call of a Client opened lazily.
func TestACLToken(t *testing.T) {
	const secret = "root-S3CRET-token"
	srv := testserver.RequireWith(t, testserver.Consul, &testserver.Options{Args: []string{
		"-hcl", `acl { enabled = true, default_policy = "deny", tokens { initial_management = "` + secret + `" } }`,
	}})
	ctx := context.Background()
	if _, err := claim.Open(ctx, srv.URL()); !errors.Is(err, claim.ErrConfig) || !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("Open without a token: %v, want ErrConfig (permission denied)", err)
	}
	anon := backendtest.Open(t, srv.URL()+"/?lazy=true")
	_, err := anon.TryClaim(ctx, "k", time.Minute)
	if !errors.Is(err, claim.ErrConfig) {
		t.Fatalf("TryClaim without a token: %v, want ErrConfig (permission denied)", err)
	}
	if !strings.Contains(err.Error(), "Permission denied") {
		t.Errorf("TryClaim without a token: %v", err)
	}
	if err := anon.Set(ctx, "k", []byte("v"), 0); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Set without a token: %v, want ErrConfig", err)
	}
	root := backendtest.Open(t, srv.URL()+"/?token="+secret)
	l, err := root.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("TryClaim with the token: %v", err)
	}
	if err := root.Commit(ctx, l, []byte("v"), 0); err != nil {
		t.Errorf("Commit with the token: %v", err)
	}
	if err := anon.Release(ctx, l); !errors.Is(err, claim.ErrConfig) || errors.Is(err, claim.ErrLost) || strings.Contains(err.Error(), secret) {
		t.Errorf("Release without a token: %v, want ErrConfig (and no secret)", err)
	}
	if err := root.Release(ctx, l); err != nil {
		t.Errorf("Release with the token: %v", err)
	}
	// A wrong token: errors do not repeat it.
	if _, err := claim.Open(ctx, srv.URL()+"/?token=wrong-"+secret); !errors.Is(err, claim.ErrConfig) || strings.Contains(err.Error(), secret) {
		t.Errorf("Open with a wrong token: %v, want ErrConfig (and no secret)", err)
	}
	wrong := backendtest.Open(t, srv.URL()+"/?lazy=true&token=wrong-"+secret)
	if _, err := wrong.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) || strings.Contains(err.Error(), secret) {
		t.Errorf("Get with a wrong token: %v, want ErrConfig (and no secret)", err)
	}
}

// consuls:// speaks HTTPS: against a plain-HTTP agent Open fails with
// ErrConfig (net/http: "server gave HTTP response to HTTPS client"), and
// so does a request of a Client opened lazily.
func TestTLSScheme(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	u, _ := url.Parse(srv.URL())
	u.Scheme = consul.SchemeTLS
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := claim.Open(ctx, u.String()); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Open over HTTPS of an HTTP agent: %v, want ErrConfig", err)
	}
	b := backendtest.Open(t, u.String()+"?lazy=true")
	if _, err := b.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("HTTPS request to an HTTP agent: err = %v, want ErrConfig", err)
	}
}

func FuzzURL(f *testing.F) {
	f.Add("consul://h:1?prefix=p&token=abc&dc=x")
	f.Add("consuls://u:pw@h?prefix=a/b&clock_skew=1s&maxvalue=5&skip_verify=true")
	f.Add("consul://h:1/p?token=abc")
	// Lazily: no URL makes the fuzzer wait for a server.
	lazy := &claim.Options{Lazy: true}
	f.Fuzz(func(t *testing.T, raw string) {
		b, err := claim.OpenOptions(context.Background(), raw, lazy)
		if err != nil {
			if u, perr := url.Parse(raw); perr == nil {
				if tok := u.Query().Get("token"); len(tok) > 3 && strings.Contains(err.Error(), tok) {
					// Unless the error shows that text with another
					// token in its place (part of the host, say).
					q := u.Query()
					q.Set("token", "placeholder-token")
					u.RawQuery = q.Encode()
					b2, err2 := claim.OpenOptions(context.Background(), u.String(), lazy)
					if err2 == nil {
						b2.Close()
					}
					if err2 == nil || !strings.Contains(err2.Error(), tok) {
						t.Errorf("error leaks the token: %v", err)
					}
				}
			}
			return
		}
		b.Close()
	})
}
