//go:build unix

package testserver

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EtcdCluster is an etcd cluster of a few members on loopback, for fault
// tests: each member is a [Server] of kind [Etcd] with its own ports (client
// and peer), temporary directory, process group and log, so a test kills,
// restarts or stops one member through that Server ([Server.Kill],
// [Server.Restart], [Server.Shutdown]). Members run the binary and the
// settings of the single server (500 ms election timeout, no fsync, no
// authentication, no TLS). Its methods are safe for concurrent use.
type EtcdCluster struct {
	members []*Server
	ids     []string // raft member IDs, as /v3/maintenance/status gives them
	token   string   // --initial-cluster-token, unique per cluster
	net     *Net     // nil: every member on loopback

	mu     sync.Mutex
	paused []bool
}

// StartEtcdCluster starts an n-member etcd cluster on free loopback ports,
// each member with a new temporary directory, and returns once every
// member answers /health (the cluster has a leader). It blocks until then,
// until the start timeout, or until ctx is done. Of opts only Args (for
// every member) and StartTimeout are supported. When a member exits during
// start (most likely a port taken first by another process), the whole
// cluster is started again, twice at most, on new ports with fresh data.
// A missing etcd binary returns an error wrapping [ErrMissing].
func StartEtcdCluster(ctx context.Context, n int, opts *Options) (*EtcdCluster, error) {
	return startEtcdCluster(ctx, n, opts, nil)
}

// StartEtcdClusterNet is StartEtcdCluster with every member in a network
// namespace of its own on a new [Net] (member i on its address there), so
// that [EtcdCluster.Partition] can cut a member off. It fails when the Net
// cannot be made (not root, no iproute2). Stop removes the Net too.
func StartEtcdClusterNet(ctx context.Context, n int, opts *Options) (*EtcdCluster, error) {
	nw, err := NewNet(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("testserver: etcd cluster: %w", err)
	}
	c, err := startEtcdCluster(ctx, n, opts, nw)
	if err != nil {
		nw.Close()
		return nil, err
	}
	return c, nil
}

func startEtcdCluster(ctx context.Context, n int, opts *Options, nw *Net) (*EtcdCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("testserver: etcd cluster of %d members", n)
	}
	o, bin, err := groupSetup(ctx, Etcd, "etcd cluster", opts, false)
	if err != nil {
		return nil, err
	}
	base := specs[Etcd]
	c := &EtcdCluster{net: nw, paused: make([]bool, n)}
	sp := &spec{
		nports:     2, // client, peer
		binary:     base.binary,
		stopSignal: base.stopSignal,
		args:       c.args,
		ready:      readyEtcd,
		url:        base.url,
	}
	for i := range n {
		s := &Server{kind: Etcd, spec: sp, opts: o, bin: bin}
		if nw != nil {
			s.host, s.wrap = nw.Member(i)
		}
		c.members = append(c.members, s)
		if s.dir, err = os.MkdirTemp("", "stampede-etcd-*"); err == nil {
			if err = os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err == nil {
				err = s.prepare(ctx)
			}
		}
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: etcd cluster: %w", err)
		}
	}
	c.token = filepath.Base(c.members[0].dir)
	const attempts = 3
	for i := 1; ; i++ {
		ports := freePorts(2 * n)
		for j, s := range c.members {
			s.ports = ports[2*j : 2*j+2]
			s.setAddr()
		}
		err = c.launch(ctx)
		if err == nil {
			break
		}
		var ee *exitedError
		if i == attempts || !errors.As(err, &ee) || ctx.Err() != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: start etcd cluster: %w", err)
		}
		for _, s := range c.members {
			if err := s.resetData(ctx); err != nil {
				c.Stop()
				return nil, fmt.Errorf("testserver: start etcd cluster: %w", err)
			}
		}
	}
	c.ids = make([]string, n)
	for i, s := range c.members {
		st, err := etcdStatus(ctx, s)
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: etcd cluster: member %d status: %w", i, err)
		}
		c.ids[i] = st.MemberID
	}
	return c, nil
}

// RequireEtcdCluster starts an n-member cluster for the test t, as
// [RequireWith] does a server: it is stopped by t.Cleanup (after logging
// each member's log tail if the test failed), and a missing etcd skips the
// test, or fails it when STAMPEDE_TEST_REQUIRE=1. STAMPEDE_TEST_ETCD_URL
// is not used: the test controls the members.
func RequireEtcdCluster(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	return requireEtcdCluster(t, n, StartEtcdCluster)
}

