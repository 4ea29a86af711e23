// Package testserver starts real backend servers (Redis, PostgreSQL,
// memcached, etcd, Consul, DynamoDB through dynalite, ZooKeeper) on free
// loopback ports, each with its own temporary data directory, for tests.
//
// Tests normally call [Require] (one server per test, stopped by t.Cleanup)
// or [Shared] (one server per kind per test binary). Both honour
// STAMPEDE_TEST_<KIND>_URL: when it is set, the server at that URL is used
// and nothing is started. When a server binary is not installed, the test is
// skipped with a hint to run scripts/install-backends, or fails when
// STAMPEDE_TEST_REQUIRE=1 (as in `make test` and CI).
//
// # Shared servers
//
// [Shared] starts at most one server per kind per test binary, on first use,
// and keeps it for the whole binary. A package that uses it stops them from
// TestMain:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		testserver.StopShared()
//		os.Exit(code)
//	}
//
// Without StopShared the processes still die with the test binary (see
// below) but their temporary directories are left behind. Tests sharing a
// server must use distinct keys (or key prefixes) and must not Kill, Stop or
// Restart it; crash tests use [Require] or [RequireWith] for a server of
// their own.
//
// # Processes
//
// Every server runs as a direct child of the test binary, in its own process
// group, with its output in a log file in its temporary directory (see
// [Server.LogPath]); the tail of that log is part of every start error, and
// [Require] logs it when the test failed. On Linux each server gets
// PR_SET_PDEATHSIG=SIGKILL, so it dies with the test binary even when the
// binary is killed. (The kernel ties that signal to the OS thread that
// started the child; Go only ends a thread when a goroutine exits while
// locked to it with runtime.LockOSThread, which these tests must not do.)
// [Server.Kill] and [Server.Stop] act on the whole process group and return
// only when no process of it is left. The package starts no goroutines:
// nothing of it shows up in goleak.
//
// etcd and Consul are built by `go tool` from the tools/etcd and
// tools/consul modules of the repository (found by walking up from the
// working directory); the binary path comes from `go tool -n` once per
// process, and the server is executed directly, so Pid is the server's own.
//
// Only Linux and other Unix systems are supported.
package testserver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kind names a backend server.
type Kind string

// The kinds of server this package starts.
const (
	Redis     Kind = "redis"
	Postgres  Kind = "postgres"
	Memcache  Kind = "memcache"
	Etcd      Kind = "etcd"
	Consul    Kind = "consul"
	Dynamo    Kind = "dynamo"
	ZooKeeper Kind = "zookeeper"
)

// Kinds lists every kind, in a fixed order.
var Kinds = []Kind{Redis, Postgres, Memcache, Etcd, Consul, Dynamo, ZooKeeper, NATS, MySQL}

// EnvVar returns the environment variable that points tests at an existing
// server of this kind: "STAMPEDE_TEST_<KIND>_URL", e.g.
// STAMPEDE_TEST_REDIS_URL.
func (k Kind) EnvVar() string {
	return "STAMPEDE_TEST_" + strings.ToUpper(string(k)) + "_URL"
}

// ErrMissing is wrapped by the errors of [Start] when a server binary (or
// something it needs, such as the postgres user) is not installed.
// scripts/install-backends installs everything.
var ErrMissing = errors.New("testserver: server not installed (run scripts/install-backends)")

// ErrExternal is returned by Kill, Shutdown and Restart of a server that
// this package did not start (one given by STAMPEDE_TEST_<KIND>_URL).
var ErrExternal = errors.New("testserver: external server (from STAMPEDE_TEST_*_URL) cannot be controlled")

