//go:build unix

package testserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RedisClusterNodeTimeout is the cluster-node-timeout of a
// [RedisCluster]: a master that does not answer its peers for this long
// is flagged as failing, and once a majority of the masters agree its
// replica starts an election (after 500-1000 ms more, plus 1 s per rank
// for a second replica).
const RedisClusterNodeTimeout = 1000 * time.Millisecond

// redisClusterSlots is the number of hash slots of a Redis Cluster.
const redisClusterSlots = 16384

// RedisCluster is a Redis Cluster of masters, each with replicas, all on
// loopback, for fault tests. Each node is a [Server] of kind [Redis] with
// its own client port, cluster bus port, temporary directory, process
// group and log. Nodes 0 to masters-1 start as the masters, master m
// serving the m-th of masters equal ranges of the 16384 slots; node
// masters*(r+1)+m is replica r of master m. After a failover a master is
// whichever node the cluster says ([RedisCluster.Masters]). Nodes keep
// their cluster configuration (nodes.conf, with their node ID) in their
// data directory, and no data unless Options.AppendOnly (then
// "appendfsync always"): a node killed and restarted keeps its identity,
// comes back empty, and resyncs from its shard's master. Replication is
// asynchronous, cluster-require-full-coverage is left at its default
// (yes: while a shard has no master, every node refuses every key). Its
// methods are safe for concurrent use.
type RedisCluster struct {
	masters, replicas int
	nodes             []*Server
	ids               []string // node IDs (CLUSTER MYID), fixed at start
	// syncing[i]: node i is being restarted and starts with
	// cluster-replica-no-failover yes (see Restart).
	syncing []bool
	mu      chan struct{} // a one-slot lock guarding syncing
}

