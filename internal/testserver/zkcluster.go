//go:build unix

package testserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ZooKeeperCluster is a ZooKeeper ensemble of a few members on loopback,
// for fault tests: each member is a [Server] of kind [ZooKeeper] with its
// own three ports (client, quorum, election), temporary directory, process
// group and log. A test kills, restarts, stops (SIGSTOP) and resumes one
// member through the cluster ([ZooKeeperCluster.Kill],
// [ZooKeeperCluster.Restart], [ZooKeeperCluster.Pause],
// [ZooKeeperCluster.Resume]), and, on a cluster started on a [Net]
// ([StartZooKeeperClusterNet]), cuts one off and back
// ([ZooKeeperCluster.Partition], [ZooKeeperCluster.Heal]). Members run QuorumPeerMain with short
// timeouts, so that an election takes about a second on an idle machine:
// tickTime 200 ms (sessions of 400 ms to 60 s), initLimit 10 and syncLimit
// 5 ticks (a follower that hears nothing from its leader for 1 s, or a
// leader that hears nothing from a quorum, gives up and elects), election
// notifications backing off to 1 s at most, and election connections
// timing out after 1 s; no fsync, no admin server, no authentication, no
// TLS; JVM heap 128 MiB. Its methods are safe for concurrent use.
type ZooKeeperCluster struct {
	members []*Server
	net     *Net // nil: every member on loopback

	mu     sync.Mutex
	paused map[int]int // member -> the pid it was paused at
}

// StartZooKeeperCluster starts an n-member ZooKeeper ensemble on free
// loopback ports, each member with a new temporary directory (holding
// zoo.cfg, data/myid and server.log), and returns once every member
// answers `srvr` as a leader or follower (the ensemble has a quorum). It
// blocks until then, until the start timeout (Options.StartTimeout,
// default 60 s, for each member), or until ctx is done. Of opts only Args
// (for every member: key=value lines go to zoo.cfg, after ours, and
// "-..." arguments to the JVM) and StartTimeout are supported. When a
// member exits during start (most likely a port taken first by another
// process), the whole ensemble is started again, twice at most, on new
// ports with fresh data. A missing java or missing ZooKeeper jars return
// an error wrapping [ErrMissing].
func StartZooKeeperCluster(ctx context.Context, n int, opts *Options) (*ZooKeeperCluster, error) {
	return startZooKeeperCluster(ctx, n, opts, nil)
}

// StartZooKeeperClusterNet is StartZooKeeperCluster with every member in a
// network namespace of its own on a new [Net] (member i listening on its
// address there, for clients and for its peers), so that
// [ZooKeeperCluster.Partition] can cut a member off. It fails when the Net
// cannot be made (not root, no iproute2). Stop removes the Net too.
func StartZooKeeperClusterNet(ctx context.Context, n int, opts *Options) (*ZooKeeperCluster, error) {
	if n < 1 || n > 200 {
		return nil, fmt.Errorf("testserver: zookeeper cluster of %d members on a net (want 1 to 200)", n)
	}
	nw, err := NewNet(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("testserver: zookeeper cluster: %w", err)
	}
	c, err := startZooKeeperCluster(ctx, n, opts, nw)
	if err != nil {
		nw.Close()
		return nil, err
	}
	return c, nil
}

func startZooKeeperCluster(ctx context.Context, n int, opts *Options, nw *Net) (*ZooKeeperCluster, error) {
	if n < 1 || n > 254 {
		return nil, fmt.Errorf("testserver: zookeeper cluster of %d members (want 1 to 254)", n)
	}
	o, bin, err := groupSetup(ctx, ZooKeeper, "zookeeper cluster", opts, false)
	if err != nil {
		return nil, err
	}
	base := specs[ZooKeeper]
	c := &ZooKeeperCluster{net: nw, paused: map[int]int{}}
	sp := &spec{
		nports:     3, // client, quorum, election
		binary:     base.binary,
		prepare:    c.prepare,
		stopSignal: base.stopSignal,
		args:       c.args,
		ready:      readyZooKeeper,
		url:        base.url,
	}
	for i := range n {
		s := &Server{kind: ZooKeeper, spec: sp, opts: o, bin: bin}
		if nw != nil {
			s.host, s.wrap = nw.Member(i)
		}
		c.members = append(c.members, s)
		if s.dir, err = os.MkdirTemp("", "stampede-zookeeper-*"); err == nil {
			if err = os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err == nil {
				err = s.prepare(ctx)
			}
		}
		if err != nil {
			c.stopMembers()
			return nil, fmt.Errorf("testserver: zookeeper cluster: %w", err)
		}
	}
	const attempts = 3
	for i := 1; ; i++ {
		ports := freePorts(3 * n)
		for j, s := range c.members {
			s.ports = ports[3*j : 3*j+3]
			s.setAddr()
		}
		err = c.launch(ctx)
		if err == nil {
			return c, nil
		}
		var ee *exitedError
		if i == attempts || !errors.As(err, &ee) || ctx.Err() != nil {
			c.stopMembers()
			return nil, fmt.Errorf("testserver: start zookeeper cluster: %w", err)
		}
		for _, s := range c.members {
			if err := s.resetData(ctx); err != nil {
				c.stopMembers()
				return nil, fmt.Errorf("testserver: start zookeeper cluster: %w", err)
			}
		}
	}
}

