//go:build unix

package testserver

import (
	"context"
	"testing"
	"time"
)

// TestEtcdCluster: three members elect a leader; killing it leaves a
// quorum that elects another; the killed member restarts and rejoins.
func TestEtcdCluster(t *testing.T) {
	c := RequireEtcdCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := len(c.Endpoints()); got != 3 {
		t.Fatalf("%d endpoints", got)
	}
	old, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Member(old)
	pid := m.Pid()
	fam := family(pid)
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	if n := leftover(pid, fam); n > 0 || m.Running() {
		t.Fatalf("member %d: %d processes left after Kill", old, n)
	}
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if next == old {
		t.Fatalf("leader %d again while killed", next)
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for i, s := range c.Members() {
		if err := readyEtcd(ctx, s); err != nil {
			t.Errorf("member %d after the restart: %v", i, err)
		}
	}
	if _, err := c.WaitLeader(ctx); err != nil {
		t.Fatal(err)
	}
}
