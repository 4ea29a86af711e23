//go:build unix

package testserver

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestRedisSentinel: the Sentinels name node 0 as primary; killing it
// makes them promote the replica; the killed node restarts as a replica
// of the new primary; pausing the new primary makes them promote the old
// one back, and the paused node, resumed, is turned into a replica.
func TestRedisSentinel(t *testing.T) {
	c := RequireRedisSentinel(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if c.Members() != 2 || len(c.SentinelAddrs()) != 3 {
		t.Fatalf("%d members, %d sentinels", c.Members(), len(c.SentinelAddrs()))
	}
	u, err := url.Parse(c.URL(1))
	if err != nil {
		t.Fatal(err)
	}
	if u.Host != c.SentinelAddrs()[1] || u.Query().Get("master") != RedisSentinelMaster ||
		u.Query().Get("addrs") != c.SentinelAddrs()[2]+","+c.SentinelAddrs()[0] {
		t.Fatalf("URL(1) = %s", c.URL(1))
	}
	p, err := c.WaitPrimary(ctx)
	if err != nil || p != 0 {
		t.Fatalf("primary %d, %v; want 0", p, err)
	}
	if _, err := redisSentinelDo(ctx, c.Member(0).Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := redisSentinelDo(ctx, c.Member(0).Addr(), "WAIT", "1", "5000"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Kill(0); err != nil {
		t.Fatal(err)
	}
	if p, err = c.WaitPrimary(ctx); err != nil || p != 1 {
		t.Fatalf("primary %d, %v after the kill; want 1", p, err)
	}
	t.Logf("failover after SIGKILL: %v", time.Since(start).Round(time.Millisecond))
	if v, err := redisSentinelDo(ctx, c.Member(1).Addr(), "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET k on the new primary: %v, %v", v, err)
	}
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if v, err := redisSentinelDo(ctx, c.Member(0).Addr(), "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET k on the restarted replica: %v, %v", v, err)
	}
	if err := c.Pause(1); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if p, err = c.WaitPrimary(ctx); err != nil || p != 0 {
		c.Resume(1)
		t.Fatalf("primary %d, %v with node 1 paused; want 0", p, err)
	}
	t.Logf("failover after SIGSTOP: %v", time.Since(start).Round(time.Millisecond))
	if err := c.Resume(1); err != nil {
		t.Fatal(err)
	}
	// Sentinel turns the resumed old primary into a replica.
	if err := c.WaitReplica(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if p, err = c.Primary(ctx); err != nil || p != 0 {
		t.Fatalf("primary %d, %v at the end; want 0", p, err)
	}
	if !strings.HasPrefix(c.URL(0), "redis://"+c.SentinelAddrs()[0]) {
		t.Fatalf("URL(0) = %s", c.URL(0))
	}
}

// TestRedisSentinelNet: on a Net, a partitioned primary is replaced, and
// once healed it is turned into a replica of the new one.
func TestRedisSentinelNet(t *testing.T) {
	c := RequireRedisSentinelNet(t, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := c.WaitPrimary(ctx)
	if err != nil || p != 0 {
		t.Fatalf("primary %d, %v; want 0", p, err)
	}
	if strings.HasPrefix(c.Member(0).Addr(), "127.") {
		t.Fatalf("data node 0 on %s, not on the Net", c.Member(0).Addr())
	}
	if _, err := redisSentinelDo(ctx, c.Member(0).Addr(), "SET", "k", "v"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Partition(0); err != nil {
		t.Fatal(err)
	}
	if p, err = c.WaitPrimary(ctx); err != nil || p != 1 {
		c.Heal(0)
		t.Fatalf("primary %d, %v with node 0 cut off; want 1", p, err)
	}
	t.Logf("failover after the partition: %v", time.Since(start).Round(time.Millisecond))
	if err := c.Heal(0); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := c.WaitReplica(ctx, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("healed node 0 a replica after %v", time.Since(start).Round(time.Millisecond))
	if v, err := redisSentinelDo(ctx, c.Member(0).Addr(), "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET k on node 0: %v, %v", v, err)
	}
	// Kill and restart in a namespace.
	if err := c.Kill(1); err != nil {
		t.Fatal(err)
	}
	if p, err = c.WaitPrimary(ctx); err != nil || p != 0 {
		t.Fatalf("primary %d, %v with node 1 killed; want 0", p, err)
	}
	if err := c.Restart(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if v, err := redisSentinelDo(ctx, c.Member(1).Addr(), "GET", "k"); err != nil || v != "v" {
		t.Fatalf("GET k on node 1: %v, %v", v, err)
	}
}