// RequireZooKeeperCluster starts an n-member ensemble for the test t, as
// [RequireWith] does a server: it is stopped by t.Cleanup (after logging
// each member's log tail if the test failed), and a missing java or
// ZooKeeper skips the test, or fails it when STAMPEDE_TEST_REQUIRE=1.
// STAMPEDE_TEST_ZOOKEEPER_URL is not used: the test controls the members.
func RequireZooKeeperCluster(t testing.TB, n int) *ZooKeeperCluster {
	t.Helper()
	return requireZooKeeperCluster(t, n, StartZooKeeperCluster)
}

// RequireZooKeeperClusterNet is RequireZooKeeperCluster with the members
// on a [Net] (see [StartZooKeeperClusterNet]); a Net that cannot be made
// fails the test (partitions are what it is for), a missing java or
// ZooKeeper skips or fails it as RequireZooKeeperCluster does.
func RequireZooKeeperClusterNet(t testing.TB, n int) *ZooKeeperCluster {
	t.Helper()
	return requireZooKeeperCluster(t, n, StartZooKeeperClusterNet)
}

func requireZooKeeperCluster(t testing.TB, n int, start func(context.Context, int, *Options) (*ZooKeeperCluster, error)) *ZooKeeperCluster {
	t.Helper()
	c, err := start(context.Background(), n, nil)
	if err != nil {
		failStart(t, ZooKeeper, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.members {
				t.Logf("testserver: zookeeper member %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(40))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("testserver: stop zookeeper cluster: %v", err)
		}
	})
	return c
}

// index returns s's position in the ensemble (its myid is index+1).
func (c *ZooKeeperCluster) index(s *Server) (int, error) {
	if i := slices.Index(c.members, s); i >= 0 {
		return i, nil
	}
	return -1, errors.New("zookeeper cluster: not a member")
}

// prepare writes the member's data/myid (ZooKeeper's server ID, 1-based).
func (c *ZooKeeperCluster) prepare(_ context.Context, s *Server) error {
	i, err := c.index(s)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.dataDir(), "myid"), []byte(strconv.Itoa(i+1)+"\n"), 0o644)
}

