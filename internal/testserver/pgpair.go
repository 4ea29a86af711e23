//go:build unix

package testserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// PostgresPair is a PostgreSQL primary and one hot standby fed by
// streaming replication, on loopback, for failover tests. PostgreSQL
// does not fail over by itself (a manager such as Patroni does): the
// test kills the primary, promotes the standby (Promote) and rebuilds the
// old primary as a standby of the new one (Rebuild), as such a manager
// would.
//
// With sync, the primary acknowledges a commit only once the standby has
// flushed it (synchronous_standby_names '*' with the default
// synchronous_commit on), so a promoted standby, which replays what it
// flushed before it takes writes, has every acknowledged commit; a
// primary without its standby then waits in every commit until one is
// back. Without sync, replication is asynchronous (PostgreSQL's default).
type PostgresPair struct {
	mu      sync.Mutex
	nodes   [2]*Server
	primary int
	sync    bool
}

// pgPairArgs are both nodes' settings (the standby ignores what applies
// to primaries, and has them once promoted).
func pgPairArgs(sync bool) []string {
	a := []string{"-c", "wal_level=replica", "-c", "max_wal_senders=4", "-c", "wal_keep_size=256MB", "-c", "hot_standby=on"}
	if sync {
		a = append(a, "-c", "synchronous_standby_names=*", "-c", "synchronous_commit=on")
	}
	return a
}

// StartPostgresPair starts the primary (node 0) and makes node 1 its
// standby with pg_basebackup; it returns once the standby accepts
// (read-only) connections.
func StartPostgresPair(ctx context.Context, sync bool) (*PostgresPair, error) {
	p := &PostgresPair{sync: sync}
	// With sync the primary would wait for a standby in every commit:
	// nothing commits before the standby runs (the readiness check only
	// opens a session, pg_basebackup commits nothing).
	prim, err := Start(ctx, Postgres, &Options{Args: pgPairArgs(sync)})
	if err != nil {
		return nil, fmt.Errorf("testserver: postgres pair: primary: %w", err)
	}
	p.nodes[0] = prim
	// Either node, once rebuilt (Rebuild), is a copy of the primary.
	sp := *specs[Postgres]
	sp.prepare = p.basebackup
	prim.spec = &sp
	stby := &Server{kind: Postgres, spec: &sp, opts: Options{Args: pgPairArgs(sync), StartTimeout: prim.opts.StartTimeout}, bin: prim.bin}
	p.nodes[1] = stby
	if stby.dir, err = os.MkdirTemp("", "stampede-postgres-*"); err != nil {
		p.Stop()
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(stby.dir, ownerFile), []byte(selfTag()+"\n"), 0o644); err != nil {
		p.Stop()
		return nil, err
	}
	if err := stby.prepare(ctx); err != nil {
		p.Stop()
		return nil, fmt.Errorf("testserver: postgres pair: standby: %w", err)
	}
	stby.ports = freePorts(1)
	stby.setAddr()
	if err := stby.launch(ctx); err != nil {
		p.Stop()
		return nil, fmt.Errorf("testserver: postgres pair: standby: %w", err)
	}
	return p, nil
}

// RequirePostgresPair is StartPostgresPair for a test: PostgreSQL missing
// skips it (fails it under STAMPEDE_TEST_REQUIRE=1), any other error fails
// it, and the pair is stopped when the test ends (with both logs' tails if
// it failed).
func RequirePostgresPair(t testing.TB, sync bool) *PostgresPair {
	t.Helper()
	p, err := StartPostgresPair(context.Background(), sync)
	if err != nil {
		failStart(t, Postgres, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, s := range p.nodes {
				t.Logf("testserver: postgres node %d at %s, log tail:\n%s", i, s.Addr(), s.logTail(30))
			}
		}
		if err := p.Stop(); err != nil {
			t.Errorf("testserver: stop postgres pair: %v", err)
		}
	})
	return p
}