// StartRedisCluster starts a Redis Cluster of masters masters with
// replicas replicas each on free loopback ports and returns once every
// node is in the cluster, reports cluster_state:ok and agrees on the
// layout (which node serves which slots, which node replicates which),
// and every replica's link to its master is up. It blocks until then,
// until the start timeout (per process, and for the whole settling), or
// until ctx is done. Of opts only Args (for every node), AppendOnly and
// StartTimeout are supported. A node that exits during start (most
// likely a port taken first by another process) restarts the whole set,
// twice at most, on new ports. A missing redis-server returns an error
// wrapping [ErrMissing].
func StartRedisCluster(ctx context.Context, masters, replicas int, opts *Options) (*RedisCluster, error) {
	if masters < 3 || replicas < 0 {
		return nil, fmt.Errorf("testserver: redis cluster of %d masters with %d replicas each: want at least 3 masters (a failover needs a majority of them) and replicas >= 0", masters, replicas)
	}
	o, bin, err := groupSetup(ctx, Redis, "redis cluster", opts, true)
	if err != nil {
		return nil, err
	}
	base := specs[Redis]
	n := masters * (1 + replicas)
	c := &RedisCluster{masters: masters, replicas: replicas, mu: make(chan struct{}, 1), syncing: make([]bool, n)}
	sp := &spec{nports: 2, binary: base.binary, stopSignal: syscall.SIGTERM, args: c.nodeArgs, ready: readyRedis, url: base.url}
	for range n {
		s := &Server{kind: Redis, spec: sp, opts: o, bin: bin}
		if s.dir, err = os.MkdirTemp("", "stampede-redis-*"); err == nil {
			c.nodes = append(c.nodes, s)
			if err = os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err == nil {
				err = s.prepare(ctx)
			}
		}
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: redis cluster: %w", err)
		}
	}
	const attempts = 3
	for i := 1; ; i++ {
		ports := freePorts(2 * n)
		for j, s := range c.nodes {
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
			return nil, fmt.Errorf("testserver: start redis cluster: %w", err)
		}
		for _, s := range c.nodes {
			if err := s.resetData(ctx); err != nil {
				c.Stop()
				return nil, fmt.Errorf("testserver: start redis cluster: %w", err)
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	if err := c.create(rctx); err != nil {
		c.Stop()
		return nil, fmt.Errorf("testserver: create redis cluster: %w", err)
	}
	return c, nil
}

// RequireRedisCluster starts a Redis Cluster for the test t, as
// [RequireWith] does a server: stopped by t.Cleanup (after logging every
// node's log tail if the test failed); a missing redis-server skips the
// test, or fails it when STAMPEDE_TEST_REQUIRE=1.
// STAMPEDE_TEST_REDIS_URL is not used: the test controls the processes.
func RequireRedisCluster(t testing.TB, masters, replicas int, opts *Options) *RedisCluster {
	t.Helper()
	c, err := StartRedisCluster(context.Background(), masters, replicas, opts)
	if err != nil {
		failStart(t, Redis, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.nodes {
				t.Logf("testserver: redis cluster node %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("testserver: stop redis cluster: %v", err)
		}
	})
	return c
}

func (c *RedisCluster) lock()   { c.mu <- struct{}{} }
func (c *RedisCluster) unlock() { <-c.mu }

// nodeArgs are a node's command line: redis.go's (no persistence unless
// AppendOnly), cluster mode with its bus on the second port, and a
// diskless full sync without delay (a restarted node resyncs at once),
// and no replica migration (a node stays in its shard).
func (c *RedisCluster) nodeArgs(s *Server) ([]string, error) {
	a := []string{
		"--bind", s.hostIP(), "--port", strconv.Itoa(s.ports[0]),
		"--dir", s.dataDir(), "--save", "", "--protected-mode", "no",
		"--daemonize", "no", "--logfile", "",
		"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(s.ports[1]),
		"--cluster-config-file", filepath.Join(s.dataDir(), "nodes.conf"),
		"--cluster-node-timeout", strconv.FormatInt(RedisClusterNodeTimeout.Milliseconds(), 10),
		"--cluster-allow-replica-migration", "no",
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
	}
	if s.opts.AppendOnly {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		a = append(a, "--appendonly", "no")
	}
	c.lock()
	for i, m := range c.nodes {
		if m == s && c.syncing[i] {
			a = append(a, "--cluster-replica-no-failover", "yes")
		}
	}
	c.unlock()
	return append(a, s.opts.Args...), nil
}

// launch spawns every node and waits for each; on failure nothing is
// left running.
func (c *RedisCluster) launch(ctx context.Context) error {
	var started []*Server
	for i, s := range c.nodes {
		p, err := s.spawn()
		if err == nil {
			err = s.await(ctx, p)
		}
		if err != nil {
			for _, s := range started {
				s.Kill()
			}
			return fmt.Errorf("node %d: %w", i, err)
		}
		started = append(started, s)
	}
	return nil
}

// create does what redis-cli --cluster create does, deterministically:
// slots to the masters, distinct config epochs, every node introduced to
// node 0, each replica attached to its master; then waits for the
// cluster to settle.
func (c *RedisCluster) create(ctx context.Context) error {
	c.ids = make([]string, len(c.nodes))
	for i, s := range c.nodes {
		r, err := redisSentinelDo(ctx, s.Addr(), "CLUSTER", "MYID")
		id, _ := r.(string)
		if err != nil || id == "" {
			return fmt.Errorf("node %d: CLUSTER MYID: %v %v", i, r, err)
		}
		c.ids[i] = id
	}
	for m := range c.masters {
		lo, hi := m*redisClusterSlots/c.masters, (m+1)*redisClusterSlots/c.masters-1
		if _, err := redisSentinelDo(ctx, c.nodes[m].Addr(), "CLUSTER", "ADDSLOTSRANGE", strconv.Itoa(lo), strconv.Itoa(hi)); err != nil {
			return fmt.Errorf("node %d: CLUSTER ADDSLOTSRANGE %d %d: %w", m, lo, hi, err)
		}
		if _, err := redisSentinelDo(ctx, c.nodes[m].Addr(), "CLUSTER", "SET-CONFIG-EPOCH", strconv.Itoa(m+1)); err != nil {
			return fmt.Errorf("node %d: CLUSTER SET-CONFIG-EPOCH: %w", m, err)
		}
	}
	first := c.nodes[0]
	for i, s := range c.nodes[1:] {
		if _, err := redisSentinelDo(ctx, s.Addr(), "CLUSTER", "MEET", first.hostIP(), strconv.Itoa(first.ports[0]), strconv.Itoa(first.ports[1])); err != nil {
			return fmt.Errorf("node %d: CLUSTER MEET: %w", i+1, err)
		}
	}
	for i := c.masters; i < len(c.nodes); i++ {
		master := c.ids[i%c.masters]
		var last error
		for {
			// The replica must have heard of its master first.
			if _, last = redisSentinelDo(ctx, c.nodes[i].Addr(), "CLUSTER", "REPLICATE", master); last == nil {
				break
			}
			if err := redisSentinelSleep(ctx, 50*time.Millisecond); err != nil {
				return fmt.Errorf("node %d: CLUSTER REPLICATE: %v (%w)", i, last, err)
			}
		}
	}
	return c.WaitHealthy(ctx)
}

// Members returns the number of nodes (masters and replicas).
func (c *RedisCluster) Members() int { return len(c.nodes) }

// Member returns node i.
func (c *RedisCluster) Member(i int) *Server { return c.nodes[i] }

// ID returns node i's cluster node ID.
func (c *RedisCluster) ID(i int) string { return c.ids[i] }

// Addrs returns every node's client address, host:port, in order.
func (c *RedisCluster) Addrs() []string { return addrsOf(c.nodes) }

// URL returns a stampede URL for claim.Open naming every node, node
// first%Members() first: redis://N1/0?cluster=true&addrs=N2,N3,... (the
// client finds the masters from whichever node answers).
func (c *RedisCluster) URL(first int) string {
	rot := Rotated(c.Addrs(), first)
	q := url.Values{}
	q.Set("cluster", "true")
	q.Set("addrs", strings.Join(rot[1:], ","))
	u := url.URL{Scheme: "redis", Host: rot[0], Path: "/0", RawQuery: q.Encode()}
	return u.String()
}

// RedisClusterNode is one line of CLUSTER NODES, as one node sees
// another.
type RedisClusterNode struct {
	ID     string
	Addr   string   // host:port (the client port)
	Flags  []string // myself, master, slave, fail?, fail, handshake, noaddr, nofailover
	Master string   // the master's ID for a replica, "" for a master
	Epoch  int64    // config epoch
	Linked bool     // link-state connected
	Slots  int      // the number of slots it serves (importing and migrating ones not counted)
}

// Has reports whether the node has flag f.
func (n RedisClusterNode) Has(f string) bool {
	for _, g := range n.Flags {
		if g == f {
			return true
		}
	}
	return false
}

// Nodes returns the cluster as node i sees it (CLUSTER NODES, within
// 1 s: a killed or paused node fails).
func (c *RedisCluster) Nodes(ctx context.Context, i int) ([]RedisClusterNode, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	r, err := redisSentinelDo(ctx, c.nodes[i].Addr(), "CLUSTER", "NODES")
	if err != nil {
		return nil, fmt.Errorf("testserver: redis cluster node %d: CLUSTER NODES: %w", i, err)
	}
	text, _ := r.(string)
	var out []RedisClusterNode
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			return nil, fmt.Errorf("testserver: redis cluster node %d: CLUSTER NODES line %q", i, line)
		}
		addr, _, _ := strings.Cut(f[1], "@")
		n := RedisClusterNode{ID: f[0], Addr: addr, Flags: strings.Split(f[2], ","), Linked: f[7] == "connected"}
		if f[3] != "-" {
			n.Master = f[3]
		}
		n.Epoch, _ = strconv.ParseInt(f[6], 10, 64)
		for _, sl := range f[8:] {
			if strings.HasPrefix(sl, "[") {
				continue // a slot being imported or migrated
			}
			lo, hi, rng := strings.Cut(sl, "-")
			a, err1 := strconv.Atoi(lo)
			b := a
			var err2 error
			if rng {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 != nil || err2 != nil {
				return nil, fmt.Errorf("testserver: redis cluster node %d: slot %q in %q", i, sl, line)
			}
			n.Slots += b - a + 1
		}
		out = append(out, n)
	}
	return out, nil
}

// index returns the node index of a node ID, -1 if unknown.
func (c *RedisCluster) index(id string) int {
	for i, x := range c.ids {
		if x == id {
			return i
		}
	}
	return -1
}

// Masters returns, per shard, the index of the node serving it, shards
// in the order of their slots (shard m serves the m-th range of slots,
// as at start), when every running node answers (each within 1 s: a
// paused node does not) and they agree: each reports cluster_state:ok
// and sees one running master with slots per shard and no running node
// flagged fail or fail? (a killed node stays flagged fail, and must serve
// no slots). Otherwise (a failover under way, a master just killed) it
// returns an error; see [RedisCluster.WaitHealthy].
func (c *RedisCluster) Masters(ctx context.Context) ([]int, error) {
	masters, _, err := c.view(ctx)
	return masters, err
}

// view is Masters plus, per node, the index of the master it
// replicates (-1 for a master).
func (c *RedisCluster) view(ctx context.Context) ([]int, []int, error) {
	var agreed string
	var masters, of []int
	for i, s := range c.nodes {
		if !s.Running() {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := redisSentinelDo(ictx, s.Addr(), "CLUSTER", "INFO")
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("testserver: redis cluster node %d: CLUSTER INFO: %w", i, err)
		}
		if info, _ := r.(string); !strings.Contains(info, "cluster_state:ok") {
			return nil, nil, fmt.Errorf("testserver: redis cluster node %d: cluster_state not ok", i)
		}
		ns, err := c.Nodes(ctx, i)
		if err != nil {
			return nil, nil, err
		}
		var ms []int
		rep := make([]int, len(c.nodes))
		var desc strings.Builder
		for _, n := range ns {
			j := c.index(n.ID)
			if j < 0 {
				return nil, nil, fmt.Errorf("testserver: redis cluster node %d knows an unknown node %s", i, n.ID)
			}
			// A node that is down (killed, not yet restarted) stays known
			// as failing; it must not serve slots.
			down := !c.nodes[j].Running() && n.Slots == 0
			if !down && (n.Has("fail") || n.Has("fail?") || n.Has("handshake")) {
				return nil, nil, fmt.Errorf("testserver: redis cluster node %d sees node %d as %s", i, j, strings.Join(n.Flags, ","))
			}
			rep[j] = -1
			if n.Has("master") && n.Slots > 0 {
				ms = append(ms, j)
			} else if n.Master != "" {
				rep[j] = c.index(n.Master)
			}
		}
		if len(ns) != len(c.nodes) || len(ms) != c.masters {
			return nil, nil, fmt.Errorf("testserver: redis cluster node %d knows %d nodes, %d masters with slots", i, len(ns), len(ms))
		}
		// Shard m is nodes m, masters+m, 2*masters+m...: replica
		// migration, the only way a node leaves its shard, is off.
		byShard := make([]int, c.masters)
		for m := range byShard {
			byShard[m] = -1
		}
		for _, j := range ms {
			if byShard[j%c.masters] >= 0 {
				return nil, nil, fmt.Errorf("testserver: redis cluster node %d sees two masters of shard %d", i, j%c.masters)
			}
			byShard[j%c.masters] = j
		}
		for m := range byShard {
			if byShard[m] < 0 {
				return nil, nil, fmt.Errorf("testserver: redis cluster node %d sees no master of shard %d", i, m)
			}
			if !c.nodes[byShard[m]].Running() {
				return nil, nil, fmt.Errorf("testserver: redis cluster node %d names master %d, not running", i, byShard[m])
			}
		}
		fmt.Fprint(&desc, byShard, rep)
		if agreed != "" && desc.String() != agreed {
			return nil, nil, fmt.Errorf("testserver: redis cluster nodes disagree: %s, %s", agreed, desc.String())
		}
		agreed, masters, of = desc.String(), byShard, rep
	}
	if masters == nil {
		return nil, nil, errors.New("testserver: redis cluster: no node running")
	}
	return masters, of, nil
}

// WaitHealthy waits until [RedisCluster.Masters] names a master for
// every shard, every running node agrees, and every running replica's
// link to its master is up (INFO replication), or ctx is done (then it
// returns the last problem seen). A replica whose link has just come up
// may still lack the last second's writes (after a full sync the master
// streams to it only once it sent its first REPLCONF ACK): a test that
// needs a write on the replica sends WAIT on the writing connection.
func (c *RedisCluster) WaitHealthy(ctx context.Context) error {
	for {
		err := c.healthy(ctx)
		if err == nil {
			return nil
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return fmt.Errorf("%w (%v)", err, serr)
		}
	}
}

func (c *RedisCluster) healthy(ctx context.Context) error {
	_, of, err := c.view(ctx)
	if err != nil {
		return err
	}
	for i, m := range of {
		if m < 0 || !c.nodes[i].Running() {
			continue
		}
		ictx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := redisSentinelDo(ictx, c.nodes[i].Addr(), "INFO", "replication")
		cancel()
		if info, _ := r.(string); err != nil || !strings.Contains(info, "master_link_status:up") {
			return fmt.Errorf("testserver: redis cluster replica %d of %d: link not up (%v)", i, m, err)
		}
	}
	return nil
}

// MasterOf returns the index of the node serving key's shard (see
// Masters): the shard whose range holds the key's slot (CLUSTER KEYSLOT,
// asked of a running node).
func (c *RedisCluster) MasterOf(ctx context.Context, key string) (int, error) {
	masters, err := c.Masters(ctx)
	if err != nil {
		return -1, err
	}
	for _, m := range masters {
		r, err := redisSentinelDo(ctx, c.nodes[m].Addr(), "CLUSTER", "KEYSLOT", key)
		if err != nil {
			return -1, fmt.Errorf("testserver: redis cluster: CLUSTER KEYSLOT: %w", err)
		}
		slot, _ := r.(int64)
		for m := range c.masters {
			if int(slot) <= (m+1)*redisClusterSlots/c.masters-1 {
				return masters[m], nil
			}
		}
	}
	return -1, errors.New("testserver: redis cluster: no master")
}

// Kill sends SIGKILL to node i (see [Server.Kill]).
func (c *RedisCluster) Kill(i int) error { return c.nodes[i].Kill() }

// Pause stops node i with SIGSTOP (its process group): it keeps its
// connections and answers nothing, neither clients nor the cluster bus,
// until Resume. Paused for more than [RedisClusterNodeTimeout], it is
// flagged as failing; a paused master is failed over.
func (c *RedisCluster) Pause(i int) error { return signalGroup(c.nodes[i], syscall.SIGSTOP) }

// Resume continues node i after Pause (SIGCONT).
func (c *RedisCluster) Resume(i int) error { return signalGroup(c.nodes[i], syscall.SIGCONT) }

// WaitFailover waits, after node i (a master) was killed, until another
// node serves its shard and the cluster is healthy again without node i
// ([RedisCluster.Masters] on the running nodes), and returns that node's
// index; or until ctx is done.
func (c *RedisCluster) WaitFailover(ctx context.Context, i int) (int, error) {
	for {
		masters, err := c.Masters(ctx)
		if err == nil {
			for m, j := range masters {
				if j == i {
					err = fmt.Errorf("testserver: redis cluster: node %d still serves shard %d", i, m)
					break
				}
			}
			if err == nil {
				return masters[i%c.masters], nil
			}
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return -1, fmt.Errorf("testserver: redis cluster: no failover from node %d: %v (%w)", i, err, serr)
		}
	}
}

// Restart starts node i again, after Kill or Shutdown, with its node ID
// and cluster configuration, and returns once the cluster is healthy
// with it back (as a replica whose link is up, or as a master), or ctx
// is done. A node that served slots when it was killed is restarted only
// once the cluster has failed its shard over (a master restarted empty
// before that would keep its slots, and its replica would copy the empty
// dataset), unless it has no replica. It starts with
// cluster-replica-no-failover yes, so that it cannot be promoted before
// its full sync, and is set back to no once its link is up.
func (c *RedisCluster) Restart(ctx context.Context, i int) error {
	if c.replicas > 0 {
		for {
			served, err := c.servesSlots(ctx, i)
			if err == nil && !served {
				break
			}
			if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
				return fmt.Errorf("testserver: restart redis cluster node %d: its shard not failed over: %v (%w)", i, err, serr)
			}
		}
	}
	c.lock()
	c.syncing[i] = true
	c.unlock()
	defer func() {
		c.lock()
		c.syncing[i] = false
		c.unlock()
	}()
	if err := c.nodes[i].Restart(ctx); err != nil {
		return fmt.Errorf("testserver: restart redis cluster node %d: %w", i, err)
	}
	var last error
	for {
		if last = c.healthy(ctx); last == nil {
			break
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return fmt.Errorf("testserver: restart redis cluster node %d: %v (%w)", i, last, serr)
		}
	}
	if _, err := redisSentinelDo(ctx, c.nodes[i].Addr(), "CONFIG", "SET", "cluster-replica-no-failover", "no"); err != nil {
		return fmt.Errorf("testserver: restart redis cluster node %d: cluster-replica-no-failover: %w", i, err)
	}
	return nil
}

// servesSlots reports whether a majority of the other running nodes see
// node i as a master serving slots.
func (c *RedisCluster) servesSlots(ctx context.Context, i int) (bool, error) {
	serves, answered := 0, 0
	for j, s := range c.nodes {
		if j == i || !s.Running() {
			continue
		}
		ns, err := c.Nodes(ctx, j)
		if err != nil {
			continue
		}
		answered++
		for _, n := range ns {
			if n.ID == c.ids[i] && n.Has("master") && n.Slots > 0 {
				serves++
			}
		}
	}
	if answered == 0 {
		return false, errors.New("no other node answered")
	}
	return serves*2 > answered, nil
}

// Stop stops every node and removes their directories. It is
// idempotent.
func (c *RedisCluster) Stop() error {
	var errs []error
	for _, s := range c.nodes {
		if pid := s.Pid(); pid != 0 {
			syscall.Kill(-pid, syscall.SIGCONT)
		}
		errs = append(errs, s.Stop())
	}
	return errors.Join(errs...)
}
