//go:build unix

package testserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RedisSentinelMaster is the master name the Sentinels of a
// [RedisSentinel] monitor (SENTINEL get-master-addr-by-name mymaster).
const RedisSentinelMaster = "mymaster"

// Sentinel settings of a [RedisSentinel]: a primary that does not answer
// for RedisSentinelDownAfter is subjectively down, and a failover starts
// once two of the three Sentinels agree (the quorum).
const (
	RedisSentinelDownAfter       = 1000 * time.Millisecond
	RedisSentinelFailoverTimeout = 2000 * time.Millisecond
	redisSentinelQuorum          = 2
	redisSentinelCount           = 3
)

// RedisSentinel is a Redis primary with replicas and three Sentinels
// monitoring it, all on loopback, for fault tests. Each data node and
// each Sentinel is a [Server] of kind [Redis] with its own port,
// temporary directory, process group and log. Data node 0 starts as the
// primary; the others replicate it. After a failover the primary is
// whichever node the Sentinels name ([RedisSentinel.Primary]). Data nodes
// keep nothing on disk unless Options.AppendOnly (then "appendfsync
// always"), so a node killed and restarted comes back empty and resyncs
// from the primary. Its methods are safe for concurrent use.
type RedisSentinel struct {
	data      []*Server
	sentinels []*Server
	net       *Net // nil: every process on loopback
	// replicaOf[i] is the address data node i replicates when it is next
	// launched ("" for a primary); written before each launch.
	replicaOf []string
	// syncing[i]: data node i is being restarted and starts with
	// replica-priority 0 (see Restart).
	syncing []bool
	mu      chan struct{} // a one-slot lock guarding replicaOf and syncing
}

// StartRedisSentinel starts a primary, replicas replicas and three
// Sentinels on free loopback ports, and returns once every replica's
// link to the primary is up and every Sentinel knows the primary, the
// replicas and the other two Sentinels. It blocks until then, until the
// start timeout (per process), or until ctx is done. Of opts only Args
// (for every data node), AppendOnly and StartTimeout are supported. A
// data node or Sentinel that exits during start (most likely a port
// taken first by another process) restarts the whole set, twice at most,
// on new ports. A missing redis-server returns an error wrapping
// [ErrMissing].
func StartRedisSentinel(ctx context.Context, replicas int, opts *Options) (*RedisSentinel, error) {
	return startRedisSentinel(ctx, replicas, opts, nil)
}

// StartRedisSentinelNet is StartRedisSentinel with every data node and
// Sentinel in a network namespace of its own on a new [Net] (data node i
// is member i of the Net, Sentinel j member replicas+1+j), so that
// [RedisSentinel.Partition] can cut a data node off from the Sentinels,
// the other data nodes and the clients. It fails when the Net cannot be
// made (not root, no iproute2). Stop removes the Net too.
func StartRedisSentinelNet(ctx context.Context, replicas int, opts *Options) (*RedisSentinel, error) {
	nw, err := NewNet(ctx, replicas+1+redisSentinelCount)
	if err != nil {
		return nil, fmt.Errorf("testserver: redis sentinel: %w", err)
	}
	c, err := startRedisSentinel(ctx, replicas, opts, nw)
	if err != nil {
		nw.Close()
		return nil, err
	}
	return c, nil
}