// args writes the member's zoo.cfg (every member's quorum and election
// ports; this one's client port) and returns its java command line.
func (c *ZooKeeperCluster) args(s *Server) ([]string, error) {
	cp, err := zookeeperClasspath()
	if err != nil {
		return nil, err
	}
	cfg := []string{
		"tickTime=200", // minimum session timeout 2 x tickTime = 400 ms
		"initLimit=10",
		"syncLimit=5",
		"maxSessionTimeout=60000",
		"dataDir=" + s.dataDir(),
		"clientPort=" + strconv.Itoa(s.ports[0]),
		"clientPortAddress=" + s.hostIP(),
		"admin.enableServer=false",
		"4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons,envi,wchs",
		"forceSync=no",
		"maxClientCnxns=0",
		"reconfigEnabled=false",
		"standaloneEnabled=false",
	}
	for i, m := range c.members {
		cfg = append(cfg, fmt.Sprintf("server.%d=%s:%d:%d", i+1, m.hostIP(), m.ports[1], m.ports[2]))
	}
	jvm := []string{
		"-Xmx128m", "-Xms32m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-XX:-UsePerfData",
		"-Djava.net.preferIPv4Stack=true",
		"-Dzookeeper.extendedTypesEnabled=true", // TTL nodes, as the single server
		"-Dzookeeper.admin.enableServer=false",
		"-Dzookeeper.cnxTimeout=1000",                         // election connections (default 5 s)
		"-Dzookeeper.fastleader.maxNotificationInterval=1000", // election back-off cap (default 60 s)
	}
	for _, a := range s.opts.Args {
		if strings.HasPrefix(a, "-") {
			jvm = append(jvm, a)
		} else {
			cfg = append(cfg, a)
		}
	}
	path := filepath.Join(s.dir, "zoo.cfg")
	if err := os.WriteFile(path, []byte(strings.Join(cfg, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	return append(jvm, "-cp", cp, "org.apache.zookeeper.server.quorum.QuorumPeerMain", path), nil
}

// launch spawns every member, then waits for each to be ready (none is
// before a quorum runs); on failure no member is left running.
func (c *ZooKeeperCluster) launch(ctx context.Context) error {
	return launchGroup(ctx, c.members, func(i int) string { return fmt.Sprintf("member %d", i) })
}

// Len returns the number of members.
func (c *ZooKeeperCluster) Len() int { return len(c.members) }

// Members returns the members, in a fixed order (member i has myid i+1).
func (c *ZooKeeperCluster) Members() []*Server { return append([]*Server(nil), c.members...) }

// Member returns member i. Kill and Restart it through the cluster
// ([ZooKeeperCluster.Kill], [ZooKeeperCluster.Restart]) so that the
// cluster knows whether it is paused.
func (c *ZooKeeperCluster) Member(i int) *Server { return c.members[i] }

// Endpoints returns every member's client address, host:port, in member
// order.
func (c *ZooKeeperCluster) Endpoints() []string { return addrsOf(c.members) }

// URL returns a stampede URL listing every member, member first first
// and the others in member order after it, for claim.Open:
// zookeeper://HOST1:P1,HOST2:P2,... (HOST is 127.0.0.1, or the member's
// address on the Net; go-zk shuffles the list
// before it connects, so the order does not choose the member a client
// talks to).
func (c *ZooKeeperCluster) URL(first int) string {
	return "zookeeper://" + strings.Join(Rotated(c.Endpoints(), first), ",")
}

// Kill sends SIGKILL to member i's process group, as in a crash (a
// paused member too), and returns once none of its processes is left.
// Its data directory stays, for Restart.
func (c *ZooKeeperCluster) Kill(i int) error {
	if err := c.check(i); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.paused, i)
	c.mu.Unlock()
	if err := c.members[i].Kill(); err != nil {
		return fmt.Errorf("testserver: zookeeper member %d: %w", i, err)
	}
	return nil
}

// Restart starts member i again after Kill (or Shutdown), on its ports
// and its data, and waits until it answers `srvr` as a leader or follower
// (it has joined a quorum), within ctx.
func (c *ZooKeeperCluster) Restart(ctx context.Context, i int) error {
	if err := c.check(i); err != nil {
		return err
	}
	if err := c.members[i].Restart(ctx); err != nil {
		return fmt.Errorf("testserver: zookeeper member %d: %w", i, err)
	}
	return nil
}

// Pause sends SIGSTOP to member i's process group: it keeps its
// connections and ports but answers nothing, as in a long GC pause or a
// hung machine, until Resume. It fails when the member is not running or
// already paused.
func (c *ZooKeeperCluster) Pause(i int) error {
	return c.signal(i, true)
}

// Resume sends SIGCONT to member i's process group after Pause. It fails
// when the member is not paused.
func (c *ZooKeeperCluster) Resume(i int) error {
	return c.signal(i, false)
}

func (c *ZooKeeperCluster) signal(i int, pause bool) error {
	if err := c.check(i); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	pid := c.members[i].Pid()
	was, paused := c.paused[i]
	paused = paused && was == pid
	switch {
	case pid == 0 || !c.members[i].Running():
		return fmt.Errorf("testserver: zookeeper member %d is not running", i)
	case pause && paused:
		return fmt.Errorf("testserver: zookeeper member %d is already paused", i)
	case !pause && !paused:
		return fmt.Errorf("testserver: zookeeper member %d is not paused", i)
	}
	sig := syscall.SIGSTOP
	if !pause {
		sig = syscall.SIGCONT
	}
	if err := signalGroup(c.members[i], sig); err != nil {
		return fmt.Errorf("testserver: zookeeper member %d: %w", i, err)
	}
	if pause {
		c.paused[i] = pid
	} else {
		delete(c.paused, i)
	}
	return nil
}

// Paused reports whether member i is paused (by Pause, not resumed since).
func (c *ZooKeeperCluster) Paused(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	pid, ok := c.paused[i]
	return ok && pid != 0 && pid == c.members[i].Pid()
}

func (c *ZooKeeperCluster) check(i int) error {
	if i < 0 || i >= len(c.members) {
		return fmt.Errorf("testserver: zookeeper cluster has no member %d (%d members)", i, len(c.members))
	}
	return nil
}

// Leader asks every running member that is neither paused nor cut off
// for its mode
// (`srvr`, each within 2 s) and returns the index of the leader when
// exactly one member says it leads, the members that answered as leader
// or follower are a majority of the ensemble, and the leader counts a
// majority of synced followers (`mntr`: zk_synced_followers, itself
// excluded). Otherwise (an election under way; a leader just paused or
// cut off that the others have not given up yet) it returns an error; see
// [ZooKeeperCluster.WaitLeader].
func (c *ZooKeeperCluster) Leader(ctx context.Context) (int, error) {
	leader, serving := -1, 0
	for i, s := range c.members {
		if !s.Running() || c.Paused(i) || c.Cut(i) {
			continue // it cannot answer: do not wait for it
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		mode, err := zkMode(sctx, s.Addr())
		cancel()
		if err != nil {
			continue
		}
		switch mode {
		case "leader":
			if leader >= 0 {
				return -1, fmt.Errorf("testserver: zookeeper members %d and %d both lead", leader, i)
			}
			leader = i
			serving++
		case "follower":
			serving++
		}
	}
	quorum := len(c.members)/2 + 1
	if serving < quorum {
		return -1, fmt.Errorf("testserver: %d of %d zookeeper members serve (want %d)", serving, len(c.members), quorum)
	}
	if leader < 0 {
		return -1, errors.New("testserver: no zookeeper member leads")
	}
	if len(c.members) == 1 {
		return leader, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out, err := fourLetter(sctx, c.members[leader].Addr(), "mntr")
	if err != nil {
		return -1, fmt.Errorf("testserver: zookeeper leader %d: mntr: %w", leader, err)
	}
	synced := -1
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "zk_synced_followers"); ok {
			synced, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if synced+1 < quorum {
		return -1, fmt.Errorf("testserver: zookeeper leader %d has %d synced followers (want %d)", leader, synced, quorum-1)
	}
	return leader, nil
}

// zkMode returns a member's mode from `srvr` ("leader", "follower",
// "observer", "standalone"), or an error when it does not serve (an
// election under way: "This ZooKeeper instance is not currently serving
// requests") or does not answer.
func zkMode(ctx context.Context, addr string) (string, error) {
	out, err := fourLetter(ctx, addr, "srvr")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(line, "Mode: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("zookeeper srvr: %q", out)
}

// WaitLeader calls Leader every 50 ms until it names a leader or ctx is
// done (then it returns Leader's last error).
func (c *ZooKeeperCluster) WaitLeader(ctx context.Context) (int, error) {
	return pollIndex(ctx, c.Leader)
}

// Stop resumes the paused members, stops every member and removes their
// directories (see [Server.Stop]), then removes the [Net] if there is one.
// It is idempotent.
func (c *ZooKeeperCluster) Stop() error {
	err := c.stopMembers()
	if c.net != nil {
		err = errors.Join(err, c.net.Close())
	}
	return err
}

func (c *ZooKeeperCluster) stopMembers() error {
	c.mu.Lock()
	for i, pid := range c.paused {
		if pid != 0 && pid == c.members[i].Pid() {
			syscall.Kill(-pid, syscall.SIGCONT)
		}
		delete(c.paused, i)
	}
	c.mu.Unlock()
	var errs []error
	for _, s := range c.members {
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}

// Net returns the network the members run on, nil for a cluster on
// loopback (StartZooKeeperCluster).
func (c *ZooKeeperCluster) Net() *Net { return c.net }

// Partition cuts member i off from its peers and from clients (both
// directions: packets are dropped, nothing is refused or reset) until
// Heal(i) (see [Net.Cut]). On a cluster on loopback it returns an error
// wrapping errors.ErrUnsupported: use StartZooKeeperClusterNet.
func (c *ZooKeeperCluster) Partition(i int) error { return c.cut(i, true) }

// Heal undoes Partition(i).
func (c *ZooKeeperCluster) Heal(i int) error { return c.cut(i, false) }

func (c *ZooKeeperCluster) cut(i int, cut bool) error {
	if err := c.check(i); err != nil {
		return err
	}
	if c.net == nil {
		return fmt.Errorf("testserver: zookeeper cluster on loopback: partitions need StartZooKeeperClusterNet: %w", errors.ErrUnsupported)
	}
	if cut {
		return c.net.Cut(i)
	}
	return c.net.Heal(i)
}

// Cut reports whether member i is cut off (by Partition, not healed since).
func (c *ZooKeeperCluster) Cut(i int) bool { return c.net != nil && c.net.IsCut(i) }
