//go:build unix

package testserver

import (
	"context"
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

// ConsulCluster is a Consul datacenter on one machine for fault tests: n
// servers (`consul agent -server -bootstrap-expect=n`, each with a data
// directory, so its raft log and KV survive Kill and Restart) and n client
// agents joined to them. Applications talk to Consul through an agent, and
// a client agent forwards every request to a server over RPC, failing
// over to another server when its server dies: so a test's clients are
// given client agents (see [ConsulCluster.URL]), and faults are injected
// into servers.
//
// Server i runs in member i's network namespace of a [Net] (on its address
// there), so that [ConsulCluster.Partition] can cut it off; the client
// agents run in this process's namespace, gossiping on the Net's bridge
// address and serving HTTP on 127.0.0.1. Every process is a [Server] of
// kind [Consul] with its own ports, temporary directory, process group
// and log.
//
// Servers run with raft timing at its fastest (performance {
// raft_multiplier = 1 }: 1 s heartbeat and election timeouts, a 500 ms
// leader lease) and autopilot's dead-server cleanup off (a killed server
// stays a voter: the cluster stays an n-voter cluster through the
// faults). No process leaves the cluster when stopped
// (leave_on_terminate = false). No DNS, gRPC, HTTPS or WAN gossip, no
// ACLs, no TLS. Its methods are safe for concurrent use.
type ConsulCluster struct {
	servers []*Server
	agents  []*Server // client agents
	net     *Net      // server i is member i
	bin     string    // the consul binary

	mu     sync.Mutex
	paused map[*Server]bool
}

// The ports of a cluster process, in Server.ports.
const (
	consulHTTP   = 0 // HTTP API (Addr)
	consulSerf   = 1 // serf LAN gossip
	consulServer = 2 // server RPC (servers only)
)

// StartConsulCluster creates a [Net] of n members, starts n Consul
// servers in it and n client agents outside, each with new free ports and
// a new temporary directory, and returns once every agent has joined and
// the servers agree on a leader. It blocks until then, until the start
// timeout (for each start attempt), or until ctx is done. Of opts only
// Args (for every server) and StartTimeout are supported. When a process
// exits during start (most likely a port taken first by another process),
// the whole cluster is started again, twice at most, on new ports with
// fresh data. A missing consul binary returns an error wrapping
// [ErrMissing], and so does a failure to create the Net (it needs Linux,
// root and iproute2's ip).
func StartConsulCluster(ctx context.Context, n int, opts *Options) (*ConsulCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("testserver: consul cluster of %d servers", n)
	}
	o, bin, err := groupSetup(ctx, Consul, "consul cluster", opts, false)
	if err != nil {
		return nil, err
	}
	base := specs[Consul]
	nw, err := NewNet(ctx, n)
	if err != nil {
		return nil, fmt.Errorf("testserver: consul cluster: %v: %w", err, ErrMissing)
	}
	c := &ConsulCluster{paused: map[*Server]bool{}, net: nw, bin: bin}
	serverSpec := &spec{
		nports:     3,
		binary:     base.binary,
		stopSignal: syscall.SIGTERM,
		args:       c.serverArgs,
		ready:      readyConsul,
		url:        base.url,
	}
	agentSpec := &spec{
		nports:     2,
		binary:     base.binary,
		stopSignal: syscall.SIGTERM,
		args:       c.agentArgs,
		ready:      readyConsul,
		url:        base.url,
	}
	agentOpts := o
	agentOpts.Args = nil
	_, wrap := nw.Member(0)
	for i := range 2 * n {
		// A server's binary is the namespace wrapper (ip netns exec NS),
		// its arguments start with the rest of the wrapper and consul.
		s := &Server{kind: Consul, spec: serverSpec, opts: o, bin: wrap[0]}
		if i >= n {
			s = &Server{kind: Consul, spec: agentSpec, opts: agentOpts, bin: bin}
			c.agents = append(c.agents, s)
		} else {
			c.servers = append(c.servers, s)
		}
		if s.dir, err = os.MkdirTemp("", "stampede-consul-*"); err == nil {
			if err = os.WriteFile(filepath.Join(s.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err == nil {
				err = s.prepare(ctx)
			}
		}
		if err != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: consul cluster: %w", err)
		}
	}
	const attempts = 3
	for i := 1; ; i++ {
		ports := freePorts(5 * n)
		for j, s := range c.servers {
			s.ports = ports[3*j : 3*j+3]
			s.setAddr()
			ip, _ := nw.Member(j)
			s.addr = net.JoinHostPort(ip, strconv.Itoa(s.ports[consulHTTP]))
			s.url = s.spec.url(s)
		}
		for j, s := range c.agents {
			s.ports = ports[3*n+2*j : 3*n+2*j+2]
			s.setAddr()
		}
		err = c.launch(ctx)
		if err == nil {
			break
		}
		var ee *exitedError
		if i == attempts || !errors.As(err, &ee) || ctx.Err() != nil {
			c.Stop()
			return nil, fmt.Errorf("testserver: start consul cluster: %w", err)
		}
		for _, s := range c.all() {
			if err := s.resetData(ctx); err != nil {
				c.Stop()
				return nil, fmt.Errorf("testserver: start consul cluster: %w", err)
			}
		}
	}
	wctx, cancel := context.WithTimeout(ctx, o.StartTimeout)
	defer cancel()
	if _, err := c.WaitLeader(wctx); err != nil {
		c.Stop()
		return nil, fmt.Errorf("testserver: start consul cluster: %w", err)
	}
	return c, nil
}

// RequireConsulCluster starts a cluster of n servers and n client agents
// for the test t, as [RequireWith] does a server: it is stopped by
// t.Cleanup (after logging each process's log tail if the test failed),
// and a missing consul skips the test, or fails it when
// STAMPEDE_TEST_REQUIRE=1. STAMPEDE_TEST_CONSUL_URL is not used: the test
// controls the servers.
func RequireConsulCluster(t testing.TB, n int) *ConsulCluster {
	t.Helper()
	c, err := StartConsulCluster(context.Background(), n, nil)
	if err != nil {
		failStart(t, Consul, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range c.servers {
				t.Logf("testserver: consul server %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
			for i, s := range c.agents {
				t.Logf("testserver: consul client agent %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(15))
			}
		}
		if err := c.Stop(); err != nil {
			t.Errorf("testserver: stop consul cluster: %v", err)
		}
	})
	return c
}

func (c *ConsulCluster) all() []*Server {
	return append(append([]*Server(nil), c.servers...), c.agents...)
}

// consulCommonArgs are the flags of every process of the cluster: its
// addresses (bind: gossip and RPC; client: HTTP) and ports, a retry-join
// of every server's serf address (every 200 ms: the default is 30 s).
func (c *ConsulCluster) consulCommonArgs(s *Server, node, bind, client string) []string {
	a := []string{
		"agent", "-node", node, "-data-dir", s.dataDir(),
		"-bind", bind, "-advertise", bind, "-client", client,
		"-http-port", strconv.Itoa(s.ports[consulHTTP]),
		"-serf-lan-port", strconv.Itoa(s.ports[consulSerf]),
		"-https-port", "-1", "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
		"-retry-interval", "200ms",
		"-hcl", "disable_update_check = true",
		// Stop (SIGTERM) without leaving the cluster: quicker, and a
		// server stays a voter, as after a crash.
		"-hcl", "leave_on_terminate = false",
		"-log-level", "info",
	}
	for i, m := range c.servers {
		if m != s {
			ip, _ := c.net.Member(i)
			a = append(a, "-retry-join", net.JoinHostPort(ip, strconv.Itoa(m.ports[consulSerf])))
		}
	}
	return a
}

// serverArgs are a server's command line, after the binary (ip): the
// rest of the namespace wrapper, consul, and its arguments; node s<index>,
// on member index's address.
func (c *ConsulCluster) serverArgs(s *Server) ([]string, error) {
	i := indexOf(c.servers, s)
	ip, wrap := c.net.Member(i)
	a := append(append(wrap[1:len(wrap):len(wrap)], c.bin), c.consulCommonArgs(s, "s"+strconv.Itoa(i), ip, ip)...)
	a = append(a,
		"-server", "-bootstrap-expect", strconv.Itoa(len(c.servers)),
		"-server-port", strconv.Itoa(s.ports[consulServer]),
		"-serf-wan-port", "-1",
		"-hcl", "performance { raft_multiplier = 1 }",
		"-hcl", "autopilot { cleanup_dead_servers = false }",
	)
	return append(a, s.opts.Args...), nil
}

// agentArgs are a client agent's command line: node c<index>.
func (c *ConsulCluster) agentArgs(s *Server) ([]string, error) {
	i := indexOf(c.agents, s)
	return c.consulCommonArgs(s, "c"+strconv.Itoa(i), c.net.HostIP(), "127.0.0.1"), nil
}

func indexOf(ss []*Server, s *Server) int {
	for i, m := range ss {
		if m == s {
			return i
		}
	}
	return -1
}

// launch spawns every process, then waits for each to be ready (none is
// before the servers have all joined, -bootstrap-expect, and elected a
// leader); on failure no process is left running.
func (c *ConsulCluster) launch(ctx context.Context) error {
	group := c.all()
	return launchGroup(ctx, group, func(i int) string { return c.name(group[i]) })
}

func (c *ConsulCluster) name(s *Server) string {
	if i := indexOf(c.servers, s); i >= 0 {
		return fmt.Sprintf("server %d", i)
	}
	return fmt.Sprintf("client agent %d", indexOf(c.agents, s))
}

// Members returns the number of servers.
func (c *ConsulCluster) Members() int { return len(c.servers) }

// Server returns server i (node s<i>).
func (c *ConsulCluster) Server(i int) *Server { return c.servers[i] }

// Agent returns client agent i (node c<i>).
func (c *ConsulCluster) Agent(i int) *Server { return c.agents[i] }

// URL returns a stampede URL for claim.Open naming client agent
// first mod n (consul://127.0.0.1:PORT): a Consul client talks to one
// agent, and the agent finds a server. Spreading a test's clients over
// URL(0), URL(1), ... spreads them over the agents; which server an
// agent forwards to is the agent's choice.
func (c *ConsulCluster) URL(first int) string {
	n := len(c.agents)
	return c.agents[((first%n)+n)%n].URL()
}

// ServerURL returns a stampede URL naming server i's own HTTP API, for a
// client that talks to that server directly (and so fails with it).
func (c *ConsulCluster) ServerURL(i int) string { return c.servers[i].URL() }

// Kill sends SIGKILL to server i (see [Server.Kill]); its data directory
// stays for Restart.
func (c *ConsulCluster) Kill(i int) error {
	s := c.servers[i]
	c.mu.Lock()
	delete(c.paused, s)
	c.mu.Unlock()
	if err := s.Kill(); err != nil {
		return fmt.Errorf("testserver: consul server %d: %w", i, err)
	}
	return nil
}

// Restart starts server i again on its ports and data directory, after
// Kill, and waits until it names a leader (it has rejoined).
func (c *ConsulCluster) Restart(ctx context.Context, i int) error {
	if err := c.servers[i].Restart(ctx); err != nil {
		return fmt.Errorf("testserver: consul server %d: %w", i, err)
	}
	return nil
}

// Pause sends SIGSTOP to server i's process group: it stops answering
// anything (gossip, raft, RPC, HTTP) with every connection left open, as
// in a long GC pause or a hung VM.
func (c *ConsulCluster) Pause(i int) error { return c.signal(i, syscall.SIGSTOP) }

// Resume sends SIGCONT to server i's process group, after Pause.
func (c *ConsulCluster) Resume(i int) error { return c.signal(i, syscall.SIGCONT) }

func (c *ConsulCluster) signal(i int, sig syscall.Signal) error {
	s := c.servers[i]
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := signalGroup(s, sig); err != nil {
		return fmt.Errorf("testserver: consul server %d: %w", i, err)
	}
	if sig == syscall.SIGSTOP {
		c.paused[s] = true
	} else {
		delete(c.paused, s)
	}
	return nil
}

// Paused reports whether server i was paused by Pause and not resumed.
func (c *ConsulCluster) Paused(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.paused[c.servers[i]]
}

// Partition cuts server i off from every other server and every client
// agent (and this process), both ways, until Heal(i): its link to the
// Net's bridge goes down (see [Net.Cut]).
func (c *ConsulCluster) Partition(i int) error {
	if err := c.net.Cut(i); err != nil {
		return fmt.Errorf("testserver: consul server %d: partition: %w", i, err)
	}
	return nil
}

// Heal undoes Partition(i).
func (c *ConsulCluster) Heal(i int) error {
	if err := c.net.Heal(i); err != nil {
		return fmt.Errorf("testserver: consul server %d: heal: %w", i, err)
	}
	return nil
}

// Partitioned reports whether server i is cut off by Partition.
func (c *ConsulCluster) Partitioned(i int) bool { return c.net.IsCut(i) }

// Leader asks every running server that is neither paused nor partitioned
// for the leader
// (GET /v1/status/leader, each within 2 s) and returns the leader's index
// when the servers that answered are a majority, all name the same leader,
// and that leader is running and not paused. Otherwise (an election under
// way, a leader just killed or paused that the others still name) it
// returns an error; see [ConsulCluster.WaitLeader]. (A partitioned server
// may still name itself.)
func (c *ConsulCluster) Leader(ctx context.Context) (int, error) {
	var leader string
	answered := 0
	for i, s := range c.servers {
		if !s.Running() || c.Paused(i) || c.Partitioned(i) {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		l, err := consulLeader(sctx, s)
		cancel()
		if err != nil {
			continue
		}
		answered++
		if l == "" {
			return -1, fmt.Errorf("testserver: consul server %d has no leader", i)
		}
		if leader != "" && l != leader {
			return -1, fmt.Errorf("testserver: consul servers disagree on the leader (%s, %s)", leader, l)
		}
		leader = l
	}
	if answered <= len(c.servers)/2 {
		return -1, fmt.Errorf("testserver: %d of %d consul servers answered", answered, len(c.servers))
	}
	for i, s := range c.servers {
		ip, _ := c.net.Member(i)
		if leader == net.JoinHostPort(ip, strconv.Itoa(s.ports[consulServer])) {
			if !s.Running() || c.Paused(i) || c.Partitioned(i) {
				return -1, fmt.Errorf("testserver: consul leader s%d is not running, paused or cut off", i)
			}
			return i, nil
		}
	}
	return -1, fmt.Errorf("testserver: consul leader %s is not a server of the cluster", leader)
}

// WaitLeader calls Leader every 50 ms until it names a leader or ctx is
// done (then it returns Leader's last error).
func (c *ConsulCluster) WaitLeader(ctx context.Context) (int, error) { return pollIndex(ctx, c.Leader) }

// Stop resumes paused servers, stops every process, removes their
// directories (see [Server.Stop]) and then the Net. It is idempotent.
func (c *ConsulCluster) Stop() error {
	c.mu.Lock()
	for s := range c.paused {
		if pid := s.Pid(); pid != 0 {
			syscall.Kill(-pid, syscall.SIGCONT)
		}
	}
	clear(c.paused)
	c.mu.Unlock()
	var errs []error
	for _, s := range c.all() {
		errs = append(errs, s.Stop())
	}
	if c.net != nil {
		errs = append(errs, c.net.Close())
	}
	return errors.Join(errs...)
}

// consulLeader returns the server RPC address that s names as leader
// ("" for none).
func consulLeader(ctx context.Context, s *Server) (string, error) {
	code, body, err := httpDo(ctx, s, "GET", "/v1/status/leader", nil, "")
	if err != nil {
		return "", err
	}
	if code != 200 {
		return "", fmt.Errorf("consul /v1/status/leader: %d %s", code, strings.TrimSpace(body))
	}
	l, err := strconv.Unquote(strings.TrimSpace(body))
	if err != nil {
		return "", fmt.Errorf("consul /v1/status/leader: %q: %v", body, err)
	}
	return l, nil
}