// Options configures a server. A nil *Options and every zero field mean the
// defaults.
type Options struct {
	// Args are extra command-line arguments, appended after the ones this
	// package passes, so a repeated flag usually overrides ours (postgres
	// takes "-c", "name=value"; redis "--name", "value"). For ZooKeeper,
	// an argument of the form key=value is appended to zoo.cfg and one
	// starting with "-" goes to the JVM. dynalite does not accept a flag
	// twice.
	Args []string

	// AppendOnly (Redis) turns on the append-only file with
	// "appendfsync always", so data survives Kill and Restart. Without it
	// Redis keeps nothing on disk and a Restart comes back empty.
	AppendOnly bool

	// Password (Redis) sets requirepass; URL then carries it
	// (redis://:PASSWORD@127.0.0.1:PORT/0). With User, see User. For
	// Consul it turns ACLs on (default policy deny) with Password as the
	// initial management token, and URL carries it as token=.
	Password string

	// User, with Password, makes the server require that user's password
	// (URL carries both):
	//   - Redis: an ACL user with every permission; the default user is
	//     off, so nothing else can log in.
	//   - PostgreSQL: the superuser is User (default "postgres" when only
	//     Password is set), its password stored as SCRAM-SHA-256, and
	//     pg_hba.conf accepts TCP clients only by scram-sha-256 (hostssl
	//     only, with TLS); the readiness check uses the Unix socket.
	//   - etcd: users root and User (same password), User with read-write
	//     access to every key, and authentication enabled (User "root"
	//     alone when only Password is set).
	User string

	// TLS (Redis, PostgreSQL, etcd, memcached, Consul, ZooKeeper) makes
	// the server accept only TLS clients, with a certificate signed by a
	// CA made for this server (Server.TLS has the files, and URL names
	// them). Redis, etcd, memcached, Consul and ZooKeeper also require the
	// client certificate (mutual TLS); PostgreSQL only verifies it if one
	// is sent. ZooKeeper (Netty, secureClientPort on Addr) keeps a plain
	// port on another loopback port for its readiness checks.
	TLS bool

	// StartTimeout bounds the wait for readiness of each start attempt.
	// Default 60 s.
	StartTimeout time.Duration
}

// Server is one running (or stopped) server. Its methods are safe for
// concurrent use.
type Server struct {
	kind     Kind
	url      string
	addr     string
	external bool

	opts  Options
	spec  *spec
	bin   string
	dir   string // temporary directory: data/, server.log, configs
	ports []int  // ports[0] is the client port of Addr

	// host is the address it listens on ("": 127.0.0.1); wrap is a command
	// line its binary runs behind. A member of a [Net] has its address
	// there and [Net.Member]'s wrapper (ip netns exec NAME).
	host string
	wrap []string

	tls *TLSFiles // Options.TLS

	mu      sync.Mutex
	proc    *proc // nil when not running
	removed bool  // Stop removed dir
}

// Start starts a server of the given kind on free loopback ports, with a new
// temporary directory, and returns once it answers its protocol. It blocks
// until then, until the start timeout, or until ctx is done. A server whose
// binary is not installed returns an error wrapping [ErrMissing]. When the
// server exits during start (for instance because another process took one
// of its ports first) Start retries twice with new ports.
func Start(ctx context.Context, kind Kind, opts *Options) (*Server, error) {
	sp, ok := specs[kind]
	if !ok {
		return nil, fmt.Errorf("testserver: unknown kind %q", kind)
	}
	s := &Server{kind: kind, spec: sp}
	if opts != nil {
		s.opts = *opts
		s.opts.Args = append([]string(nil), opts.Args...)
	}
	if s.opts.StartTimeout <= 0 {
		s.opts.StartTimeout = 60 * time.Second
	}
	if err := checkOptions(kind, &s.opts); err != nil {
		return nil, fmt.Errorf("testserver: %s: %w", kind, err)
	}
	bin, err := sp.binary(ctx)
	if err != nil {
		return nil, fmt.Errorf("testserver: %s: %w", kind, err)
	}
	s.bin = bin
	sweepOnce.Do(sweep)
	dir, err := os.MkdirTemp("", "stampede-"+string(kind)+"-*")
	if err != nil {
		return nil, fmt.Errorf("testserver: %s: %w", kind, err)
	}
	s.dir = dir
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testserver: %s: %w", kind, err)
	}
	if s.opts.TLS {
		uid, gid := -1, -1
		if sp.asPostgres {
			if cred, err := postgresCredential(); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("testserver: %s: %w", kind, err)
			} else if cred != nil {
				uid, gid = int(cred.Uid), int(cred.Gid)
			}
		}
		if s.tls, err = makeTLS(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testserver: %s: TLS files: %w", kind, err)
		}
	}
	if err := s.prepare(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("testserver: %s: %w", kind, err)
	}
	const attempts = 3
	for i := 1; ; i++ {
		s.ports = freePorts(sp.nports)
		s.setAddr()
		err = s.launch(ctx)
		if err == nil && sp.setup != nil {
			if err = sp.setup(ctx, s); err != nil {
				s.Stop()
				return nil, fmt.Errorf("testserver: set up %s: %w", kind, err)
			}
		}
		if err == nil {
			return s, nil
		}
		var ee *exitedError
		if i == attempts || !errors.As(err, &ee) || ctx.Err() != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("testserver: start %s: %w", kind, err)
		}
		// Most likely a port was taken between picking and binding: new
		// ports, and a fresh data directory unless it is port-independent.
		if !sp.keepDataOnRetry {
			if err := s.resetData(ctx); err != nil {
				os.RemoveAll(dir)
				return nil, fmt.Errorf("testserver: start %s: %w", kind, err)
			}
		}
	}
}