func startRedisSentinel(ctx context.Context, replicas int, opts *Options, nw *Net) (*RedisSentinel, error) {
	if replicas < 1 {
		return nil, fmt.Errorf("testserver: redis sentinel with %d replicas: want at least 1", replicas)
	}
	o, bin, err := groupSetup(ctx, Redis, "redis sentinel", opts, true)
	if err != nil {
		return nil, err
	}
	base := specs[Redis]
	c := &RedisSentinel{mu: make(chan struct{}, 1), replicaOf: make([]string, replicas+1), syncing: make([]bool, replicas+1), net: nw}
	dataSpec := &spec{nports: 1, binary: base.binary, stopSignal: syscall.SIGTERM, args: c.dataArgs, ready: readyRedis, url: base.url}
	sentSpec := &spec{nports: 1, binary: base.binary, stopSignal: syscall.SIGTERM, args: c.sentinelArgs, ready: readyRedis, url: base.url}
	mk := func(sp *spec, so Options) (*Server, error) {
		s := &Server{kind: Redis, spec: sp, opts: so, bin: bin}
		if nw != nil {
			s.host, s.wrap = nw.Member(len(c.data) + len(c.sentinels))
		}
		if s.dir, err = os.MkdirTemp("", "stampede-redis-*"); err != nil {
			return nil, err
		}
		if err = os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err == nil {
			err = s.prepare(ctx)
		}
		return s, err
	}
	so := Options{StartTimeout: o.StartTimeout}
	for i := 0; i <= replicas; i++ {
		s, err := mk(dataSpec, o)
		if s != nil {
			c.data = append(c.data, s)
		}
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: redis sentinel: %w", err)
		}
	}
	for range redisSentinelCount {
		s, err := mk(sentSpec, so)
		if s != nil {
			c.sentinels = append(c.sentinels, s)
		}
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: redis sentinel: %w", err)
		}
	}
	const attempts = 3
	for i := 1; ; i++ {
		all := c.all()
		ports := freePorts(len(all))
		for j, s := range all {
			s.ports = ports[j : j+1]
			s.setAddr()
		}
		for j := range c.replicaOf {
			c.replicaOf[j] = ""
			if j > 0 {
				c.replicaOf[j] = c.data[0].Addr()
			}
		}
		err = c.launch(ctx)
		if err == nil {
			break
		}
		var ee *exitedError
		if i == attempts || !errors.As(err, &ee) || ctx.Err() != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: start redis sentinel: %w", err)
		}
		for _, s := range all {
			if err := s.resetData(ctx); err != nil {
				c.Stop()
				return nil, fmt.Errorf("testserver: start redis sentinel: %w", err)
			}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	if err := c.settle(rctx); err != nil {
		c.Stop()
		return nil, fmt.Errorf("testserver: start redis sentinel: %w", err)
	}
	return c, nil
}

// RequireRedisSentinel starts a primary with replicas replicas and three
// Sentinels for the test t, as [RequireWith] does a server: stopped by
// t.Cleanup (after logging every process's log tail if the test failed);
// a missing redis-server skips the test, or fails it when
// STAMPEDE_TEST_REQUIRE=1. STAMPEDE_TEST_REDIS_URL is not used: the test
// controls the processes.
func RequireRedisSentinel(t testing.TB, replicas int, opts *Options) *RedisSentinel {
	t.Helper()
	c, err := StartRedisSentinel(context.Background(), replicas, opts)
	return requireRedisSentinel(t, c, err)
}