// RequireEtcdClusterNet is RequireEtcdCluster with the members on a [Net]
// (see [StartEtcdClusterNet]); a Net that cannot be made fails the test.
func RequireEtcdClusterNet(t testing.TB, n int) *EtcdCluster {
	t.Helper()
	c, err := StartEtcdClusterNet(context.Background(), n, nil)
	if err != nil && errors.Is(err, ErrMissing) {
		failStart(t, Etcd, err)
		return nil
	}
	if err != nil {
		t.Fatalf("testserver: %v", err)
	}
	return requireEtcdCluster(t, n, func(context.Context, int, *Options) (*EtcdCluster, error) { return c, nil })
}

func requireEtcdCluster(t testing.TB, n int, start func(context.Context, int, *Options) (*EtcdCluster, error)) *EtcdCluster {
	t.Helper()
	c, err := start(context.Background(), n, nil)
	if err != nil {
		failStart(t, Etcd, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.members {
				t.Logf("testserver: etcd member %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("testserver: stop etcd cluster: %v", err)
		}
	})
	return c
}

// args are a member's command line: its name is m<index>, and the initial
// cluster lists every member's peer URL.
func (c *EtcdCluster) args(s *Server) ([]string, error) {
	var initial []string
	name := ""
	for i, m := range c.members {
		initial = append(initial, fmt.Sprintf("m%d=http://%s", i, net.JoinHostPort(m.hostIP(), strconv.Itoa(m.ports[1]))))
		if m == s {
			name = fmt.Sprintf("m%d", i)
		}
	}
	client := "http://" + s.addr
	peer := "http://" + net.JoinHostPort(s.hostIP(), strconv.Itoa(s.ports[1]))
	a := []string{
		"--name", name, "--data-dir", s.dataDir(),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
		"--initial-cluster-token", c.token,
		"--heartbeat-interval", "50", "--election-timeout", "500",
		"--unsafe-no-fsync", "--log-level", "warn",
	}
	return append(a, s.opts.Args...), nil
}

// launch spawns every member, then waits for each to be ready (none is
// before a quorum runs); on failure no member is left running.
func (c *EtcdCluster) launch(ctx context.Context) error {
	return launchGroup(ctx, c.members, func(i int) string { return fmt.Sprintf("member %d", i) })
}

// Members returns the members, in a fixed order (member i is named m<i>).
func (c *EtcdCluster) Members() []*Server { return append([]*Server(nil), c.members...) }

// Member returns member i.
func (c *EtcdCluster) Member(i int) *Server { return c.members[i] }

// Endpoints returns every member's client address, host:port, in member
// order.
func (c *EtcdCluster) Endpoints() []string { return addrsOf(c.members) }

// URL returns a stampede URL listing every member, for claim.Open:
// etcd://127.0.0.1:P0,127.0.0.1:P1,...
func (c *EtcdCluster) URL() string { return "etcd://" + strings.Join(c.Endpoints(), ",") }

// Leader asks every member that runs, is not paused and not cut off for
// its status (/v3/maintenance/status, all at once, each within 2 s) and returns the index of the leader, when
// the members that answered are a majority of the cluster, all name the
// same leader, and that leader is running, not paused and not cut off.
// Otherwise (an election under way, a leader just killed, paused or
// partitioned that the others still name) it returns an error; see
// [EtcdCluster.WaitLeader].
func (c *EtcdCluster) Leader(ctx context.Context) (int, error) {
	type reply struct {
		st  etcdStatusReply
		err error
	}
	replies := make([]reply, len(c.members))
	var wg sync.WaitGroup
	for i, s := range c.members {
		if !s.Running() || c.Paused(i) || (c.net != nil && c.net.IsCut(i)) {
			// It cannot answer: do not wait for it.
			replies[i].err = errors.New("not running, paused or partitioned")
			continue
		}
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			replies[i].st, replies[i].err = etcdStatus(sctx, s)
		})
	}
	wg.Wait()
	var leader string
	answered := 0
	for i, r := range replies {
		if r.err != nil {
			continue
		}
		answered++
		if r.st.Leader == "" || r.st.Leader == "0" {
			return -1, fmt.Errorf("testserver: etcd member %d has no leader", i)
		}
		if leader != "" && r.st.Leader != leader {
			return -1, fmt.Errorf("testserver: etcd members disagree on the leader (%s, %s)", leader, r.st.Leader)
		}
		leader = r.st.Leader
	}
	if answered <= len(c.members)/2 {
		return -1, fmt.Errorf("testserver: %d of %d etcd members answered", answered, len(c.members))
	}
	for i, id := range c.ids {
		if id == leader {
			switch {
			case !c.members[i].Running():
				return -1, fmt.Errorf("testserver: etcd leader m%d is not running", i)
			case c.Paused(i):
				return -1, fmt.Errorf("testserver: etcd leader m%d is paused", i)
			case c.net != nil && c.net.IsCut(i):
				return -1, fmt.Errorf("testserver: etcd leader m%d is partitioned", i)
			}
			return i, nil
		}
	}
	return -1, fmt.Errorf("testserver: etcd leader %s is not a member", leader)
}