func (s *Server) setAddr() {
	s.addr = net.JoinHostPort(cmp.Or(s.host, "127.0.0.1"), strconv.Itoa(s.ports[0]))
	s.url = s.spec.url(s)
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) prepare(ctx context.Context) error {
	if err := os.MkdirAll(s.dataDir(), 0o755); err != nil {
		return err
	}
	if s.spec.prepare != nil {
		return s.spec.prepare(ctx, s)
	}
	return nil
}

func (s *Server) resetData(ctx context.Context) error {
	if err := os.RemoveAll(s.dataDir()); err != nil {
		return err
	}
	return s.prepare(ctx)
}

// launch starts the process and waits for readiness; on failure the process
// is gone when it returns.
func (s *Server) launch(ctx context.Context) error {
	p, err := s.spawn()
	if err != nil {
		return err
	}
	return s.await(ctx, p)
}

// spawn starts the process, with its output appended to the log, and does
// not wait for it.
func (s *Server) spawn() (*proc, error) {
	args, err := s.spec.args(s)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(s.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(logf, "\n=== testserver: %s %s on %s\n", time.Now().Format(time.RFC3339Nano), s.kind, s.addr)
	bin := s.bin
	if len(s.wrap) > 0 {
		bin, args = s.wrap[0], append(append(append([]string(nil), s.wrap[1:]...), s.bin), args...)
	}
	p, err := spawn(bin, args, s.dir, s.spec.env, s.spec.asPostgres, logf)
	logf.Close()
	return p, err
}

// await waits for p, just spawned, to be ready and makes it the server's
// process; on failure p is gone when it returns.
func (s *Server) await(ctx context.Context, p *proc) error {
	rctx, cancel := context.WithTimeout(ctx, s.opts.StartTimeout)
	defer cancel()
	if err := s.waitReady(rctx, p); err != nil {
		p.kill()
		return fmt.Errorf("%w\n--- %s (tail):\n%s", err, s.LogPath(), s.logTail(40))
	}
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return nil
}

// exitedError reports a server that exited before it became ready.
type exitedError struct{ status string }

func (e *exitedError) Error() string { return "server exited during start: " + e.status }

func (s *Server) waitReady(ctx context.Context, p *proc) error {
	delay := 20 * time.Millisecond
	var last error
	for {
		if exited, status := p.exited(); exited {
			return &exitedError{status}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = s.spec.ready(cctx, s)
		cancel()
		if last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			if exited, status := p.exited(); exited {
				return &exitedError{status}
			}
			return fmt.Errorf("not ready after %v (last check: %v): %w", s.opts.StartTimeout, last, ctx.Err())
		case <-t.C:
		}
		if delay < 200*time.Millisecond {
			delay += delay / 2
		}
	}
}

// URL returns the stampede URL of the server, for claim.Open.
func (s *Server) URL() string { return s.url }

// Addr returns the server's client address, host:port.
func (s *Server) Addr() string { return s.addr }

// Kind returns the kind of the server.
func (s *Server) Kind() Kind { return s.kind }

// Dir returns the server's temporary directory (its data is in Dir()/data,
// its log in [Server.LogPath]); empty for an external server.
func (s *Server) Dir() string { return s.dir }

// LogPath returns the file the server's stdout and stderr go to; empty for
// an external server. It is removed by Stop.
func (s *Server) LogPath() string {
	if s.dir == "" {
		return ""
	}
	return filepath.Join(s.dir, "server.log")
}

// External reports whether the server came from STAMPEDE_TEST_<KIND>_URL
// rather than being started by this package.
func (s *Server) External() bool { return s.external }

// Pid returns the server process's pid, or 0 when it is not running (or
// external).
func (s *Server) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return 0
	}
	return s.proc.pid
}

