package redis_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/internal/backendtest"
)

// TestSlotMigrationDialFailure: a subscribed key's slot moves to a
// master this process has no pub/sub connection to yet, and the first
// dial to that master fails (a transient refusal). The notifier re-placed
// the channel on a new shard for that master and dropped the failed
// subscribe, on the assumption that the shard's receiver would rebuild it;
// but that receiver had never started (no SUBSCRIBE had succeeded on the
// shard), so the channel stayed registered and subscribed nowhere: every
// later release or notify of the key was lost for this process (found by
// review). Now the subscribe is tried again until it lands, and its
// confirmation wakes the key's waiters to re-check.
func TestSlotMigrationDialFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	addrs := startCluster(t)
	ctx := context.Background()
	key := "migrate-dial"
	names := redis.NamesForTest("stampede", key)
	m := newSlotMove(t, ctx, addrs, names[0])
	dst := m.dst

	var block atomic.Bool
	var refused atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		if block.Load() && addr == addrs[dst] {
			refused.Add(1)
			return nil, &net.OpError{Op: "dial", Net: network, Err: errRefused{}}
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	cca := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs, MaxRetries: -1, Dialer: dial})
	a, err := redis.New(cca, &redis.Options{CloseClient: true, HealthCheckInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	ccb := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: addrs, MaxRetries: -1})
	b, err := redis.New(ccb, &redis.Options{CloseClient: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })

	sub := backendtest.Subscribe(t, a, key)
	if n := redis.PubSubConns(a); n != 1 {
		t.Fatalf("PubSubConns = %d, want 1 (the key's master only)", n)
	}

	// The new master refuses this process's dials for a while.
	block.Store(true)
	m.run(false)
	eventually(t, "the notifier never tried to dial the new master", func() bool { return refused.Load() > 0 })
	time.Sleep(3 * time.Second) // every retry the notifier makes happens here
	block.Store(false)
	t.Logf("dials refused while blocked: %d", refused.Load())
	for len(sub.C()) > 0 {
		<-sub.C()
	}

	// The outage is over: the new master accepts dials again. A notify of
	// the key must reach the subscriber (or the driver must at least wake
	// it once the subscription is live again).
	deadline := time.Now().Add(15 * time.Second)
	woken := false
	for !woken && time.Now().Before(deadline) {
		if err := b.Notify(ctx, key); err != nil {
			t.Fatal(err)
		}
		woken = backendtest.Woken(sub, time.Second)
	}
	if !woken {
		n, _ := m.nodes[dst].Do(ctx, "PUBSUB", "SHARDNUMSUB", names[3]).Slice()
		t.Fatalf("lost wake-ups: no notify of %q reached the subscriber within 15s after the new master accepted dials again "+
			"(PUBSUB SHARDNUMSUB on the new master: %v; the channel is subscribed nowhere)", key, n)
	}
}

type errRefused struct{}

func (errRefused) Error() string   { return "connection refused (test)" }
func (errRefused) Timeout() bool   { return false }
func (errRefused) Temporary() bool { return false }