// basebackup fills s's data directory with a copy of the primary's, made
// by pg_basebackup, configured (-R) to stream from the primary as its
// standby.
func (p *PostgresPair) basebackup(ctx context.Context, s *Server) error {
	cred, err := pgDirs(s)
	if err != nil {
		return err
	}
	p.mu.Lock()
	from := p.nodes[p.primary]
	p.mu.Unlock()
	host, port, _ := strings.Cut(from.Addr(), ":")
	return pgTool(ctx, s, cred, "pg_basebackup", "-h", host, "-p", port, "-U", from.pgUser(),
		"-D", s.dataDir(), "-R", "-X", "stream", "-c", "fast")
}

// URL is a claim.Open URL naming both nodes, for a client that must reach
// whichever is the primary (target_session_attrs=read-write: pgx tries
// the hosts in turn and keeps the one that accepts writes).
func (p *PostgresPair) URL() string {
	u, err := url.Parse(p.nodes[0].URL())
	if err != nil {
		panic(err)
	}
	u.Host = p.nodes[0].Addr() + "," + p.nodes[1].Addr()
	q := u.Query()
	q.Set("target_session_attrs", "read-write")
	u.RawQuery = q.Encode()
	return u.String()
}

// Sync reports whether replication is synchronous.
func (p *PostgresPair) Sync() bool { return p.sync }

// Primary returns the primary's index (0 or 1).
func (p *PostgresPair) Primary() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.primary
}

// Node returns node i (0 or 1).
func (p *PostgresPair) Node(i int) *Server { return p.nodes[i] }

// Kill SIGKILLs node i.
func (p *PostgresPair) Kill(i int) error { return p.nodes[i].Kill() }

// Pause SIGSTOPs node i: the postmaster and every process it started
// (PostgreSQL's children call setsid: they are not in its process group,
// so signalGroup would stop the postmaster alone, and a standby's WAL
// receiver would go on streaming).
func (p *PostgresPair) Pause(i int) error { return p.nodes[i].signalFamily(syscall.SIGSTOP) }

// Resume SIGCONTs node i after Pause.
func (p *PostgresPair) Resume(i int) error { return p.nodes[i].signalFamily(syscall.SIGCONT) }

// signalFamily sends sig to s's process group and to every descendant of
// its leader.
func (s *Server) signalFamily(sig syscall.Signal) error {
	s.mu.Lock()
	pr := s.proc
	s.mu.Unlock()
	if pr == nil {
		return fmt.Errorf("testserver: signal %v: %s is not running", sig, s.Addr())
	}
	pr.signalAll(family(pr.pid), sig)
	return nil
}

// Promote makes the standby, node i, the primary (pg_ctl promote, waiting
// until it accepts writes).
func (p *PostgresPair) Promote(ctx context.Context, i int) error {
	s := p.nodes[i]
	cred, err := postgresCredential()
	if err != nil {
		return err
	}
	if err := pgTool(ctx, s, cred, "pg_ctl", "promote", "-w", "-t", "60", "-D", s.dataDir()); err != nil {
		return fmt.Errorf("testserver: promote postgres node %d: %w", i, err)
	}
	p.mu.Lock()
	p.primary = i
	p.mu.Unlock()
	return nil
}

// Rebuild makes node i, stopped or killed, a standby of the primary again:
// its data directory is replaced by a pg_basebackup of the primary, and
// it starts on its port. (A former primary cannot simply follow the new
// one: its history diverged where the standby was promoted.)
func (p *PostgresPair) Rebuild(ctx context.Context, i int) error {
	s := p.nodes[i]
	if s.Running() {
		return fmt.Errorf("testserver: rebuild postgres node %d: still running", i)
	}
	if err := s.resetData(ctx); err != nil {
		return fmt.Errorf("testserver: rebuild postgres node %d: %w", i, err)
	}
	if err := s.Restart(ctx); err != nil {
		return fmt.Errorf("testserver: rebuild postgres node %d: %w", i, err)
	}
	return nil
}

// Stop stops both nodes and removes their directories.
func (p *PostgresPair) Stop() error {
	var errs []error
	for _, s := range p.nodes {
		if s != nil {
			if err := s.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%v", errs)
	}
	return nil
}