// Running reports whether the server process is running.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return false
	}
	exited, _ := s.proc.exited()
	return !exited
}

// Stop stops the server gracefully (SIGKILL after 10 s), waits until no
// process of its group is left, and removes its temporary directory. It is
// idempotent, and a no-op for an external server.
func (s *Server) Stop() error {
	if s.external {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.stopLocked()
	if !s.removed {
		s.removed = true
		if rerr := os.RemoveAll(s.dir); rerr != nil && err == nil {
			err = rerr
		}
	}
	return err
}

// Shutdown stops the server gracefully like Stop but keeps its data
// directory, so Restart can start it again. It is a no-op when the server
// is not running.
func (s *Server) Shutdown() error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.proc == nil {
		return nil
	}
	p := s.proc
	s.proc = nil
	return p.stop(s.spec.stopSignal, 10*time.Second)
}

// Kill sends SIGKILL to the server's process group, as in a crash, and
// returns once no process of it is left. The data directory stays, for
// Restart. It fails when the server is not running.
func (s *Server) Kill() error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return fmt.Errorf("testserver: kill %s: not running", s.kind)
	}
	p := s.proc
	s.proc = nil
	return p.kill()
}

// Restart starts the server again, on the same ports and with the same data
// directory, after Kill or Shutdown, and waits for readiness like Start.
// What survives depends on the server: PostgreSQL, etcd, ZooKeeper and
// dynalite keep their data; Redis only with Options.AppendOnly; memcached
// and Consul (a -dev agent keeps its state in memory) come back empty.
func (s *Server) Restart(ctx context.Context) error {
	if s.external {
		return ErrExternal
	}
	s.mu.Lock()
	if s.proc != nil {
		if exited, _ := s.proc.exited(); exited {
			// It died on its own: clean up what is left of it.
			s.proc.kill()
			s.proc = nil
		}
	}
	running, removed := s.proc != nil, s.removed
	s.mu.Unlock()
	if running {
		return fmt.Errorf("testserver: restart %s: still running (Kill or Shutdown it first)", s.kind)
	}
	if removed {
		return fmt.Errorf("testserver: restart %s: stopped and removed", s.kind)
	}
	// The old process has released the port, but a listening socket can
	// take a moment to go; retry the bind a few times.
	var err error
	for i := 0; i < 5; i++ {
		if err = s.launch(ctx); err == nil {
			return nil
		}
		var ee *exitedError
		if !errors.As(err, &ee) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("testserver: restart %s: %w", s.kind, err)
}

// String describes the server without secrets.
func (s *Server) String() string {
	return fmt.Sprintf("testserver.Server{%s %s}", s.kind, s.addr)
}

func (s *Server) logTail(lines int) string {
	return tailFile(s.LogPath(), lines)
}

func tailFile(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// Ports handed out by this process are never handed out again, so parallel
// servers of one test binary cannot collide; collisions with other
// processes are handled by Start's retry.
var portMu sync.Mutex
var portsUsed = map[int]bool{}

func freePorts(n int) []int {
	portMu.Lock()
	defer portMu.Unlock()
	var ports []int
	var hold []net.Listener
	defer func() {
		for _, l := range hold {
			l.Close()
		}
	}()
	for len(ports) < n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic("testserver: no free loopback port: " + err.Error())
		}
		hold = append(hold, l)
		p := l.Addr().(*net.TCPAddr).Port
		if portsUsed[p] {
			continue
		}
		portsUsed[p] = true
		ports = append(ports, p)
	}
	return ports
}

// ownerFile in a server's directory names the process that started it, so
// that directories left by a test binary that was killed (and so could not
// run Stop) are removed by the next one.
const ownerFile = "owner"

var sweepOnce sync.Once

func sweep() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "stampede-*-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue // not ours, or being created
		}
		if !tagAlive(string(b)) {
			os.RemoveAll(d)
		}
	}
}
