//go:build linux

package testserver

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// netListenEnv makes TestNetListener a helper process: it listens on the
// address the variable names (inside a member's namespace) and answers
// every line with "ok".
const netListenEnv = "STAMPEDE_TESTSERVER_NET_LISTEN"

// TestNetListener is the helper process of TestNet; run normally, it does
// nothing.
func TestNetListener(t *testing.T) {
	addr := os.Getenv(netListenEnv)
	if addr == "" {
		return
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(4)
		}
		go func() {
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				fmt.Fprintln(c, "ok")
			}
		}()
	}
}

// requireNet makes a Net for the test, closed by t.Cleanup; a Net that
// cannot be made fails the test (partitions are a requirement of the
// fault tests, not an option).
func requireNet(t *testing.T, n int) *Net {
	t.Helper()
	nw, err := NewNet(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nw.Close(); err != nil {
			t.Error(err)
		}
	})
	return nw
}

// TestNet: members of a Net reach each other's listeners, this process
// reaches them, a cut member is unreachable (a dial times out, no
// refusal) both ways while the others still talk, Heal restores it, and
// Close leaves no namespace or link behind.
func TestNet(t *testing.T) {
	nw := requireNet(t, 3)
	var addrs []string
	for i := range nw.Members() {
		ip, wrap := nw.Member(i)
		addr := net.JoinHostPort(ip, "7777")
		addrs = append(addrs, addr)
		args := append(append([]string(nil), wrap[1:]...), os.Args[0], "-test.run=^TestNetListener$")
		logf, err := os.Create(filepath.Join(t.TempDir(), "listener.log"))
		if err != nil {
			t.Fatal(err)
		}
		p, err := spawn(wrap[0], args, t.TempDir(), []string{netListenEnv + "=" + addr}, false, logf)
		logf.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.kill() })
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, a := range addrs {
		if err := netWaitDial(ctx, a); err != nil {
			t.Fatalf("member %d at %s: %v", i, a, err)
		}
	}
	if err := nw.Cut(1); err != nil {
		t.Fatal(err)
	}
	if !nw.IsCut(1) {
		t.Error("IsCut(1) false after Cut")
	}
	if err := nw.Cut(1); err != nil {
		t.Errorf("second Cut: %v", err)
	}
	start := time.Now()
	if c, err := net.DialTimeout("tcp", addrs[1], time.Second); err == nil {
		c.Close()
		t.Error("dialed a cut member")
	} else if !strings.Contains(err.Error(), "timeout") {
		t.Errorf("dial of a cut member: %v (want a timeout, not a refusal)", err)
	} else {
		t.Logf("dial of the cut member: %v after %v", err, time.Since(start).Round(time.Millisecond))
	}
	// No ARP to fail later: every neighbour entry is static.
	ip1, _ := nw.Member(1)
	if out, err := exec.Command(nw.ipBin, "neigh", "show", ip1, "dev", nw.bridge()).CombinedOutput(); err != nil || !strings.Contains(string(out), "PERMANENT") {
		t.Errorf("neighbour entry of member 1: %q, %v (want PERMANENT)", out, err)
	}
	for _, i := range []int{0, 2} {
		if err := netWaitDial(ctx, addrs[i]); err != nil {
			t.Errorf("member %d while member 1 is cut: %v", i, err)
		}
	}
	if err := nw.Heal(1); err != nil {
		t.Fatal(err)
	}
	if err := netWaitDial(ctx, addrs[1]); err != nil {
		t.Errorf("member 1 after Heal: %v", err)
	}
	if err := nw.Cut(7); err == nil {
		t.Error("Cut(7) of 3 members succeeded")
	}

	id := nw.id
	if err := nw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := nw.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if left := netLeftovers(t, id); len(left) > 0 {
		t.Errorf("left after Close: %q", left)
	}
	if err := nw.Cut(0); err == nil {
		t.Error("Cut after Close succeeded")
	}
}

// TestNetSweep: the namespaces and links of a Net whose owner process is
// gone are removed by the next sweep.
func TestNetSweep(t *testing.T) {
	nw := requireNet(t, 2)
	// Pretend the Net belongs to a process that has exited.
	if err := os.WriteFile(filepath.Join(nw.dir, ownerFile), []byte("999999999 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sweepNets(ctx, nw.ipBin)
	if left := netLeftovers(t, nw.id); len(left) > 0 {
		t.Errorf("left after the sweep: %q", left)
	}
	if _, err := os.Stat(nw.dir); !os.IsNotExist(err) {
		t.Errorf("marker directory after the sweep: %v", err)
	}
}

// netLeftovers lists the namespaces and links whose name carries id.
func netLeftovers(t *testing.T, id string) []string {
	t.Helper()
	var left []string
	out, err := os.ReadDir("/run/netns")
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range out {
		if strings.HasPrefix(e.Name(), netNamePrefix+id) {
			left = append(left, "netns "+e.Name())
		}
	}
	links, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Name, netNamePrefix+id) {
			left = append(left, "link "+l.Name)
		}
	}
	return left
}

// netWaitDial dials addr and exchanges a line until it works or ctx is
// done.
func netWaitDial(ctx context.Context, addr string) error {
	for {
		err := func() error {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintln(c, "ping"); err != nil {
				return err
			}
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return err
			}
			if line != "ok\n" {
				return fmt.Errorf("answer %q", line)
			}
			return nil
		}()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestEtcdClusterNet: an etcd cluster on a Net forms (its members reach
// each other through the bridge); a partitioned leader is replaced and
// rejoins after Heal; a paused leader is replaced and rejoins after
// Resume.
func TestEtcdClusterNet(t *testing.T) {
	c := RequireEtcdClusterNet(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if ip, _ := c.Net().Member(0); !strings.HasPrefix(c.Endpoints()[0], ip+":") {
		t.Fatalf("member 0 at %s, not on its Net address %s", c.Endpoints()[0], ip)
	}
	for _, fault := range []struct {
		name     string
		do, undo func(i int) error
	}{
		{"partition", c.Partition, c.Heal},
		{"pause", c.Pause, c.Resume},
	} {
		old, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := fault.do(old); err != nil {
			t.Fatalf("%s m%d: %v", fault.name, old, err)
		}
		next, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatalf("after the %s of m%d: %v", fault.name, old, err)
		}
		if next == old {
			t.Fatalf("%s: leader m%d again", fault.name, next)
		}
		t.Logf("%s of leader m%d: m%d elected within %v", fault.name, old, next, time.Since(start).Round(time.Millisecond))
		if err := fault.undo(old); err != nil {
			t.Fatalf("undo %s m%d: %v", fault.name, old, err)
		}
		// The member rejoins: it answers /health (it has a leader) again.
		for {
			err := readyEtcd(ctx, c.Member(old))
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("m%d after the %s: %v", old, fault.name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := c.Partition(5); err == nil {
		t.Error("Partition(5) of 3 members succeeded")
	}
}
