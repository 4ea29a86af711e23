package dynamo

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestMain runs the tests with the SDK's instance metadata client off: a
// URL without a loopback endpoint takes its credentials from the SDK's
// default chain, and no test should ask a metadata service for them (the
// SDK's own clients, which Close cannot reach, would keep connections to
// it open past the test).
func TestMain(m *testing.M) {
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	backendtest.Main(m)
}

// table creates the test table on srv and returns srv's URL.
func table(t testing.TB, srv *testserver.Server) string {
	t.Helper()
	backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "create_table", "true"))
	return srv.URL()
}

// server returns the URL of the shared dynalite's table.
func server(t testing.TB) string { return table(t, testserver.Shared(t, testserver.Dynamo)) }

// drv is the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

// harness runs on srv. The isolated namespace's prefix extends the default
// one, so the Isolation check also covers such a prefix. The watchdog
// allows for MutualExclusion's herd on one dynalite (a single-threaded
// emulator serving every check at once), which needs tens of seconds on a
// loaded machine.
func harness(t testing.TB, srv *testserver.Server) conformance.Harness {
	url := table(t, srv)
	h := backendtest.Harness(srv, func(ns string) string {
		if ns == "" {
			return url
		}
		return backendtest.WithQuery(t, url, "prefix", "stampede:"+ns)
	})
	h.Timeout = 3 * time.Minute
	return h
}

