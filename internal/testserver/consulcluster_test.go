//go:build unix

package testserver

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestConsulCluster: three servers elect a leader and three client agents
// join them; killing the leader leaves a quorum that elects another, which
// the agents forward to; the killed server restarts on its data and
// rejoins; a paused leader is replaced too, and rejoins when resumed; so
// is a partitioned leader, which catches up when healed.
func TestConsulCluster(t *testing.T) {
	began := time.Now()
	c := RequireConsulCluster(t, 3)
	t.Logf("3 servers and 3 client agents up in %v", time.Since(began))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if got := c.Members(); got != 3 {
		t.Fatalf("%d members", got)
	}
	for i := range 4 {
		if u := c.URL(i); !strings.HasPrefix(u, "consul://127.0.0.1:") || u != c.Agent(i%3).URL() {
			t.Fatalf("URL(%d) = %q", i, u)
		}
	}
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Write a key through an agent; it must survive the leader's death.
	// Writes and reads through an agent are retried (each attempt within
	// 2 s) while it answers 500 or not at all: an agent whose server just
	// died or was cut off answers 500 until it moves on; one whose server
	// is paused holds the request until its connection to the server
	// times out (yamux keepalive, about 40 s), but sends the next ones
	// elsewhere once gossip marks the server failed. (A PUT is idempotent.)
	put := func(agent int, val string) {
		t.Helper()
		for {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			code, body, err := httpDo(actx, c.Agent(agent), "PUT", "/v1/kv/stampede-cluster-test", nil, val)
			cancel()
			if err == nil && code == 200 && strings.TrimSpace(body) == "true" {
				return
			}
			if ctx.Err() != nil || (err == nil && code != 500) {
				t.Fatalf("PUT via agent %d: %d %q %v", agent, code, body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	get := func(agent int) string {
		t.Helper()
		for {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			code, body, err := httpDo(actx, c.Agent(agent), "GET", "/v1/kv/stampede-cluster-test?raw", nil, "")
			cancel()
			if err == nil && code == 200 {
				return body
			}
			if ctx.Err() != nil {
				t.Fatalf("GET via agent %d: %d %q %v", agent, code, body, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	put(0, "one")

	start := time.Now()
	m := c.Server(old)
	pid := m.Pid()
	fam := family(pid)
	if err := c.Kill(old); err != nil {
		t.Fatal(err)
	}
	if n := leftover(pid, fam); n > 0 || m.Running() {
		t.Fatalf("server %d: %d processes left after Kill", old, n)
	}
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next == old {
		t.Fatalf("leader %d again while killed", next)
	}
	for i := range 3 {
		if got := get(i); got != "one" {
			t.Fatalf("after the leader's kill, agent %d reads %q", i, got)
		}
	}
	t.Logf("killed leader s%d: s%d leads, every agent reads through it %v later", old, next, time.Since(start))
	put(1, "two")
	if err := c.Restart(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	// The restarted server has its data and catches up.
	code, body, err := httpDo(ctx, m, "GET", "/v1/kv/stampede-cluster-test?raw&stale", nil, "")
	for i := 0; (err != nil || body != "two") && i < 100; i++ {
		time.Sleep(100 * time.Millisecond)
		code, body, err = httpDo(ctx, m, "GET", "/v1/kv/stampede-cluster-test?raw&stale", nil, "")
	}
	if err != nil || code != 200 || body != "two" {
		t.Fatalf("restarted server reads %d %q %v", code, body, err)
	}

	// Pause the leader: another is elected; resumed, the old one follows.
	old, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := c.Pause(old); err != nil {
		t.Fatal(err)
	}
	next, err = c.WaitLeader(ctx)
	if err != nil {
		c.Resume(old)
		t.Fatal(err)
	}
	if next == old {
		t.Fatalf("leader %d while paused", next)
	}
	t.Logf("paused leader s%d: s%d leads %v later", old, next, time.Since(start))
	for i := range 3 {
		if got := get(i); got != "two" {
			t.Errorf("with the leader paused, agent %d reads %q", i, got)
		}
	}
	t.Logf("every agent reads %v after the pause", time.Since(start))
	if err := c.Resume(old); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Paused(old) {
		t.Fatal("still paused after Resume")
	}

	// Partition the leader: the others elect another, which the agents
	// find; healed, the old one follows and catches up.
	old, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := c.Partition(old); err != nil {
		t.Fatal(err)
	}
	if !c.Partitioned(old) {
		t.Fatal("not partitioned after Partition")
	}
	next, err = c.WaitLeader(ctx)
	if err != nil {
		c.Heal(old)
		t.Fatal(err)
	}
	if next == old {
		t.Fatalf("leader %d while partitioned", next)
	}
	t.Logf("partitioned leader s%d: s%d leads %v later", old, next, time.Since(start))
	put(2, "three")
	for i := range 3 {
		if got := get(i); got != "three" {
			t.Errorf("with the leader partitioned, agent %d reads %q", i, got)
		}
	}
	// Cut off from this process too.
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	_, _, perr := httpDo(pctx, c.Server(old), "GET", "/v1/status/leader", nil, "")
	pcancel()
	if perr == nil {
		t.Error("the partitioned server answers this process")
	}
	if err := c.Heal(old); err != nil {
		t.Fatal(err)
	}
	code, body, err = httpDo(ctx, c.Server(old), "GET", "/v1/kv/stampede-cluster-test?raw&stale", nil, "")
	for i := 0; (err != nil || body != "three") && i < 100; i++ {
		time.Sleep(100 * time.Millisecond)
		code, body, err = httpDo(ctx, c.Server(old), "GET", "/v1/kv/stampede-cluster-test?raw&stale", nil, "")
	}
	if err != nil || code != 200 || body != "three" {
		t.Fatalf("healed server reads %d %q %v", code, body, err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("done %v after the start", time.Since(began))
}
