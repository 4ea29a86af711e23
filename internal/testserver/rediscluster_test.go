//go:build unix

package testserver

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestRedisCluster: three masters (nodes 0-2) with one replica each
// (nodes 3-5); a key written to its master reaches the replica; killing
// that master makes the cluster promote the replica, which still holds
// the key; the killed node restarts as a replica of the new master and
// syncs the key from it.
func TestRedisCluster(t *testing.T) {
	c := RequireRedisCluster(t, 3, 1, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if c.Members() != 6 {
		t.Fatalf("%d members", c.Members())
	}
	u, err := url.Parse(c.URL(2))
	if err != nil {
		t.Fatal(err)
	}
	if u.Host != c.Addrs()[2] || u.Query().Get("cluster") != "true" ||
		len(strings.Split(u.Query().Get("addrs"), ",")) != 5 {
		t.Fatalf("URL(2) = %s", c.URL(2))
	}
	masters, err := c.Masters(ctx)
	if err != nil || !slices.Equal(masters, []int{0, 1, 2}) {
		t.Fatalf("masters %v, %v; want [0 1 2]", masters, err)
	}
	const key = "k"
	m, err := c.MasterOf(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	// CLUSTER KEYSLOT "k" is 7629: shard 1.
	if m != 1 {
		t.Fatalf("MasterOf(%q) = %d, want 1", key, m)
	}
	// SET, then WAIT on the same connection (WAIT waits for that
	// connection's writes): the replica has the key, and its own key
	// count of the slot says so.
	conn, err := dial(ctx, c.Member(m).Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n1\r\n$5\r\n10000\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(conn)
	if v, err := redisSentinelRead(r); err != nil || v != "OK" {
		t.Fatalf("SET: %v, %v", v, err)
	}
	if n, err := redisSentinelRead(r); err != nil || n != int64(1) {
		t.Fatalf("WAIT 1: %v, %v", n, err)
	}
	if r, err := redisSentinelDo(ctx, c.Member(m+3).Addr(), "CLUSTER", "COUNTKEYSINSLOT", "7629"); err != nil || r != int64(1) {
		t.Fatalf("CLUSTER COUNTKEYSINSLOT on the replica before the kill: %v, %v", r, err)
	}
	start := time.Now()
	if err := c.Kill(m); err != nil {
		t.Fatal(err)
	}
	next, err := c.WaitFailover(ctx, m)
	if err != nil || next != m+3 {
		t.Fatalf("new master %d, %v; want %d", next, err, m+3)
	}
	t.Logf("failover after SIGKILL of master %d: %v", m, time.Since(start).Round(time.Millisecond))
	if v, err := redisSentinelDo(ctx, c.Member(next).Addr(), "GET", key); err != nil || v != "v" {
		t.Fatalf("GET %s on the new master: %v, %v", key, v, err)
	}
	start = time.Now()
	if err := c.Restart(ctx, m); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d back as a replica after %v", m, time.Since(start).Round(time.Millisecond))
	if masters, err = c.Masters(ctx); err != nil || !slices.Equal(masters, []int{0, 4, 2}) {
		t.Fatalf("masters %v, %v; want [0 4 2]", masters, err)
	}
	ns, err := c.Nodes(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.ID == c.ID(m) && (!n.Has("myself") || !n.Has("slave") || n.Master != c.ID(next)) {
			t.Fatalf("node %d sees itself as %+v, want a replica of %s", m, n, c.ID(next))
		}
	}
	// The replica's data: a GET there is redirected (MOVED) to the
	// master; the key count of the slot is its own.
	n, err := redisSentinelDo(ctx, c.Member(m).Addr(), "CLUSTER", "COUNTKEYSINSLOT", "7629")
	if err != nil || n != int64(1) {
		t.Fatalf("CLUSTER COUNTKEYSINSLOT on the restarted replica: %v, %v", n, err)
	}
}
