package faults

import (
	"context"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/testserver"
)

func init() {
	clusterSpecs = append(clusterSpecs, clusterSpec{name: "consul", start: startConsulCluster})
}

// startConsulCluster starts 3 Consul servers and 3 client agents for
// TestCluster: the faults hit the servers, and the harness's clients talk
// to the client agents (URL(i) names agent i), as applications talk to
// their local agent, which forwards to a server and fails over between
// them.
func startConsulCluster(t *testing.T) cluster {
	c := testserver.RequireConsulCluster(t, 3)
	if c == nil {
		return nil
	}
	return consulCluster{c}
}

// consulCluster adapts testserver.ConsulCluster to the harness's cluster.
type consulCluster struct{ *testserver.ConsulCluster }

// Leader waits until the servers that run (not paused, not cut off) agree
// on a leader (see testserver.ConsulCluster.Leader).
func (c consulCluster) Leader(ctx context.Context) (int, error) { return c.WaitLeader(ctx) }

// TestClusterConsulStaleRead measures what a Get answered by a Consul
// leader that was paused past an election returns. Per round: commit v1,
// SIGSTOP the leader, wait for another leader, commit v2 through it
// (acknowledged), then Get the key through a client talking to the old
// leader's own HTTP API, resume the old leader half a second later, and
// record what the Get returns. v1 is a stale read: the Get was sent after
// v2's commit returned, so no linearizable store may answer it. Consul's
// default consistency mode let a server that still believes it leads
// answer from its own state (3 stale reads of 8 rounds, when the driver
// read that way); the driver's reads are ?consistent now, which makes the
// old leader check with a quorum first: a Get may fail, never be stale
// (see docs/consul.md, "In a cluster").
func TestClusterConsulStaleRead(t *testing.T) {
	t.Parallel()
	c := testserver.RequireConsulCluster(t, 3)
	if c == nil {
		t.Fatal("consul cluster did not start")
	}
	ctx := ctxFor(t, 10*time.Minute)
	rounds := 4
	if chaos() {
		rounds = 20
	}
	stale, fresh, failed := 0, 0, 0
	for r := range rounds {
		lctx, lcancel := context.WithTimeout(ctx, time.Minute)
		old, err := c.WaitLeader(lctx)
		lcancel()
		if err != nil {
			t.Fatalf("round %d: %v", r, err)
		}
		k := key(t, "stale")
		// The writer talks to a follower's HTTP API (which forwards to
		// whichever server leads), the reader to the old leader's.
		w := open(t, c.ServerURL((old+1)%c.Members()))
		rd := open(t, c.ServerURL(old))
		commit := func(v string) {
			t.Helper()
			l, err := do(func(ctx context.Context) (claim.Lease, error) { return w.Acquire(ctx, k, 10*time.Second) })
			if err != nil {
				t.Fatalf("round %d: acquire for %s: %v", r, v, err)
			}
			if err := do0(func(ctx context.Context) error { return w.CommitRelease(ctx, l, []byte(v), 0) }); err != nil {
				t.Fatalf("round %d: commit %s: %v", r, v, err)
			}
		}
		commit("v1")
		if got, err := do(func(ctx context.Context) ([]byte, error) { return rd.Get(ctx, k) }); err != nil || string(got) != "v1" {
			t.Fatalf("round %d: the leader reads %q, %v before the pause", r, got, err)
		}
		if err := c.Pause(old); err != nil {
			t.Fatal(err)
		}
		lctx, lcancel = context.WithTimeout(ctx, time.Minute)
		next, err := c.WaitLeader(lctx)
		lcancel()
		if err != nil {
			c.Resume(old)
			t.Fatalf("round %d: no new leader: %v", r, err)
		}
		commit("v2")
		type result struct {
			v   []byte
			err error
		}
		got := make(chan result, 1)
		go func() {
			gctx, gcancel := context.WithTimeout(ctx, 20*time.Second)
			defer gcancel()
			v, err := rd.Get(gctx, k)
			got <- result{v, err}
		}()
		sleep(ctx, 500*time.Millisecond)
		if err := c.Resume(old); err != nil {
			t.Fatal(err)
		}
		res := <-got
		switch {
		case res.err != nil:
			failed++
		case string(res.v) == "v1":
			stale++
		case string(res.v) == "v2":
			fresh++
		default:
			t.Errorf("round %d: read %q", r, res.v)
		}
		t.Logf("round %d: leader s%d paused, s%d committed v2; Get at s%d after SIGCONT: %q, %v", r, old, next, old, res.v, res.err)
	}
	t.Logf("Gets at a resumed old leader, sent after a newer commit was acknowledged: %d stale, %d fresh, %d failed, of %d", stale, fresh, failed, rounds)
	figure(t, "cluster", "stale reads at a resumed old leader", "consul", "%d stale, %d fresh, %d failed of %d", stale, fresh, failed, rounds)
	if stale > 0 {
		t.Errorf("%d stale reads of %d", stale, rounds)
	}
}
