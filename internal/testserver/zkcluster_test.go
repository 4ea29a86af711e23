//go:build unix

package testserver

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestZooKeeperCluster: three members elect a leader; killing it leaves a
// quorum that elects another; the killed member restarts and rejoins;
// pausing the new leader (SIGSTOP) makes the other two elect a third, and
// the paused one rejoins as a follower once resumed. Times are logged,
// not asserted.
func TestZooKeeperCluster(t *testing.T) {
	t.Parallel()
	c := RequireZooKeeperCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("%d endpoints", got)
	}
	u := c.URL(1)
	eps := c.Endpoints()
	if want := "zookeeper://" + eps[1] + "," + eps[2] + "," + eps[0]; u != want {
		t.Errorf("URL(1) = %s, want %s", u, want)
	}
	if c.URL(4) != u || c.URL(-2) != u {
		t.Errorf("URL(4) = %s, URL(-2) = %s, want %s", c.URL(4), c.URL(-2), u)
	}
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Kill the leader.
	m := c.Member(old)
	pid := m.Pid()
	fam := family(pid)
	start := time.Now()
	if err := c.Kill(old); err != nil {
		t.Fatal(err)
	}
	if n := leftover(pid, fam); n > 0 || m.Running() {
		t.Fatalf("member %d: %d processes left after Kill", old, n)
	}
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %d killed: member %d leads %v later", old, next, time.Since(start).Round(time.Millisecond))
	if next == old {
		t.Fatalf("leader %d again while killed", next)
	}
	start = time.Now()
	if err := c.Restart(ctx, old); err != nil {
		t.Fatal(err)
	}
	t.Logf("member %d restarted and serving in %v", old, time.Since(start).Round(time.Millisecond))
	for i, s := range c.Members() {
		if _, err := zkMode(ctx, s.Addr()); err != nil {
			t.Errorf("member %d after the restart: %v", i, err)
		}
	}

	// Pause the leader.
	lead, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Resume(lead); err == nil {
		t.Errorf("Resume of member %d, not paused: no error", lead)
	}
	start = time.Now()
	if err := c.Pause(lead); err != nil {
		t.Fatal(err)
	}
	if !c.Paused(lead) {
		t.Errorf("member %d not Paused after Pause", lead)
	}
	if err := c.Pause(lead); err == nil {
		t.Errorf("second Pause of member %d: no error", lead)
	}
	next, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %d paused: member %d leads %v later", lead, next, time.Since(start).Round(time.Millisecond))
	if next == lead {
		t.Fatalf("leader %d again while paused", next)
	}
	if err := c.Resume(lead); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for {
		mode, err := zkMode(ctx, c.Member(lead).Addr())
		if err == nil && mode == "follower" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("member %d resumed: not a follower (%q, %v)", lead, mode, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("member %d resumed: a follower %v later", lead, time.Since(start).Round(time.Millisecond))
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}

	// Killing a paused member works, and Stop resumes paused ones.
	if err := c.Pause(lead); err != nil {
		t.Fatal(err)
	}
	if err := c.Kill(lead); err != nil {
		t.Fatal(err)
	}
	if c.Paused(lead) {
		t.Errorf("member %d still Paused after Kill", lead)
	}
	if err := c.Restart(ctx, lead); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(next); err != nil {
		t.Fatal(err)
	}
	if err := c.Pause(7); err == nil || !strings.Contains(err.Error(), "no member 7") {
		t.Errorf("Pause(7) = %v", err)
	}
	if err := c.Partition(0); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Partition(0) on loopback = %v, want ErrUnsupported", err)
	}
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped with member %d paused in %v", next, time.Since(start).Round(time.Millisecond))
}

// TestZooKeeperClusterNet: on a Net, partitioning the leader makes the
// other two elect one of them; healed, the old leader rejoins as a
// follower; a partitioned follower leaves the leader in place, and a
// client reaches every member but the cut one. Times are logged, not
// asserted.
func TestZooKeeperClusterNet(t *testing.T) {
	t.Parallel()
	c := RequireZooKeeperClusterNet(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if c.Net() == nil {
		t.Fatal("no Net")
	}
	for i, s := range c.Members() {
		if ip, _ := c.Net().Member(i); !strings.HasPrefix(s.Addr(), ip+":") {
			t.Errorf("member %d at %s, not on its Net address %s", i, s.Addr(), ip)
		}
	}
	lead, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Partition(lead); err != nil {
		t.Fatal(err)
	}
	if !c.Cut(lead) {
		t.Errorf("member %d not Cut after Partition", lead)
	}
	pctx, pcancel := context.WithTimeout(ctx, time.Second)
	if _, err := zkMode(pctx, c.Member(lead).Addr()); err == nil {
		t.Errorf("member %d answers while cut off", lead)
	}
	pcancel()
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %d partitioned: member %d leads %v later", lead, next, time.Since(start).Round(time.Millisecond))
	if next == lead {
		t.Fatalf("leader %d again while cut off", next)
	}
	if err := c.Heal(lead); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	for {
		mode, err := zkMode(ctx, c.Member(lead).Addr())
		if err == nil && mode == "follower" {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("member %d healed: not a follower (%q, %v)", lead, mode, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("member %d healed: a follower %v later", lead, time.Since(start).Round(time.Millisecond))

	// A follower cut off: the leader stays.
	lead, err = c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f := (lead + 1) % 3
	if err := c.Partition(f); err != nil {
		t.Fatal(err)
	}
	if got, err := c.WaitLeader(ctx); err != nil || got != lead {
		t.Errorf("follower %d cut off: leader %d, %v (want %d)", f, got, err, lead)
	}
	if err := c.Heal(f); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
}
