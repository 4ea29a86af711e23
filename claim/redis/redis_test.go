package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// The conformance suite allocates MaxValueLen bytes: keep it small.
const testMaxValue = 1 << 20

// harness runs on the shared server. The isolated namespace's prefix
// extends the default one ("stampede:isolated"), so the Isolation check
// also proves that the hash tag after the prefix keeps such prefixes
// apart. Features.DurableFence is false, so Restart is never called
// (TestFenceAcrossRestart shows what a restart keeps).
func harness(tb testing.TB) conformance.Harness {
	srv := testserver.Shared(tb, testserver.Redis)
	return backendtest.Harness(srv, func(ns string) string {
		u := backendtest.WithQuery(tb, srv.URL(), "maxvalue", fmt.Sprint(testMaxValue))
		if ns == "" {
			return u
		}
		return backendtest.WithQuery(tb, u, "prefix", redis.DefaultPrefix+":"+ns)
	})
}

func TestConformance(t *testing.T) { conformance.Run(t, harness(t)) }

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) { backendtest.FlightOn(t, harness(t)) }

func BenchmarkConformance(b *testing.B) { conformance.Bench(b, harness(b)) }

// native returns the go-redis client under c.
func native(c *claim.Client) goredis.UniversalClient {
	var rdb goredis.UniversalClient
	if !c.As(&rdb) {
		panic("As(*goredis.UniversalClient) failed")
	}
	return rdb
}