// TestConformance runs the suite on a dynalite of its own, which the
// DurableFence check may crash and restart (dynalite keeps its data);
// against STAMPEDE_TEST_DYNAMO_URL it runs without that check.
func TestConformance(t *testing.T) {
	conformance.Run(t, harness(t, testserver.Require(t, testserver.Dynamo)))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1 (through the topic log, polled), on this backend.
func TestFlight(t *testing.T) {
	backendtest.FlightOn(t, harness(t, testserver.Shared(t, testserver.Dynamo)))
}

func TestURL(t *testing.T) {
	// No error shows the credentials.
	securitytest.OpenFails(t, "hunter",
		"dynamodb://user:hunter2@tbl?region=us-east-1&aws_secret_key=hunter3",
		"dynamodb://tbl?region=us-east-1&nosuch=1",
		"dynamodb://tbl?region=us-east-1&clock_skew=soon",
		"dynamodb://tbl?region=us-east-1&retention=forever",
		"dynamodb://tbl?region=us-east-1&endpoint=ftp%3A%2F%2Fx",
		"dynamodb://tbl/path?region=us-east-1",
		"dynamodb://tbl:80?region=us-east-1",
		"dynamodb://?region=us-east-1",
		"dynamodb://tbl?region=us-east-1;prefix=x",
		"dynamodb://tbl?region=us-east-1&prefix=a&prefix=b",
		"dynamodb://tbl?region=us-east-1&cacert=ca.pem",
		"dynamodb://tbl?region=us-east-1&dial_timeout=soon",
		"dynamodb://tbl?region=us-east-1&poll_learn=maybe",
	)
	// lazy: nothing listens there.
	b, err := claim.Open(context.Background(), "dynamodb://tbl?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A1&prefix=app&clock_skew=1s&retention=off&poll_min=1ms&poll_max=10ms&poll_learn=false&dial_timeout=2s&create_table=true&lazy=true")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	db := drv(b)
	if db.table != "tbl" || db.prefix != "app" || db.skew != time.Second || db.retention >= 0 || !db.create {
		t.Errorf("options not applied: %+v", db)
	}
	for _, p := range []*driver.Poller{db.Poller, db.grants} {
		if o := p.Options(); o.Min != time.Millisecond || o.Max != 10*time.Millisecond || !o.NoHoldEstimate {
			t.Errorf("poll options not applied: %+v", o)
		}
	}
}

func TestKeys(t *testing.T) {
	b, err := newBackend(dynamodb.New(dynamodb.Options{Region: "us-east-1"}), Options{Prefix: strings.Repeat("p", 1000)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	seen := map[string]string{}
	for _, k := range []string{"a", strings.Repeat("x", 5000), "ctl\x01", "ünï", "\xff\xfe", "=a", "#a"} {
		s := b.itemKey(k)["k"].(*types.AttributeValueMemberS).Value
		if len(s) > 2048 || !strings.HasPrefix(s, b.prefix+":") {
			t.Errorf("key %q: item key %d bytes", k, len(s))
		}
		if strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f || r == 0xfffd }) {
			t.Errorf("key %q: item key %q not clean UTF-8", k, s)
		}
		if o, dup := seen[s]; dup {
			t.Errorf("keys %q and %q collide", o, k)
		}
		seen[s] = k
	}
}

// TestMaxValueUnderLongestKey: a value of MaxValueLen under a key of the
// full 2048 bytes fits the 400 KB item, lease attributes included.
func TestMaxValueUnderLongestKey(t *testing.T) {
	b := backendtest.Open(t, server(t))
	ctx := context.Background()
	k := strings.Repeat("k", 2048-len(drv(b).prefix)-2) // readable, 2048 bytes in all
	if n := len(drv(b).itemKey(k)["k"].(*types.AttributeValueMemberS).Value); n != 2048 {
		t.Fatalf("item key %d bytes, want 2048", n)
	}
	l, err := b.TryClaim(ctx, k, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx, l, bytes.Repeat([]byte{7}, MaxValueLen), time.Hour); err != nil {
		t.Fatalf("Commit of MaxValueLen under a 2048-byte key: %v", err)
	}
	if err := b.Notify(ctx, k); err != nil {
		t.Error(err)
	}
	if _, err := b.Extend(ctx, l, time.Minute); err != nil {
		t.Error(err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Error(err)
	}
	if v, err := b.Get(ctx, k); err != nil || len(v) != MaxValueLen {
		t.Errorf("Get = %d bytes, %v", len(v), err)
	}
}

// TestClockSkewMargin: a lease is taken over only ClockSkew after its
// recorded expiry by a client that first saw it late (after it expired:
// its sighting plus the TTL is later than that), and HeldError.Remaining
// says so where DynamoDB returns the old item (dynalite does not: 0).
func TestClockSkewMargin(t *testing.T) {
	url := backendtest.WithQuery(t, server(t), "clock_skew", "400ms")
	a, b := backendtest.Open(t, url), backendtest.Open(t, url)
	ctx := context.Background()
	key := securitytest.Unique(t) + "skew"
	l, err := a.TryClaim(ctx, key, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(l.Deadline) + 50*time.Millisecond)
	// b first sees the lease now (its poll read), past the holder's
	// deadline: its sighting says nothing before 1 s from now, the clock
	// rule 400 ms after the recorded expiry, which is the poll's takeover
	// time.
	st, err := drv(b).readState(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if st.Holder == "" || st.Expires.Before(l.Deadline.Add(400*time.Millisecond)) || st.Expires.After(l.Deadline.Add(500*time.Millisecond)) {
		t.Errorf("late poll: holder %q, takeover %s after the Deadline, want the recorded expiry + 400ms", st.Holder, st.Expires.Sub(l.Deadline))
	}
	// Past the holder's deadline but within the margin: still held.
	_, err = b.TryClaim(ctx, key, time.Second)
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("TryClaim within the skew margin: %v, want HeldError", err)
	}
	if he.Remaining > 400*time.Millisecond {
		t.Errorf("Remaining = %s, more than the margin left", he.Remaining)
	}
	// After the margin, long before the late sighting's end.
	time.Sleep(time.Until(l.Deadline.Add(550 * time.Millisecond)))
	l2, err := b.TryClaim(ctx, key, time.Second)
	if err != nil {
		t.Fatalf("TryClaim after the margin: %v", err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token %d after %d", l2.Token, l.Token)
	}
	_ = b.Release(ctx, l2)
}

// TestTakeoverBySighting: a client that saw a claim being made takes it
// over once its sighting plus the claim's TTL has passed, whatever
// clock_skew says (2 s here, so the clock rule would wait until 2 s after
// the recorded expiry), and never before the holder's Deadline (one
// process: one clock). dynalite returns no item on a failed claim, so the
// sighting comes from the poll's read: the driver's readState, a
// subscription's poller (Acquire), the queue's read (AcquireFair).
func TestTakeoverBySighting(t *testing.T) {
	raw := server(t)
	const ttl = time.Second
	for _, mode := range []string{"TryClaim", "Acquire", "AcquireFair"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			a, b := backendtest.Open(t, raw), backendtest.Open(t, backendtest.WithQuery(t, raw, "clock_skew", "2s"))
			ctx := backendtest.Context(t)
			key := securitytest.Unique(t) + "sighted"
			var l claim.Lease
			var err error
			if mode == "AcquireFair" {
				l, err = a.AcquireFair(ctx, key, ttl)
			} else {
				l, err = a.TryClaim(ctx, key, ttl)
			}
			if err != nil {
				t.Fatal(err)
			}
			var l2 claim.Lease
			switch mode {
			case "TryClaim":
				if st, err := drv(b).readState(ctx, key); err != nil || st.Holder == "" {
					t.Fatalf("poll read after the claim: %+v, %v", st, err)
				}
				for {
					l2, err = b.TryClaim(ctx, key, ttl)
					if !errors.Is(err, claim.ErrHeld) || time.Now().After(l.Deadline.Add(2*time.Second)) {
						break
					}
					time.Sleep(10 * time.Millisecond)
				}
			case "Acquire":
				l2, err = b.Acquire(ctx, key, ttl)
			case "AcquireFair":
				l2, err = b.AcquireFair(ctx, key, ttl)
			}
			got := time.Now()
			if err != nil {
				t.Fatalf("%s: %v", mode, err)
			}
			defer b.Release(context.Background(), l2)
			if l2.Token <= l.Token {
				t.Errorf("token %d after %d", l2.Token, l.Token)
			}
			if !got.After(l.Deadline) {
				t.Errorf("took over %s before the holder's Deadline", l.Deadline.Sub(got))
			}
			// The clock rule would wait past Deadline + 2 s.
			if past := got.Sub(l.Deadline); past > 1500*time.Millisecond {
				t.Errorf("took over %s after the holder's Deadline, want well within clock_skew (2s)", past)
			} else {
				t.Logf("took over %s after the holder's Deadline", past)
			}
		})
	}
}

// TestTakeoverNeedsRecordedTTL: a lease whose item records no TTL for its
// expiry (no lw: written by an earlier version; an lw of another expiry:
// left behind by an earlier version's Extend; an lw of another holder:
// left behind, and the key claimed since by an earlier version) is taken
// over by the clock rule alone, however early it was seen.
func TestTakeoverNeedsRecordedTTL(t *testing.T) {
	raw := server(t)
	a, b := backendtest.Open(t, raw), backendtest.Open(t, backendtest.WithQuery(t, raw, "clock_skew", "2s"))
	ctx := backendtest.Context(t)
	da := drv(a)
	for _, c := range []struct{ name, expr string }{
		{"none", "REMOVE #lw"},
		{"stale", "SET #le = #le + :one"},
		{"other holder", "SET #h = :other"},
	} {
		key := securitytest.Unique(t) + c.name
		l, err := a.TryClaim(ctx, key, 300*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		var vals map[string]types.AttributeValue
		switch c.name {
		case "stale":
			vals = map[string]types.AttributeValue{":one": num(1)}
		case "other holder":
			vals = map[string]types.AttributeValue{":other": str("an earlier version's holder")}
		}
		if _, err := da.update(ctx, key, c.expr, "", vals, types.ReturnValueNone); err != nil {
			t.Fatal(err)
		}
		st, err := drv(b).readState(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if st.Holder == "" || st.Expires.Before(l.Deadline.Add(2*time.Second)) {
			t.Errorf("%s: poll takeover %s after the Deadline, want the recorded expiry + 2s", c.name, st.Expires.Sub(l.Deadline))
		}
		time.Sleep(time.Until(l.Deadline.Add(100 * time.Millisecond)))
		if _, err := b.TryClaim(ctx, key, time.Second); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("%s: TryClaim past the sighting's end: %v, want ErrHeld (no TTL recorded)", c.name, err)
		}
	}
}

// TestFenceSurvivesItemLoss: tokens keep increasing after the item was
// deleted (reaped by TTL, or the table recreated).
func TestFenceSurvivesItemLoss(t *testing.T) {
	b := backendtest.Open(t, server(t))
	ctx := context.Background()
	l1 := backendtest.Claim(t, b, "reaped", time.Minute)
	if err := b.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	d := drv(b)
	if _, err := d.c.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(d.table), Key: d.itemKey("reaped")}); err != nil {
		t.Fatal(err)
	}
	l2 := backendtest.Claim(t, b, "reaped", time.Minute)
	if l2.Token <= l1.Token {
		t.Errorf("token after the item was lost: %d <= %d", l2.Token, l1.Token)
	}
	_ = b.Release(ctx, l2)
}

