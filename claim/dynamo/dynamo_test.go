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
	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/conformance"
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

// server returns the shared dynalite and a URL of its table, created.
func server(t testing.TB) string {
	t.Helper()
	srv := testserver.Shared(t, testserver.Dynamo)
	b, err := claim.Open(context.Background(), srv.URL()+"&create_table=true")
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	return srv.URL()
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

// harness opens clients of url; restart, if set, crashes and restarts
// their server. The isolated namespace's prefix extends the default one.
// The watchdog allows for MutualExclusion's herd on one dynalite (a
// single-threaded emulator serving every check at once), which needs tens
// of seconds on a loaded machine.
func harness(url string, restart func(context.Context) error) conformance.Harness {
	return conformance.Harness{
		Open:         func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url) },
		OpenIsolated: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url+"&prefix=stampede:x") },
		Restart:      restart,
		Timeout:      3 * time.Minute,
	}
}

// TestConformance runs the suite on a dynalite of its own, which the
// DurableFence check may crash and restart (dynalite keeps its data);
// against STAMPEDE_TEST_DYNAMO_URL it runs without that check.
func TestConformance(t *testing.T) {
	if os.Getenv(testserver.Dynamo.EnvVar()) != "" {
		conformance.Run(t, harness(server(t), nil))
		return
	}
	srv := testserver.RequireWith(t, testserver.Dynamo, nil)
	open(t, srv.URL()+"&create_table=true")
	conformance.Run(t, harness(srv.URL(), func(ctx context.Context) error {
		if err := srv.Kill(); err != nil {
			return err
		}
		return srv.Restart(ctx)
	}))
}

func TestURL(t *testing.T) {
	ctx := context.Background()
	for _, bad := range []string{
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
	} {
		if b, err := claim.Open(ctx, bad); err == nil {
			b.Close()
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	_, err := claim.Open(ctx, "dynamodb://user:hunter2@tbl?region=us-east-1&aws_secret_key=hunter3")
	if err == nil || strings.Contains(err.Error(), "hunter") {
		t.Errorf("Open with credentials: err = %v (want an error without the secrets)", err)
	}
	b, err := claim.Open(ctx, "dynamodb://tbl?region=eu-west-1&endpoint=http%3A%2F%2F127.0.0.1%3A1&prefix=app&clock_skew=1s&retention=off&poll_min=1ms&poll_max=10ms")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	db := drv(b)
	if db.table != "tbl" || db.prefix != "app" || db.skew != time.Second || db.retention >= 0 {
		t.Errorf("options not applied: %+v", db)
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
	b := open(t, server(t))
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
// recorded expiry, and HeldError.Remaining says so where DynamoDB returns
// the old item (dynalite does not: 0).
func TestClockSkewMargin(t *testing.T) {
	url := server(t)
	a, b := open(t, url+"&clock_skew=400ms"), open(t, url+"&clock_skew=400ms")
	ctx := context.Background()
	l, err := a.TryClaim(ctx, "skew", 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(l.Deadline) + 50*time.Millisecond)
	// Past the holder's deadline but within the margin: still held.
	_, err = b.TryClaim(ctx, "skew", time.Second)
	var he *claim.HeldError
	if !errors.As(err, &he) {
		t.Fatalf("TryClaim within the skew margin: %v, want HeldError", err)
	}
	if he.Remaining > 400*time.Millisecond {
		t.Errorf("Remaining = %s, more than the margin left", he.Remaining)
	}
	time.Sleep(500 * time.Millisecond)
	l2, err := b.TryClaim(ctx, "skew", time.Second)
	if err != nil {
		t.Fatalf("TryClaim after the margin: %v", err)
	}
	if l2.Token <= l.Token {
		t.Errorf("token %d after %d", l2.Token, l.Token)
	}
	_ = b.Release(ctx, l2)
}

// TestFenceSurvivesItemLoss: tokens keep increasing after the item was
// deleted (reaped by TTL, or the table recreated).
func TestFenceSurvivesItemLoss(t *testing.T) {
	b := open(t, server(t))
	ctx := context.Background()
	l1, err := b.TryClaim(ctx, "reaped", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	d := drv(b)
	if _, err := d.c.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(d.table), Key: d.itemKey("reaped")}); err != nil {
		t.Fatal(err)
	}
	l2, err := b.TryClaim(ctx, "reaped", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after the item was lost: %d <= %d", l2.Token, l1.Token)
	}
	_ = b.Release(ctx, l2)
}

// TestReapAttribute: exp never falls below a live lease or a live value,
// and an item holding a value without TTL is never reaped.
func TestReapAttribute(t *testing.T) {
	b := open(t, server(t)+"&retention=1h")
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

// TestServerRestart: while dynalite is down calls fail (and waiters are
// woken to see it); after it comes back with its data, the lease is still
// held and later tokens are larger.
func TestServerRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Dynamo, nil)
	url := srv.URL()
	open(t, url+"&create_table=true")
	ctx := context.Background()
	b, w := open(t, url), open(t, url)
	l1, err := b.TryClaim(ctx, "restart", 30*time.Second)
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
	if _, err := w.TryClaim(ctx, "restart", time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("after restart: %v, want ErrHeld (dynalite keeps its data)", err)
	}
	if err := b.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-time.After(15 * time.Second):
		t.Fatal("subscriber not woken by the release after the restart")
	}
	l2, err := w.TryClaim(ctx, "restart", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after restart %d <= %d", l2.Token, l1.Token)
	}
	_ = w.Release(ctx, l2)
}

func BenchmarkConformance(b *testing.B) { conformance.Bench(b, harness(server(b), nil)) }

// FuzzOpenURL: no URL makes the opener panic, and a password in a URL
// never reaches an error.
func FuzzOpenURL(f *testing.F) {
	for _, s := range []string{
		"dynamodb://tbl?region=us-east-1",
		"dynamodb://tbl?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A1&clock_skew=1s",
		"dynamodb://u:secretpw@tbl?region=x",
		"dynamodb://tbl?retention=off&retention=1h",
		"dynamodb://tbl?endpoint=%zz",
		"dynamodb://tbl?region=r&endpoint=http%3A%2F%2Fu%3Asecretpw%40h",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		// create_table=true makes Open call the endpoint: bound it, so a
		// mutated endpoint that does not answer cannot stall the fuzzer.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
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
// another claim between two reads (whatever the item held before, even
// nothing) do. And end to end: a subscriber is not woken by a claim, and
// is by its release.
func TestWakeRules(t *testing.T) {
	a, b := open(t, server(t)), open(t, server(t))
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
		l2, err := a.Extend(ctx, l, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if st := read(k); driver.Wakes(held, st) {
			t.Errorf("%s: Extend wakes (%+v -> %+v)", k, held, st)
		}
		if err := a.CommitRelease(ctx, l2, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
		if st := read(k); !driver.Wakes(held, st) || !driver.Wakes(free, st) {
			t.Errorf("%s: CommitRelease does not wake (%+v, %+v -> %+v)", k, free, held, st)
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

	// A reaped item (or a recreated table) does not bring the notify
	// counter back to a value a poller saw.
	k := "wake-rules-reaped"
	release(claimKey(k))
	before := read(k)
	if _, err := drv(b).c.DeleteItem(ctx, &dynamodb.DeleteItemInput{TableName: aws.String(drv(b).table), Key: drv(b).itemKey(k)}); err != nil {
		t.Fatal(err)
	}
	release(claimKey(k))
	if st := read(k); !driver.Wakes(before, st) {
		t.Errorf("a release after the item was reaped does not wake (%+v -> %+v)", before, st)
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