func waitWake(t *testing.T, sub *claim.Subscription, what string) {
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
// then lets it back. The waiter is woken as soon as the connection is lost
// (to re-check rather than wait for a push that cannot come), once however
// many reconnects fail, and again once the subscription is live again
// (anything published meanwhile, the release here, went to nobody).
func TestReconnectWakesWaiter(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	ctx := context.Background()
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	if err := admin.Do(ctx, "ACL", "SETUSER", "waiter", "on", ">w-secret", "~*", "&*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	waiterURL := "redis://waiter:w-secret@" + srv.Addr() + "/0?health_check=100ms"
	waiter := backendtest.Open(t, waiterURL)
	holder := backendtest.Open(t, srv.URL())

	key := "reconnect/k"
	l, sub := backendtest.Claim(t, holder, key, time.Minute), backendtest.Subscribe(t, waiter, key)
	resets := make(chan struct{}, 1)
	stop, err := waiter.SubscribeTopic(ctx, "reconnect/topic", func(msg []byte, reset bool) {
		if reset {
			select {
			case resets <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
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
	if !backendtest.Woken(sub, lostBound) {
		t.Fatalf("not woken within %s of losing the pub/sub connection", lostBound)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	// Let the waiter fail to reconnect a few times, then let it in.
	eventually(t, "the waiter never tried to reconnect", func() bool {
		info, err := admin.Info(ctx, "stats").Result()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(info, "rejected_connections") && authFailures(admin) >= 2
	})
	notWoken(t, sub, "woken again while the pub/sub connection was still down (want one wake-up per outage, not one per failed reconnect)")
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
	select {
	case <-resets:
	case <-time.After(20 * time.Second):
		t.Error("the topic subscriber got no reset after the reconnect")
	}
	if n := redis.PubSubConns(waiter); n != 1 {
		t.Errorf("waiter has %d pub/sub connections, want 1", n)
	}
}

// eventually polls cond every 10 ms until it holds; after 20 s the test
// fails with what.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// notWoken fails the test with what if sub has a wake-up pending.
func notWoken(t *testing.T, sub *claim.Subscription, what string) {
	t.Helper()
	select {
	case <-sub.C():
		t.Fatal(what)
	default:
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

// TestOneSubscriptionPerKey: many waiters of one key in one Client share
// one server-side subscription on one connection, and one release wakes
// them all; the last one out unsubscribes on the server.
func TestOneSubscriptionPerKey(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	waiter := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "onesub"))
	holder := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "onesub"))
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()

	key := "one-sub"
	l, err := holder.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	subs := make([]*claim.Subscription, n)
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
	if got := redis.PubSubConns(waiter); got != 1 {
		t.Errorf("PubSubConns = %d, want 1", got)
	}
	ch := "onesub:{=" + key + "}:ch"
	counts, err := admin.PubSubNumSub(ctx, ch).Result()
	if err != nil || counts[ch] != 1 {
		t.Errorf("PUBSUB NUMSUB = %v, %v; want 1 subscriber", counts, err)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, s := range subs {
		waitWake(t, s, "fan-out")
		s.Close()
	}
	// UNSUBSCRIBE is written before the last Close returns; the server
	// reads it soon after.
	eventually(t, "PUBSUB NUMSUB after every Close is not 0", func() bool {
		counts, err := admin.PubSubNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatal(err)
		}
		return counts[ch] == 0
	})
}

// TestSubscribeConfirmed: once Subscribe returns, a Notify from another
// client is delivered (Subscribe waits for the server's confirmation).
func TestSubscribeConfirmed(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	a := backendtest.Open(t, srv.URL())
	b := backendtest.Open(t, srv.URL())
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

func TestURLErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		url, want string
	}{
		{"redis://u:s3cret@localhost:6379/0?bogus=1", "unknown URL parameter(s): bogus"},
		{"redis://u:s3cret@localhost:6379/abc", `URL path "/abc"`},
		{"redis://u:s3cret@localhost:6379/0?pool_size=x", "pool_size"},
		{"redis://u:s3cret@localhost:6379/0?protocol=4", "protocol=4"},
		{"redis://u:s3cret@localhost:6379/0?skip_verify=true", "servername and skip_verify need"},
		{"rediss://u:s3cret@localhost:6379/0?cert=c.pem", "together"},
		{"redis://u:s3cret@localhost:6379/0?prefix=a;pool_size=2", "';' separator"},
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
		{"redis://localhost", goredis.Options{Addr: "localhost:6379", DialTimeout: redis.DefaultDialTimeout}, false},
		{"redis://:pw@10.0.0.1:7000/3", goredis.Options{Addr: "10.0.0.1:7000", Password: "pw", DB: 3, DialTimeout: redis.DefaultDialTimeout}, false},
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
		if got.DialerRetries != 1 || !got.ContextTimeoutEnabled || got.Dialer == nil {
			t.Errorf("%s: DialerRetries %d, ContextTimeoutEnabled %v, Dialer set %v; want 1 dial per attempt, calls ended at their context's deadline, the TLS handshake too",
				tc.url, got.DialerRetries, got.ContextTimeoutEnabled, got.Dialer != nil)
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
		c, err := claim.Open(context.Background(), s+"://127.0.0.1:1/0?prefix=x&maxvalue=10&lazy=true")
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		f := c.Features()
		if f.Name != "redis" || f.MaxValueLen != 10 || f.Notify != claim.Push || !f.AtomicCommit || f.DurableFence || !f.Broadcast {
			t.Errorf("%s: features %+v", s, f)
		}
		var cc *goredis.ClusterClient
		if rdb := native(c); rdb == nil || c.As(&cc) {
			t.Errorf("%s: As: a UniversalClient, and no *ClusterClient", s)
		}
		c.Close()
	}
	// The default limit is Redis's proto-max-bulk-len. (As on a client of
	// New: the package's examples.)
	if got := backendtest.Open(t, "redis://127.0.0.1:1/0?lazy=true").Features().MaxValueLen; got != 512<<20 {
		t.Errorf("default MaxValueLen %d, want 512 MiB", got)
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

// silentDialer is a go-redis Dialer whose connections can go silent:
// while silent, what is written is swallowed and what arrives is dropped
// (a dead network path without an RST), on every connection it made or
// makes. securitytest.Proxy cannot do this: its Cut closes connections.
type silentDialer struct {
	addr   string
	silent atomic.Bool
	tries  atomic.Int32 // dials while silent
}

func (d *silentDialer) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	if d.silent.Load() {
		d.tries.Add(1)
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, d.addr)
	if err != nil {
		return nil, err
	}
	return silentConn{c, &d.silent}, nil
}

type silentConn struct {
	net.Conn
	silent *atomic.Bool
}

func (c silentConn) Read(b []byte) (int, error) {
	for {
		n, err := c.Conn.Read(b)
		if err != nil || !c.silent.Load() {
			return n, err
		}
	}
}

func (c silentConn) Write(b []byte) (int, error) {
	if c.silent.Load() {
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// TestSilentConnectionWakesWaiter: the pub/sub connection goes silent
// (no error, no RST); the health check notices and wakes the waiter (two
// health-check intervals), the driver reconnects once the path heals, and
// wakes the waiter again for the release it missed.
func TestSilentConnectionWakesWaiter(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	d := &silentDialer{addr: srv.Addr()}
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Dialer: d.dial, MaxRetries: -1, ContextTimeoutEnabled: true,
		DialTimeout: 300 * time.Millisecond, ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
	waiter, err := redis.New(rdb, &redis.Options{Prefix: "silent", HealthCheckInterval: 100 * time.Millisecond, CloseClient: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { waiter.Close() })
	holder := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "silent"))

	key := "silent/k"
	l, sub := backendtest.Claim(t, holder, key, time.Minute), backendtest.Subscribe(t, waiter, key)
	d.silent.Store(true)
	if !backendtest.Woken(sub, lostBound) {
		t.Fatalf("not woken within %s of the connection going silent", lostBound)
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the waiter never tried to reconnect", func() bool { return d.tries.Load() >= 2 })
	notWoken(t, sub, "woken again before the subscription was live again (want one wake-up per outage)")
	d.silent.Store(false)
	waitWake(t, sub, "release while the connection was silent")
	if err := holder.Notify(ctx, key); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "notify after the reconnect")
}

// startCluster starts a three-master Redis Cluster (no replicas) and
// returns its addresses.
func startCluster(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	var addrs []string
	var nodes []*goredis.Client
	for range 3 {
		s := testserver.RequireWith(t, testserver.Redis, &testserver.Options{
			Args: []string{"--cluster-enabled", "yes", "--cluster-node-timeout", "5000"}})
		if s.External() {
			t.Skip("STAMPEDE_TEST_REDIS_URL names one server; the cluster test starts its own")
		}
		c := goredis.NewClient(&goredis.Options{Addr: s.Addr(), MaxRetries: -1})
		t.Cleanup(func() { c.Close() })
		addrs = append(addrs, s.Addr())
		nodes = append(nodes, c)
	}
	for i, c := range nodes {
		lo, hi := i*16384/3, (i+1)*16384/3-1
		if err := c.ClusterAddSlotsRange(ctx, lo, hi).Err(); err != nil {
			t.Fatal(err)
		}
		if i > 0 {
			host, port, _ := net.SplitHostPort(addrs[0])
			if err := c.ClusterMeet(ctx, host, port).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, c := range nodes {
		for {
			info, err := c.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(info, "cluster_state:ok") && strings.Contains(info, "cluster_known_nodes:3") {
				slots, err := c.ClusterShards(ctx).Result()
				if err == nil && len(slots) == 3 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("cluster not ready: %s", info)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return addrs
}

// TestClusterConformance runs the suite on a real three-master cluster
// through New with the user's own *ClusterClient: scripts stay within one
// slot and wake-ups go through sharded pub/sub.
func TestClusterConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	addrs := startCluster(t)
	newClient := func(prefix string) (*claim.Client, error) {
		cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
		// Warm: load the slot map and dial every master, so the suite's
		// short leases do not start counting before a cold client's dials.
		err := cc.ForEachMaster(context.Background(), func(ctx context.Context, c *goredis.Client) error {
			return c.Ping(ctx).Err()
		})
		if err != nil {
			cc.Close()
			return nil, err
		}
		return redis.New(cc, &redis.Options{Prefix: prefix, MaxValueLen: testMaxValue, CloseClient: true})
	}
	t.Run("Suite", func(t *testing.T) {
		conformance.Run(t, conformance.Harness{
			Open:         func(ctx context.Context) (*claim.Client, error) { return newClient("") },
			OpenIsolated: func(ctx context.Context) (*claim.Client, error) { return newClient("isolated") },
		})
	})
	t.Run("Sharded", func(t *testing.T) {
		ctx := context.Background()
		a, err := newClient("")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := newClient("")
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		// Keys on every master: one pub/sub connection per master, and
		// every wake-up arrives through SSUBSCRIBE.
		var subs []*claim.Subscription
		for i := range 30 {
			s, err := a.Subscribe(ctx, fmt.Sprintf("sharded/%d", i))
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			subs = append(subs, s)
		}
		if n := redis.PubSubConns(a); n != 3 {
			t.Errorf("PubSubConns = %d, want 3 (one per master)", n)
		}
		for i, s := range subs {
			key := fmt.Sprintf("sharded/%d", i)
			l, err := b.TryClaim(ctx, key, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := b.Release(ctx, l); err != nil {
				t.Fatal(err)
			}
			waitWake(t, s, key)
		}
		numsub := 0
		for _, addr := range addrs {
			c := goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
			n, err := c.Do(ctx, "PUBSUB", "SHARDNUMSUB", "stampede:{=sharded/0}:ch").Slice()
			c.Close()
			if err != nil {
				t.Fatal(err)
			}
			numsub += int(n[1].(int64))
		}
		if numsub != 1 {
			t.Errorf("PUBSUB SHARDNUMSUB over all masters = %d, want 1", numsub)
		}
	})
}

// TestClusterSlotMigration moves a subscribed key's slot to another master:
// the old master drops the sharded subscription, the driver re-places it
// on the new master and wakes the waiter, and later releases reach it.
func TestClusterSlotMigration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	addrs := startCluster(t)
	ctx := context.Background()
	newClient := func() *claim.Client {
		cc := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
		c, err := redis.New(cc, &redis.Options{CloseClient: true, HealthCheckInterval: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := newClient(), newClient()
	key := "migrate/k"
	names := redis.NamesForTest("stampede", key)
	m := newSlotMove(t, ctx, addrs, names[0])

	l, sub := backendtest.Claim(t, b, key, time.Minute), backendtest.Subscribe(t, a, key)
	m.run(true)

	// The holder's release now runs on the new master.
	if err := b.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "release after the slot moved")
	// Eventually the subscription lives on the new master only, and a
	// notification there wakes the waiter.
	eventually(t, "the subscription never moved to the new master", func() bool {
		n, err := m.nodes[m.dst].Do(ctx, "PUBSUB", "SHARDNUMSUB", names[3]).Slice()
		if err != nil {
			t.Fatal(err)
		}
		return n[1].(int64) == 1
	})
	for len(sub.C()) > 0 {
		<-sub.C()
	}
	if err := b.Notify(ctx, key); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "notify on the new master")
}

// slotMove moves the slot of one name of a three-master cluster (started
// by startCluster, slots split evenly) to the next master.
type slotMove struct {
	t        *testing.T
	ctx      context.Context
	addrs    []string
	slot     int
	src, dst int
	nodes    []*goredis.Client
	ids      []string
}

func newSlotMove(t *testing.T, ctx context.Context, addrs []string, name string) *slotMove {
	m := &slotMove{t: t, ctx: ctx, addrs: addrs, slot: slot(name), src: -1, dst: -1,
		nodes: make([]*goredis.Client, len(addrs)), ids: make([]string, len(addrs))}
	for i := range addrs {
		lo, hi := i*16384/3, (i+1)*16384/3-1
		if m.slot >= lo && m.slot <= hi {
			m.src, m.dst = i, (i+1)%3
		}
	}
	for i, addr := range addrs {
		m.nodes[i] = goredis.NewClient(&goredis.Options{Addr: addr, MaxRetries: -1})
		t.Cleanup(func() { m.nodes[i].Close() })
		id, err := m.nodes[i].Do(ctx, "CLUSTER", "MYID").Text()
		if err != nil {
			t.Fatal(err)
		}
		m.ids[i] = id
	}
	return m
}

func (m *slotMove) must(c *goredis.Client, args ...any) {
	m.t.Helper()
	if err := c.Do(m.ctx, args...).Err(); err != nil {
		m.t.Fatalf("%v: %v", args, err)
	}
}

// run moves the slot to the destination master, its keys too if keys.
func (m *slotMove) run(keys bool) {
	m.t.Helper()
	m.must(m.nodes[m.dst], "CLUSTER", "SETSLOT", m.slot, "IMPORTING", m.ids[m.src])
	m.must(m.nodes[m.src], "CLUSTER", "SETSLOT", m.slot, "MIGRATING", m.ids[m.dst])
	if keys {
		ks, err := m.nodes[m.src].ClusterGetKeysInSlot(m.ctx, m.slot, 100).Result()
		if err != nil {
			m.t.Fatal(err)
		}
		host, port, _ := net.SplitHostPort(m.addrs[m.dst])
		args := []any{"MIGRATE", host, port, "", 0, 5000, "KEYS"}
		for _, k := range ks {
			args = append(args, k)
		}
		m.must(m.nodes[m.src], args...)
	}
	for _, i := range []int{m.dst, m.src, 3 - m.src - m.dst} {
		m.must(m.nodes[i], "CLUSTER", "SETSLOT", m.slot, "NODE", m.ids[m.dst])
	}
}

// FuzzParseURL: any path and query either parse or fail with an error
// that does not contain the URL's password.
func FuzzParseURL(f *testing.F) {
	f.Add("/0", "prefix=app&pool_size=3")
	f.Add("/x", "bogus=1")
	f.Add("", "cluster=true&addrs=a:1,b:2")
	f.Add("/1", "protocol=2&dial_timeout=1s&skip_verify=true")
	f.Fuzz(func(t *testing.T, path, query string) {
		const pw = "s3cretpw"
		for _, scheme := range []string{"redis", "rediss"} {
			u := &url.URL{Scheme: scheme, User: url.UserPassword("u", pw), Host: "h:1", Path: path, RawQuery: query}
			o, err := redis.ParseURLForTest(u)
			if err != nil {
				securitytest.HidesPassword(t, u, err, func(u *url.URL) error { _, err := redis.ParseURLForTest(u); return err })
				continue
			}
			if o.Password != pw || o.Addr != "h:1" {
				t.Fatalf("parsed %+v", o)
			}
		}
	})
}

// TestFenceAcrossRestart: with appendonly yes + appendfsync always the
// fence counter survives kill -9 and restart (the next token is larger);
// without persistence it starts over, which is why DurableFence is false.
func TestFenceAcrossRestart(t *testing.T) {
	for _, aof := range []bool{true, false} {
		t.Run(fmt.Sprintf("appendonly=%v", aof), func(t *testing.T) {
			srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{AppendOnly: aof})
			if srv.External() {
				t.Skip("needs a server of its own to kill")
			}
			ctx := context.Background()
			b := backendtest.Open(t, srv.URL())
			var last uint64
			for range 3 {
				l, err := b.TryClaim(ctx, "fence", time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if err := b.Release(ctx, l); err != nil {
					t.Fatal(err)
				}
				last = l.Token
			}
			if err := srv.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := srv.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			b2 := backendtest.Open(t, srv.URL())
			l, err := b2.TryClaim(ctx, "fence", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if aof && l.Token <= last {
				t.Errorf("with AOF: token after restart %d, want > %d", l.Token, last)
			}
			if !aof && l.Token != 1 {
				t.Errorf("without persistence: token after restart %d; expected the counter to start over at 1", l.Token)
			}
		})
	}
}

// TestLargeTokens: tokens past 32 bits go through Lua and back intact.
func TestLargeTokens(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := context.Background()
	b := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "bigtok"))
	const start = 1<<40 + 5_000_000_000
	if err := native(b).Set(ctx, redis.NamesForTest("bigtok", "k")[1], start, 0).Err(); err != nil {
		t.Fatal(err)
	}
	l, err := b.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if l.Token != start+1 {
		t.Fatalf("token %d, want %d", l.Token, uint64(start+1))
	}
	if err := b.Commit(ctx, l, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Extend(ctx, l, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
}