// TestReapAttribute: exp never falls below a live lease or a live value,
// and an item holding a value without TTL is never reaped.
func TestReapAttribute(t *testing.T) {
	b := backendtest.Open(t, backendtest.WithQuery(t, server(t), "retention", "1h"))
	d := drv(b)
	ctx := context.Background()
	exp := func() int64 {
		out, err := d.c.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(d.table), Key: d.itemKey("reap"), ConsistentRead: aws.Bool(true)})
		if err != nil {
			t.Fatal(err)
		}
		v, _ := attr(out.Item, "exp")
		return v
	}
	now := time.Now().Unix()
	l, err := b.TryClaim(ctx, "reap", 30*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if e := exp(); e < now+30*60+3600 {
		t.Errorf("exp %d s from now, want at least lease + retention", e-now)
	}
	if err := b.Set(ctx, "reap", []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if e := exp(); e < now+30*60+3600 {
		t.Errorf("after a short Set, exp %d s from now: below the live lease + retention", e-now)
	}
	if err := b.Commit(ctx, l, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Extend(ctx, l, time.Minute); err != nil {
		t.Fatal(err)
	}
	if e := exp(); e != farFuture {
		t.Errorf("value without TTL, then a lease write: exp = %d, want never", e)
	}
	if _, err := b.TryClaim(ctx, "reap", 2*time.Hour); err == nil || errors.Is(err, claim.ErrHeld) {
		t.Errorf("a lease longer than the retention: %v, want an error", err)
	}
	_ = b.Release(ctx, l)
}

// TestServerRestart: dynalite keeps its data across a restart (see
// backendtest.PollRestart).
func TestServerRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Dynamo, nil)
	url := table(t, srv)
	backendtest.PollRestart(t, srv, backendtest.Open(t, url), backendtest.Open(t, url), true)
}

