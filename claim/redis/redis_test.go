package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
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

// withParams appends query parameters to a server URL.
func withParams(raw, params string) string {
	if strings.Contains(raw, "?") {
		return raw + "&" + params
	}
	return raw + "?" + params
}

// The conformance suite allocates MaxValueLen bytes: keep it small.
const testMaxValue = 1 << 20

func TestConformance(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	u := withParams(srv.URL(), fmt.Sprintf("maxvalue=%d", testMaxValue))
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (claim.Backend, error) { return claim.Open(ctx, u) },
	})
}

func BenchmarkConformance(b *testing.B) {
	srv := testserver.Shared(b, testserver.Redis)
	u := withParams(srv.URL(), fmt.Sprintf("maxvalue=%d", testMaxValue))
	conformance.Bench(b, conformance.Harness{
		Open: func(ctx context.Context) (claim.Backend, error) { return claim.Open(ctx, u) },
	})
}

func open(t *testing.T, rawURL string) *redis.Backend {
	t.Helper()
	b, err := claim.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b.(*redis.Backend)
}

func waitWake(t *testing.T, sub claim.Subscription, what string) {
	t.Helper()
	select {
	case _, ok := <-sub.C():
		if !ok {
			t.Fatalf("%s: subscription closed", what)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no wake-up within 20s (lost wake-up)", what)
	}
}

// TestReconnectWakesWaiter kills the waiter's pub/sub connection, keeps it
// from reconnecting (its ACL user is disabled) while the holder releases,
// then lets it back: the waiter must be woken although the release was
// published to nobody.
func TestReconnectWakesWaiter(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	ctx := context.Background()
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "waiter", "on", ">w-secret", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	waiterURL := "redis://waiter:w-secret@" + srv.Addr() + "/0?health_check=100ms"
	waiter := open(t, waiterURL)
	holder := open(t, srv.URL())

	key := "reconnect/k"
	l, err := holder.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := waiter.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim while held: %v, want ErrHeld", err)
	}

	// Outage: no reconnect possible until the user is enabled again.
	if err := admin.Do(ctx, "ACL", "SETUSER", "waiter", "off").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := admin.ClientKillByFilter(ctx, "TYPE", "pubsub").Result(); err != nil || n != 1 {
		t.Fatalf("CLIENT KILL TYPE pubsub: %d killed, %v", n, err)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	// Let the waiter fail to reconnect a few times, then let it in.
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := admin.Info(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(info, "rejected_connections") && authFailures(admin) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the waiter never tried to reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-sub.C():
		t.Fatal("woken while the pub/sub connection was down (the re-check could miss a later release)")
	default:
	}
	if err := admin.Do(ctx, "ACL", "SETUSER", "waiter", "on").Err(); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "release during the outage")
	l2, err := waiter.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("re-check after the wake-up: %v", err)
	}
	// The subscription is live again: a later release is delivered.
	if err := waiter.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "release after the reconnect")
	if n := waiter.PubSubConns(); n != 1 {
		t.Errorf("waiter has %d pub/sub connections, want 1", n)
	}
}

// authFailures counts failed AUTH attempts in the ACL log.
func authFailures(admin *goredis.Client) int {
	entries, err := admin.Do(context.Background(), "ACL", "LOG").Slice()
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		if strings.Contains(fmt.Sprint(e), "auth") {
			n++
		}
	}
	return n
}