// WaitLeader calls Leader every 50 ms until it names a leader or ctx is
// done (then it returns Leader's last error).
func (c *EtcdCluster) WaitLeader(ctx context.Context) (int, error) { return pollIndex(ctx, c.Leader) }

// Stop stops every member (resumed first if paused) and removes their
// directories (see [Server.Stop]), then the [Net] if there is one. It is
// idempotent.
func (c *EtcdCluster) Stop() error {
	var errs []error
	c.mu.Lock()
	for i, s := range c.members {
		if c.paused[i] {
			if pid := s.Pid(); pid > 0 {
				syscall.Kill(-pid, syscall.SIGCONT)
			}
			c.paused[i] = false
		}
	}
	c.mu.Unlock()
	for _, s := range c.members {
		errs = append(errs, s.Stop())
	}
	if c.net != nil {
		errs = append(errs, c.net.Close())
	}
	return errors.Join(errs...)
}

// Kill sends SIGKILL to member i (see [Server.Kill]).
func (c *EtcdCluster) Kill(i int) error {
	c.mu.Lock()
	c.paused[i] = false
	c.mu.Unlock()
	return c.members[i].Kill()
}

// Restart starts member i again on its data after Kill and waits until it
// is ready (see [Server.Restart]).
func (c *EtcdCluster) Restart(ctx context.Context, i int) error {
	return c.members[i].Restart(ctx)
}

// Pause sends SIGSTOP to member i's process group: it keeps its
// connections and ports but answers nothing (as in a long GC pause or a
// frozen VM) until Resume. It fails when the member is not running or is
// paused already.
func (c *EtcdCluster) Pause(i int) error { return c.signal(i, true) }

// Resume sends SIGCONT to member i's process group after Pause. It fails
// when the member is not paused.
func (c *EtcdCluster) Resume(i int) error { return c.signal(i, false) }

func (c *EtcdCluster) signal(i int, pause bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused[i] == pause {
		return fmt.Errorf("testserver: etcd member %d: paused is %v already", i, pause)
	}
	sig := syscall.SIGSTOP
	if !pause {
		sig = syscall.SIGCONT
	}
	if err := signalGroup(c.members[i], sig); err != nil {
		return fmt.Errorf("testserver: etcd member %d: %w", i, err)
	}
	c.paused[i] = pause
	return nil
}

// Paused reports whether member i is paused.
func (c *EtcdCluster) Paused(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused[i]
}

// Net returns the network the members run on, nil for a cluster on
// loopback (StartEtcdCluster).
func (c *EtcdCluster) Net() *Net { return c.net }

// Partition cuts member i off from its peers and from clients until
// Heal(i) (see [Net.Cut]); it fails on a cluster on loopback.
func (c *EtcdCluster) Partition(i int) error {
	if c.net == nil {
		return errors.New("testserver: etcd cluster on loopback: partitions need StartEtcdClusterNet")
	}
	return c.net.Cut(i)
}

// Heal undoes Partition(i).
func (c *EtcdCluster) Heal(i int) error {
	if c.net == nil {
		return errors.New("testserver: etcd cluster on loopback: partitions need StartEtcdClusterNet")
	}
	return c.net.Heal(i)
}

func (s *Server) hostIP() string { return cmp.Or(s.host, "127.0.0.1") }

// etcdStatusReply is the part of /v3/maintenance/status this package
// reads; etcd's JSON gateway prints 64-bit integers as strings.
type etcdStatusReply struct {
	MemberID string
	Leader   string
}

func etcdStatus(ctx context.Context, s *Server) (etcdStatusReply, error) {
	code, body, err := httpDo(ctx, s, "POST", "/v3/maintenance/status", map[string]string{"Content-Type": "application/json"}, "{}")
	if err != nil {
		return etcdStatusReply{}, err
	}
	if code != 200 {
		return etcdStatusReply{}, fmt.Errorf("etcd /v3/maintenance/status: %d %s", code, strings.TrimSpace(body))
	}
	var r struct {
		Header struct {
			MemberID json.Number `json:"member_id"`
		} `json:"header"`
		Leader json.Number `json:"leader"`
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return etcdStatusReply{}, fmt.Errorf("etcd /v3/maintenance/status: %v in %q", err, body)
	}
	if r.Header.MemberID == "" {
		return etcdStatusReply{}, fmt.Errorf("etcd /v3/maintenance/status: no member ID in %q", body)
	}
	return etcdStatusReply{MemberID: r.Header.MemberID.String(), Leader: r.Leader.String()}, nil
}