func BenchmarkConformance(b *testing.B) {
	conformance.Bench(b, harness(b, testserver.Shared(b, testserver.Dynamo)))
}

// FuzzOpenURL: no URL makes the opener panic, and a password in a URL
// never reaches an error.
func FuzzOpenURL(f *testing.F) {
	securitytest.FuzzURL(f, securitytest.OpenURL,
		"dynamodb://tbl?region=us-east-1",
		"dynamodb://tbl?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A1&clock_skew=1s",
		"dynamodb://u:secretpw@tbl?region=x",
		"dynamodb://tbl?retention=off&retention=1h",
		"dynamodb://tbl?endpoint=%zz",
		"dynamodb://tbl?region=r&endpoint=http%3A%2F%2Fu%3Asecretpw%40h",
	)
}

// TestWakeRules: a reaped item (or a recreated table) does not bring the
// notify counter back to a value a poller saw.
func TestWakeRules(t *testing.T) {
	a, b := backendtest.Open(t, server(t)), backendtest.Open(t, server(t))
	backendtest.PollWakeRules(t, a, b, drv(b).readState, func(ctx context.Context, key string) error {
		d := drv(a)
		_, err := d.c.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(d.table), Key: d.itemKey(key)})
		return err
	})
}

func TestOwnWakeups(t *testing.T) {
	c := backendtest.Open(t, backendtest.WithQuery(t, server(t), "poll_min", "1h", "poll_max", "1h"))
	backendtest.PollOwnWakeups(t, c, drv(c).Len)
}