// TestOneSubscriptionPerKey: many waiters of one key in one Backend share
// one server-side subscription on one connection, and one release wakes
// them all; the last one out unsubscribes.
func TestOneSubscriptionPerKey(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	waiter := open(t, withParams(srv.URL(), "prefix=onesub"))
	holder := open(t, withParams(srv.URL(), "prefix=onesub"))
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()

	key := "one-sub"
	l, err := holder.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	subs := make([]claim.Subscription, n)
	var wg sync.WaitGroup
	for i := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := waiter.Subscribe(ctx, key)
			if err != nil {
				t.Error(err)
				return
			}
			subs[i] = s
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	if got := waiter.Subscriptions(); got != 1 {
		t.Errorf("Subscriptions() = %d, want 1", got)
	}
	if got := waiter.PubSubConns(); got != 1 {
		t.Errorf("PubSubConns() = %d, want 1", got)
	}
	counts, err := admin.PubSubNumSub(ctx, "onesub:{="+key+"}:ch").Result()
	if err != nil || counts["onesub:{="+key+"}:ch"] != 1 {
		t.Errorf("PUBSUB NUMSUB = %v, %v; want 1 subscriber", counts, err)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		waitWake(t, s, "fan-out")
		s.Close()
	}
	if got := waiter.Subscriptions(); got != 0 {
		t.Errorf("Subscriptions() after every Close = %d, want 0", got)
	}
}