func requireRedisSentinel(t testing.TB, c *RedisSentinel, err error) *RedisSentinel {
	t.Helper()
	if err != nil {
		failStart(t, Redis, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.data {
				t.Logf("testserver: redis data node %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
			for i, s := range c.sentinels {
				t.Logf("testserver: redis sentinel %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("testserver: stop redis sentinel: %v", err)
		}
	})
	return c
}

// RequireRedisSentinelNet is RequireRedisSentinel with the processes on
// a [Net] (see [StartRedisSentinelNet]); a Net that cannot be made fails
// the test.
func RequireRedisSentinelNet(t testing.TB, replicas int, opts *Options) *RedisSentinel {
	t.Helper()
	c, err := StartRedisSentinelNet(context.Background(), replicas, opts)
	if err != nil && !errors.Is(err, ErrMissing) {
		t.Fatalf("testserver: %v", err)
	}
	return requireRedisSentinel(t, c, err)
}

func (c *RedisSentinel) all() []*Server {
	return append(append([]*Server(nil), c.data...), c.sentinels...)
}

func (c *RedisSentinel) lock()   { c.mu <- struct{}{} }
func (c *RedisSentinel) unlock() { <-c.mu }

// dataArgs are a data node's command line: redis.go's (no persistence
// unless AppendOnly), plus --replicaof for a replica, and a diskless full
// sync without delay (a restarted node resyncs at once).
func (c *RedisSentinel) dataArgs(s *Server) ([]string, error) {
	a := []string{
		"--bind", s.hostIP(), "--port", strconv.Itoa(s.ports[0]),
		"--dir", s.dataDir(), "--save", "", "--protected-mode", "no",
		"--daemonize", "no", "--logfile", "",
		"--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
	}
	if s.opts.AppendOnly {
		a = append(a, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		a = append(a, "--appendonly", "no")
	}
	c.lock()
	for i, m := range c.data {
		if m == s && c.replicaOf[i] != "" {
			host, port, _ := net.SplitHostPort(c.replicaOf[i])
			a = append(a, "--replicaof", host, port)
		}
		if m == s && c.syncing[i] {
			a = append(a, "--replica-priority", "0")
		}
	}
	c.unlock()
	return append(a, s.opts.Args...), nil
}

// sentinelArgs write a Sentinel's configuration file (Sentinel rewrites
// it as it learns: it must be a file of its own) and run redis-server on
// it in Sentinel mode.
func (c *RedisSentinel) sentinelArgs(s *Server) ([]string, error) {
	primary := c.data[0]
	conf := fmt.Sprintf(`port %d
bind %s
protected-mode no
daemonize no
logfile ""
dir %q
sentinel resolve-hostnames no
sentinel monitor %s %s %d %d
sentinel down-after-milliseconds %s %d
sentinel failover-timeout %s %d
sentinel parallel-syncs %s 1
`, s.ports[0], s.hostIP(), s.dataDir(), RedisSentinelMaster, primary.hostIP(), primary.ports[0], redisSentinelQuorum,
		RedisSentinelMaster, RedisSentinelDownAfter.Milliseconds(),
		RedisSentinelMaster, RedisSentinelFailoverTimeout.Milliseconds(), RedisSentinelMaster)
	path := filepath.Join(s.dir, "sentinel.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return []string{path, "--sentinel"}, nil
}

// launch spawns the data nodes, waits for them, then the Sentinels; on
// failure nothing is left running.
func (c *RedisSentinel) launch(ctx context.Context) error {
	started := []*Server{}
	fail := func(err error) error {
		for _, s := range started {
			s.Kill()
		}
		return err
	}
	for i, s := range c.all() {
		p, err := s.spawn()
		if err == nil {
			err = s.await(ctx, p)
		}
		if err != nil {
			return fail(fmt.Errorf("process %d: %w", i, err))
		}
		started = append(started, s)
	}
	return nil
}

// settle waits until every replica's link is up and every Sentinel knows
// the whole set.
func (c *RedisSentinel) settle(ctx context.Context) error {
	for i := 1; i < len(c.data); i++ {
		if err := c.waitLink(ctx, i); err != nil {
			return err
		}
	}
	for i, s := range c.sentinels {
		var last error
		for {
			last = c.sentinelKnows(ctx, s)
			if last == nil {
				break
			}
			if err := redisSentinelSleep(ctx, 50*time.Millisecond); err != nil {
				return fmt.Errorf("sentinel %d: %v (%w)", i, last, err)
			}
		}
	}
	return nil
}

// sentinelKnows checks that s knows the primary, every replica and the
// other Sentinels (SENTINEL MASTER).
func (c *RedisSentinel) sentinelKnows(ctx context.Context, s *Server) error {
	r, err := redisSentinelDo(ctx, s.Addr(), "SENTINEL", "MASTER", RedisSentinelMaster)
	if err != nil {
		return err
	}
	f, ok := r.([]any)
	if !ok {
		return fmt.Errorf("SENTINEL MASTER: %v", r)
	}
	m := map[string]string{}
	for i := 0; i+1 < len(f); i += 2 {
		k, _ := f[i].(string)
		v, _ := f[i+1].(string)
		m[k] = v
	}
	if m["num-slaves"] != strconv.Itoa(len(c.data)-1) || m["num-other-sentinels"] != strconv.Itoa(len(c.sentinels)-1) {
		return fmt.Errorf("sentinel knows %s replicas and %s other sentinels", m["num-slaves"], m["num-other-sentinels"])
	}
	return nil
}

// waitLink waits until data node i reports master_link_status:up.
func (c *RedisSentinel) waitLink(ctx context.Context, i int) error {
	var last error
	for {
		r, err := redisSentinelDo(ctx, c.data[i].Addr(), "INFO", "replication")
		if err == nil {
			s, _ := r.(string)
			if strings.Contains(s, "master_link_status:up") {
				return nil
			}
			err = fmt.Errorf("replica %d not linked yet", i)
		}
		last = err
		if err := redisSentinelSleep(ctx, 50*time.Millisecond); err != nil {
			return fmt.Errorf("data node %d: %v (%w)", i, last, err)
		}
	}
}

// Members returns the number of data nodes (the primary and the
// replicas).
func (c *RedisSentinel) Members() int { return len(c.data) }

// Member returns data node i.
func (c *RedisSentinel) Member(i int) *Server { return c.data[i] }

// Sentinel returns Sentinel i (of three).
func (c *RedisSentinel) Sentinel(i int) *Server { return c.sentinels[i] }

// SentinelAddrs returns the Sentinels' addresses, host:port, in order.
func (c *RedisSentinel) SentinelAddrs() []string { return addrsOf(c.sentinels) }

// URL returns a stampede URL for claim.Open naming every Sentinel,
// Sentinel first%3 first: redis://S1/0?master=mymaster&addrs=S2,S3.
func (c *RedisSentinel) URL(first int) string {
	rot := Rotated(c.SentinelAddrs(), first)
	q := url.Values{}
	q.Set("master", RedisSentinelMaster)
	q.Set("addrs", strings.Join(rot[1:], ","))
	u := url.URL{Scheme: "redis", Host: rot[0], Path: "/0", RawQuery: q.Encode()}
	return u.String()
}

// Primary asks every running Sentinel for the primary's address
// (SENTINEL get-master-addr-by-name, each within 1 s) and returns the
// data node's index when a majority of the Sentinels answered, all name
// the same node, that node is running and it answers ROLE as a master
// (within 1 s: a paused or partitioned node does not). Otherwise (a failover under way,
// a primary just killed or paused that the Sentinels still name) it
// returns an error; see [RedisSentinel.WaitPrimary].
func (c *RedisSentinel) Primary(ctx context.Context) (int, error) {
	addr, err := c.sentinelPrimary(ctx)
	if err != nil {
		return -1, err
	}
	for i, s := range c.data {
		if s.Addr() != addr {
			continue
		}
		if !s.Running() {
			return -1, fmt.Errorf("testserver: redis primary %d (%s) is not running", i, addr)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := redisSentinelDo(rctx, addr, "ROLE")
		cancel()
		if err != nil {
			return -1, fmt.Errorf("testserver: redis primary %d: ROLE: %w", i, err)
		}
		if f, ok := r.([]any); !ok || len(f) == 0 || f[0] != "master" {
			return -1, fmt.Errorf("testserver: redis primary %d: ROLE %v", i, r)
		}
		return i, nil
	}
	return -1, fmt.Errorf("testserver: the sentinels name %s, not a data node", addr)
}

// sentinelPrimary is the primary's address as a majority of the
// Sentinels name it, all that answered agreeing.
func (c *RedisSentinel) sentinelPrimary(ctx context.Context) (string, error) {
	var addr string
	answered := 0
	for _, s := range c.sentinels {
		if !s.Running() {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := redisSentinelDo(sctx, s.Addr(), "SENTINEL", "get-master-addr-by-name", RedisSentinelMaster)
		cancel()
		f, ok := r.([]any)
		if err != nil || !ok || len(f) != 2 {
			continue
		}
		host, _ := f[0].(string)
		port, _ := f[1].(string)
		a := net.JoinHostPort(host, port)
		if addr != "" && a != addr {
			return "", fmt.Errorf("testserver: redis sentinels disagree on the primary (%s, %s)", addr, a)
		}
		addr = a
		answered++
	}
	if answered <= len(c.sentinels)/2 {
		return "", fmt.Errorf("testserver: %d of %d redis sentinels answered", answered, len(c.sentinels))
	}
	return addr, nil
}

// WaitPrimary calls Primary every 50 ms until it names the primary or
// ctx is done (then it returns Primary's last error).
func (c *RedisSentinel) WaitPrimary(ctx context.Context) (int, error) {
	return pollIndex(ctx, c.Primary)
}

// Kill sends SIGKILL to data node i (see [Server.Kill]).
func (c *RedisSentinel) Kill(i int) error { return c.data[i].Kill() }

// Pause stops data node i with SIGSTOP (its process group): it keeps its
// connections and answers nothing until Resume.
func (c *RedisSentinel) Pause(i int) error { return signalGroup(c.data[i], syscall.SIGSTOP) }

// Resume continues data node i after Pause (SIGCONT).
func (c *RedisSentinel) Resume(i int) error { return signalGroup(c.data[i], syscall.SIGCONT) }

// Restart starts data node i again, after Kill or Shutdown, as a replica
// of the primary the Sentinels name, and returns once its replication
// link is up, or the Sentinels made it the primary (or ctx is done). It
// starts with replica-priority 0, so that the Sentinels cannot promote
// it, and sets 100 (the default) once its link is up: a node restarted
// empty (no persistence) and promoted before its full sync finished would
// make its empty dataset the truth, and the other nodes copy it (seen
// when a new primary missed the Sentinels' pings under load). While the Sentinels still name node i
// itself (a killed primary, before the failover), it first waits for the
// failover: a primary restarted empty before it would become the source
// of truth with no data, and its replicas would copy that.
func (c *RedisSentinel) Restart(ctx context.Context, i int) error {
	s := c.data[i]
	var primary string
	for {
		addr, err := c.sentinelPrimary(ctx)
		if err == nil && addr != s.Addr() {
			primary = addr
			break
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return fmt.Errorf("testserver: restart redis data node %d: no failover to another node: %v (%w)", i, err, serr)
		}
	}
	c.lock()
	c.replicaOf[i] = primary
	c.syncing[i] = true
	c.unlock()
	defer func() {
		c.lock()
		c.syncing[i] = false
		c.unlock()
	}()
	if err := s.Restart(ctx); err != nil {
		return fmt.Errorf("testserver: restart redis data node %d: %w", i, err)
	}
	// Up: a replica whose link is up or, if the Sentinels failed over to
	// it meanwhile (a primary that missed their pings for
	// RedisSentinelDownAfter, as under load), the primary they name.
	for {
		r, err := redisSentinelDo(ctx, s.Addr(), "INFO", "replication")
		info, _ := r.(string)
		if err == nil && strings.Contains(info, "master_link_status:up") {
			// Synced: it may be promoted from now on.
			if _, err := redisSentinelDo(ctx, s.Addr(), "CONFIG", "SET", "replica-priority", "100"); err != nil {
				return fmt.Errorf("testserver: restart redis data node %d: replica-priority: %w", i, err)
			}
			return nil
		}
		if err == nil && strings.Contains(info, "role:master") {
			if p, perr := c.Primary(ctx); perr == nil && p == i {
				return nil
			}
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return fmt.Errorf("testserver: restart redis data node %d: neither a linked replica nor the primary: %v (%w)", i, err, serr)
		}
	}
}

// WaitReplica waits until data node i is a replica (ROLE) whose
// replication link is up, or ctx is done: after Resume of a primary the
// Sentinels replaced, until they have turned it into a replica.
func (c *RedisSentinel) WaitReplica(ctx context.Context, i int) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		r, err := redisSentinelDo(rctx, c.data[i].Addr(), "ROLE")
		cancel()
		if f, ok := r.([]any); err == nil && ok && len(f) > 0 && f[0] == "slave" {
			return c.waitLink(ctx, i)
		}
		if serr := redisSentinelSleep(ctx, 50*time.Millisecond); serr != nil {
			return fmt.Errorf("testserver: redis data node %d not a replica: ROLE %v, %v (%w)", i, r, err, serr)
		}
	}
}

// Partition cuts data node i off from the Sentinels, the other data
// nodes and the clients, both ways, until Heal(i) (see [Net.Cut]); it
// fails on a set on loopback (StartRedisSentinel).
func (c *RedisSentinel) Partition(i int) error {
	if c.net == nil {
		return errors.New("testserver: redis sentinel on loopback: partitions need StartRedisSentinelNet")
	}
	return c.net.Cut(i)
}

// Heal undoes Partition(i).
func (c *RedisSentinel) Heal(i int) error {
	if c.net == nil {
		return errors.New("testserver: redis sentinel on loopback: partitions need StartRedisSentinelNet")
	}
	return c.net.Heal(i)
}

// Net returns the network the processes run on, nil for a set on
// loopback.
func (c *RedisSentinel) Net() *Net { return c.net }

// Stop stops every process (a paused one is continued first) and removes
// their directories, then the [Net] if there is one. It is idempotent.
func (c *RedisSentinel) Stop() error {
	var errs []error
	for _, s := range c.all() {
		if pid := s.Pid(); pid != 0 {
			syscall.Kill(-pid, syscall.SIGCONT)
		}
		errs = append(errs, s.Stop())
	}
	if c.net != nil {
		errs = append(errs, c.net.Close())
	}
	return errors.Join(errs...)
}

func redisSentinelSleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// redisSentinelDo sends one command to addr (a plain connection, no
// authentication) and returns its reply: a string (simple or bulk), an
// int64, nil, or []any; an error reply is an error.
func redisSentinelDo(ctx context.Context, addr string, args ...string) (any, error) {
	conn, err := dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	return redisSentinelRead(bufio.NewReader(conn))
}

func redisSentinelRead(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty RESP line")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = redisSentinelRead(r); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected RESP line %q", line)
}