// TestReleaseReplyLate: a Release sent well within the lease whose reply
// is read after the lease's expiry (a slow link, a paused process)
// releases the lease and succeeds: expiry is judged by the clock read
// before the request was sent, not after the reply arrived.
func TestReleaseReplyLate(t *testing.T) {
	raw := server(t)
	p := securitytest.NewDelayProxy(t, strings.TrimPrefix(mustQuery(t, raw, "endpoint"), "http://"))
	a := backendtest.Open(t, backendtest.WithQuery(t, raw, "endpoint", "http://"+p.Addr()))
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "release-late"
	l := backendtest.Claim(t, a, key, time.Second)
	p.Set(securitytest.Delay{Down: 1500 * time.Millisecond})
	err := a.Release(ctx, l)
	p.Set(securitytest.Delay{})
	if n := p.Released(); n != 1 {
		t.Fatalf("%d replies held, want the Release's one", n)
	}
	if late := time.Now(); !late.After(l.Deadline.Add(drv(a).skew)) {
		t.Fatalf("the reply came at %s, before the lease's expiry %s: the test proves nothing", late, l.Deadline)
	}
	if err != nil {
		t.Errorf("Release sent within the lease, its reply read after it: %v, want success", err)
	}
	d := drv(a)
	out, err := d.c.GetItem(ctx, &dynamodb.GetItemInput{TableName: aws.String(d.table), Key: d.itemKey(key), ConsistentRead: aws.Bool(true)})
	if err != nil {
		t.Fatal(err)
	}
	if _, held := out.Item["h"]; held {
		t.Error("the lease is still recorded after the Release")
	}
}

// mustQuery returns the query parameter name of rawURL.
func mustQuery(t *testing.T, rawURL, name string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Query().Get(name)
}

// BenchmarkPollHandoff: handoff p50 with the waiter's polls counted
// (backendtest.PollHandoff; STAMPEDE_POLL_MIN and STAMPEDE_POLL_MAX set
// the poller).
func BenchmarkPollHandoff(b *testing.B) {
	backendtest.PollHandoff(b, open, func(waiter *claim.Client, poll func()) {
		wb := drv(waiter)
		wb.Poller.Close()
		wb.Poller = driver.NewPoller(func(ctx context.Context, k string) (driver.PollState, error) {
			poll()
			return wb.readState(ctx, k)
		}, backendtest.PollOptions())
	})
}

// BenchmarkTakeover: from a dead holder's Deadline to a waiter's takeover
// (backendtest.Takeover; ClockSkew, 100 ms by default, is part of it).
func BenchmarkTakeover(b *testing.B) { backendtest.Takeover(b, open) }

// open opens a client of the shared test server for a benchmark.
var open = func(t testing.TB) *claim.Client { return backendtest.Open(t, server(t)) }

// TestTakeoverNeedsTheWriteSeen: a takeover by sightings replaces only the
// very write of the lease that was seen. A write since (here lw.n
// changed, as a renewal that recorded the same expiry and TTL on another
// clock would) is another write, and the claim is refused until it has
// been seen for its own TTL.
func TestTakeoverNeedsTheWriteSeen(t *testing.T) {
	raw := server(t)
	a, b := backendtest.Open(t, raw), backendtest.Open(t, backendtest.WithQuery(t, raw, "clock_skew", "2s"))
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t)
	l, err := a.TryClaim(ctx, key, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	st, err := drv(b).readState(ctx, key) // b sees the claim's write
	if err != nil || st.Holder == "" || !st.Expires.Before(l.Deadline.Add(time.Second)) {
		t.Fatalf("poll: %+v, %v; want the key held, to be taken over by the sighting (before the clock rule's 2s past %s)", st, err, l.Deadline)
	}
	if _, err := drv(a).update(ctx, key, "SET #lw.#n = :n", "", map[string]types.AttributeValue{":n": num(7)}, types.ReturnValueNone); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(st.Expires.Add(50 * time.Millisecond)))
	if _, err := b.TryClaim(ctx, key, time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim past the seen write's end, after an unseen write: %v, want ErrHeld", err)
	}
}