// TestSubscribeConfirmed: once Subscribe returns, a Notify from another
// client is delivered (Subscribe waits for the server's confirmation).
func TestSubscribeConfirmed(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	a := open(t, srv.URL())
	b := open(t, srv.URL())
	for i := range 200 {
		key := fmt.Sprintf("confirmed/%d", i)
		sub, err := a.Subscribe(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Notify(ctx, key); err != nil {
			t.Fatal(err)
		}
		waitWake(t, sub, key)
		sub.Close()
	}
}

func TestBroadcast(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	a := open(t, srv.URL())
	b := open(t, srv.URL())
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
	for _, m := range []string{"one", "two", "three"} {
		if err := b.Publish(ctx, "inval", []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"one", "two", "three"} {
		select {
		case m := <-got:
			if m != want {
				t.Fatalf("got %q, want %q", m, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("message %q not delivered", want)
		}
	}
}

func TestURLErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		url, want string
	}{
		{"redis://u:s3cret@localhost:6379/0?bogus=1", "unknown URL parameter(s): bogus"},
		{"redis://u:s3cret@localhost:6379/abc", `URL path "/abc"`},
		{"redis://u:s3cret@localhost:6379/0?pool_size=x", "pool_size"},
		{"redis://u:s3cret@localhost:6379/0?protocol=4", "protocol=4"},
		{"redis://u:s3cret@localhost:6379/0?skip_verify=true", "rediss:// only"},
		{"redis://u:s3cret@localhost:6379/0?prefix=a{b", "prefix"},
		{"redis://u:s3cret@localhost:6379/0?addrs=h:1", "cluster=true"},
		{"redis://u:s3cret@localhost:6379/2?cluster=true", "database 0"},
		{"redis://u:s3cret@localhost:6379/0?cluster=true&addrs=nope", "HOST:PORT"},
		{"redis://u:s3cret@localhost:6379/0?health_check=-1s", "health_check"},
		{"redis://u:s3cret@localhost:6379/0?prefix=a&prefix=b", "given 2 times"},
	} {
		b, err := claim.Open(ctx, tc.url)
		if err == nil {
			b.Close()
			t.Errorf("%s: no error", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not mention %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: error leaks the password: %v", tc.url, err)
		}
	}
}

func TestURLOptions(t *testing.T) {
	for _, tc := range []struct {
		url  string
		want goredis.Options
		tls  bool
	}{
		{"redis://localhost", goredis.Options{Addr: "localhost:6379"}, false},
		{"redis://:pw@10.0.0.1:7000/3", goredis.Options{Addr: "10.0.0.1:7000", Password: "pw", DB: 3}, false},
		{"rediss://alice:pw@[::1]:6380/1?client_name=app&pool_size=7&min_idle_conns=2&dial_timeout=2s&read_timeout=1s&write_timeout=1500ms&protocol=2&max_retries=2",
			goredis.Options{Addr: "[::1]:6380", Username: "alice", Password: "pw", DB: 1, ClientName: "app", PoolSize: 7,
				MinIdleConns: 2, DialTimeout: 2 * time.Second, ReadTimeout: time.Second, WriteTimeout: 1500 * time.Millisecond,
				Protocol: 2, MaxRetries: 2}, true},
	} {
		u, _ := url.Parse(tc.url)
		got, err := redis.ParseURLForTest(u)
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if got.Addr != tc.want.Addr || got.Username != tc.want.Username || got.Password != tc.want.Password ||
			got.DB != tc.want.DB || got.ClientName != tc.want.ClientName || got.PoolSize != tc.want.PoolSize ||
			got.MinIdleConns != tc.want.MinIdleConns || got.DialTimeout != tc.want.DialTimeout ||
			got.ReadTimeout != tc.want.ReadTimeout || got.WriteTimeout != tc.want.WriteTimeout {
			t.Errorf("%s: got %+v", tc.url, got)
		}
		if tc.want.Protocol != 0 && got.Protocol != tc.want.Protocol {
			t.Errorf("%s: protocol %d, want %d", tc.url, got.Protocol, tc.want.Protocol)
		}
		if tc.want.MaxRetries != 0 && got.MaxRetries != tc.want.MaxRetries {
			t.Errorf("%s: max_retries %d, want %d", tc.url, got.MaxRetries, tc.want.MaxRetries)
		}
		if tc.want.MaxRetries == 0 && got.MaxRetries != -1 {
			t.Errorf("%s: default MaxRetries %d, want -1 (one attempt per call)", tc.url, got.MaxRetries)
		}
		if (got.TLSConfig != nil) != tc.tls {
			t.Errorf("%s: TLS %v, want %v", tc.url, got.TLSConfig != nil, tc.tls)
		}
		if tc.tls && got.TLSConfig.ServerName != "::1" {
			t.Errorf("%s: TLS server name %q", tc.url, got.TLSConfig.ServerName)
		}
	}
}

func TestOpenRegistersBothSchemes(t *testing.T) {
	for _, s := range []string{"redis", "rediss"} {
		b, err := claim.Open(context.Background(), s+"://127.0.0.1:1/0?prefix=x&maxvalue=10")
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		f := b.Features()
		if f.Name != "redis" || f.MaxValueLen != 10 || f.Notify != claim.Push || !f.AtomicCommit || f.DurableFence {
			t.Errorf("%s: features %+v", s, f)
		}
		b.Close()
	}
}

func TestNewRefusesBadInput(t *testing.T) {
	if _, err := redis.New(nil, nil); err == nil {
		t.Error("New(nil): no error")
	}
	ring := goredis.NewRing(&goredis.RingOptions{Addrs: map[string]string{"a": "127.0.0.1:1"}})
	defer ring.Close()
	if _, err := redis.New(ring, nil); err == nil {
		t.Error("New(*Ring): no error")
	}
	c := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := redis.New(c, &redis.Options{Prefix: "a}b"}); err == nil {
		t.Error("New with a prefix containing '}': no error")
	}
}

// crc16 is Redis Cluster's key hash (CRC16-CCITT/XMODEM).
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// slot is Redis Cluster's key-to-slot mapping, hash tags included.
func slot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key) % 16384)
}

// TestHashSlot: every name derived from one key hashes to one cluster
// slot, checked with CLUSTER KEYSLOT on a cluster-enabled server.
func TestHashSlot(t *testing.T) {
	if crc16("123456789") != 0x31C3 {
		t.Fatal("crc16 test vector")
	}
	srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Args: []string{"--cluster-enabled", "yes"}})
	ctx := context.Background()
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	for _, prefix := range []string{"stampede", "app:v2", "a"} {
		for _, key := range []string{"k", "user:42", "a}b{c", "{x}", "}", strings.Repeat("long", 100), "\x00\xff", "ünï"} {
			names := redis.NamesForTest(prefix, key)
			want := -1
			for _, n := range names {
				got, err := admin.ClusterKeySlot(ctx, n).Result()
				if err != nil {
					t.Fatal(err)
				}
				if int(got) != slot(n) {
					t.Errorf("CLUSTER KEYSLOT %q = %d, local %d", n, got, slot(n))
				}
				if want == -1 {
					want = int(got)
				} else if int(got) != want {
					t.Errorf("prefix %q key %q: %q in slot %d, others in %d", prefix, key, n, got, want)
				}
			}
		}
	}
}
