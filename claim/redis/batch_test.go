package redis_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// turnConn counts the round trips on a connection: every read that
// follows a write is the client waiting for the answer to what it wrote,
// however many writes and reads the bytes take.
type turnConn struct {
	net.Conn
	turns *atomic.Int64
	mu    sync.Mutex
	wrote bool
}

func (c *turnConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.wrote = true
	c.mu.Unlock()
	return c.Conn.Write(p)
}

func (c *turnConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	if c.wrote {
		c.wrote = false
		c.turns.Add(1)
	}
	c.mu.Unlock()
	return c.Conn.Read(p)
}

// NetConn lets go-redis's pool check the socket underneath (it peeks at
// it directly, without reading through turnConn).
func (c *turnConn) NetConn() net.Conn { return c.Conn }

// commandCalls returns how many times the server has run each command
// (INFO commandstats; commands run by scripts included).
func commandCalls(t *testing.T, admin *goredis.Client) map[string]int64 {
	t.Helper()
	info, err := admin.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]int64{}
	for line := range strings.SplitSeq(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			t.Fatalf("INFO commandstats: %q", line)
		}
		calls[strings.TrimPrefix(name, "cmdstat_")] = v
	}
	return calls
}

// TestBatchRoundTrips: each batch costs one round trip whatever its size,
// and the server runs every key's command. Round trips are counted on the
// client's connections (turnConn), commands by the server's own counters
// (INFO commandstats) on a server of the test's own, which nothing else
// uses. GetMany, TryClaimMany and CommitReleaseMany: 1 round trip, and a
// GET or a script per key; after SCRIPT FLUSH, 2 (the EVALSHAs answered
// NOSCRIPT, then the same scripts as EVAL). SubscribeMany: one SUBSCRIBE
// naming every channel and one barrier PING (the only reply it waits
// for), and every channel subscribed.
func TestBatchRoundTrips(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Redis, nil)
	ctx := backendtest.Context(t)
	var turns atomic.Int64
	rdb := goredis.NewClient(&goredis.Options{
		Addr: srv.Addr(), MaxRetries: -1, ContextTimeoutEnabled: true,
		Dialer: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return &turnConn{Conn: c, turns: &turns}, nil
		},
	})
	// No health-check PING on the pub/sub connection during the test.
	c, err := redis.New(rdb, &redis.Options{CloseClient: true, HealthCheckInterval: time.Hour})
	if err != nil {
		rdb.Close()
		t.Fatal(err)
	}
	defer c.Close()
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()

	// measure runs f and checks what it cost: round trips (unless trips
	// is negative), and the server's count of each command in want.
	measure := func(what string, trips int64, want map[string]int64, f func() error) {
		t.Helper()
		t0, c0 := turns.Load(), commandCalls(t, admin)
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got := turns.Load() - t0; trips >= 0 && got != trips {
			t.Errorf("%s: %d round trips, want %d", what, got, trips)
		}
		c1 := commandCalls(t, admin)
		for cmd, n := range want {
			if got := c1[cmd] - c0[cmd]; got != n {
				t.Errorf("%s: the server ran %s %d times, want %d", what, cmd, got, n)
			}
		}
	}
	keysOf := func(tag string, n int) []string {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("rt/%s/%d", tag, i)
		}
		return keys
	}
	// Connect go-redis's pipeline pool first: its connection's set-up
	// (HELLO, CLIENT SETINFO) is not the batch's.
	if _, err := rdb.Pipelined(ctx, func(p goredis.Pipeliner) error { return p.Ping(ctx).Err() }); err != nil {
		t.Fatal(err)
	}

	batch := func(tag string, n int, flushed bool) {
		keys := keysOf(tag, n)
		trips, script := int64(1), map[string]int64{"evalsha": int64(n)}
		if flushed {
			trips, script = 2, map[string]int64{"evalsha": int64(n), "eval": int64(n)}
		}
		var claimed []claim.Claimed
		measure(fmt.Sprintf("TryClaimMany(%d keys)", n), trips, script, func() (err error) {
			claimed, err = c.TryClaimMany(ctx, keys, time.Minute)
			return err
		})
		commits := make([]claim.Commit, n)
		for i, r := range claimed {
			if r.Err != nil || r.Found {
				t.Fatalf("TryClaimMany(%d keys): %s: %+v, want a lease and no value", n, keys[i], r)
			}
			commits[i] = claim.Commit{Lease: r.Lease, Value: []byte(keys[i]), TTL: time.Minute}
		}
		measure(fmt.Sprintf("CommitReleaseMany(%d keys)", n), trips, script, func() error {
			errs, err := c.CommitReleaseMany(ctx, commits)
			for i, e := range errs {
				if e != nil {
					t.Errorf("CommitReleaseMany(%d keys): %s: %v", n, keys[i], e)
				}
			}
			return err
		})
		measure(fmt.Sprintf("GetMany(%d keys)", n), 1, map[string]int64{"get": int64(n)}, func() error {
			vals, err := c.GetMany(ctx, keys)
			for i, v := range vals {
				if string(v) != keys[i] {
					t.Errorf("GetMany(%d keys): %s = %q, want %q", n, keys[i], v, keys[i])
				}
			}
			return err
		})
	}
	// The server has not run the commit-and-release script yet, and
	// after SCRIPT FLUSH it has no claim script either.
	if err := admin.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	batch("flushed", 20, true)
	for _, n := range []int{1, 10, 300} {
		batch(fmt.Sprint(n), n, false)
	}

	// SubscribeMany last: from its first call on, the pub/sub
	// connection's receiver reads too, whenever the server writes.
	for _, n := range []int{1, 10, 300} {
		keys := keysOf("sub"+fmt.Sprint(n), n)
		var subs []*claim.Subscription
		measure(fmt.Sprintf("SubscribeMany(%d keys)", n), -1, map[string]int64{"subscribe": 1, "ping": 1}, func() (err error) {
			subs, err = c.SubscribeMany(ctx, keys)
			return err
		})
		channels, err := admin.PubSubChannels(ctx, fmt.Sprintf("stampede:{=rt/sub%d/*", n)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(channels) != n {
			t.Errorf("SubscribeMany(%d keys): %d channels subscribed on the server", n, len(channels))
		}
		for _, s := range subs {
			s.Close()
		}
	}
}
