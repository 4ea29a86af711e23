package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// The holder process: the test binary re-executed with childEnv set. It
// claims a key, prints its lease as one JSON line, renews it with
// Client.KeepAlive, and then obeys commands read from stdin, one per line:
//
//	commit   try to commit and release (honestly, and as a paused holder
//	         that ignores its local deadline would), wait for KeepAlive's
//	         loss signal, print the results as one JSON line
//	exit     stop renewing, close the client, exit 0
const (
	childEnv = "STAMPEDE_FAULTS_CHILD"
	urlEnv   = "STAMPEDE_FAULTS_URL"
	keyEnv   = "STAMPEDE_FAULTS_KEY"
	ttlEnv   = "STAMPEDE_FAULTS_TTL"
)

// staleValue is what a stale holder tries to commit.
const staleValue = "stale-holder"

type childMsg struct {
	Event string      `json:"event"` // "claimed", "result", "error"
	Error string      `json:"error,omitempty"`
	Lease claim.Lease `json:"lease"`
	// Results of "commit": "" for success, "lost" for ErrLost, else the error.
	Commit  string `json:"commit"`  // Commit with the keeper's lease (local deadline checked)
	Forged  string `json:"forged"`  // Commit with the deadline pushed an hour ahead: the server must refuse
	Release string `json:"release"` // Release with that forged lease
	// KeeperLost: KeepAlive reported the loss (Lost closed, Err wraps
	// ErrLost); LostAfterResume is when, relative to the command's arrival.
	KeeperLost      bool          `json:"keeper_lost"`
	KeeperErr       string        `json:"keeper_err"`
	LostAfterResume time.Duration `json:"lost_after_resume"`
}

func outcome(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, claim.ErrLost):
		return "lost"
	default:
		return err.Error()
	}
}

func childMain() int {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		_ = out.Encode(childMsg{Event: "error", Error: err.Error()})
		return 2
	}
	ttl, err := time.ParseDuration(os.Getenv(ttlEnv))
	if err != nil {
		return fail(err)
	}
	key := os.Getenv(keyEnv)
	cl, err := call(60*time.Second, func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, os.Getenv(urlEnv)) })
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	l, err := do(func(ctx context.Context) (claim.Lease, error) { return cl.TryClaim(ctx, key, ttl) })
	if err != nil {
		return fail(err)
	}
	// The test stops this process (SIGSTOP) and continues it (SIGCONT):
	// note when, to time KeepAlive's loss signal from the moment it could
	// run again.
	var contAt, lostAt atomic.Int64
	conts := make(chan os.Signal, 1)
	signal.Notify(conts, syscall.SIGCONT)
	defer signal.Stop(conts)
	go func() {
		for range conts {
			contAt.Store(time.Now().UnixNano())
		}
	}()
	k := cl.KeepAlive(context.Background(), l, &claim.KeepAliveOptions{
		OnLost: func(error) { lostAt.Store(time.Now().UnixNano()) },
	})
	defer k.Stop()
	if err := out.Encode(childMsg{Event: "claimed", Lease: l}); err != nil {
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "commit":
			r := childMsg{Event: "result"}
			cur := k.Lease()
			r.Commit = outcome(do0(func(ctx context.Context) error {
				return cl.Commit(ctx, cur, []byte(staleValue), 0)
			}))
			forged := cur
			forged.Deadline = time.Now().Add(time.Hour)
			r.Forged = outcome(definitive(20*time.Second, func(ctx context.Context) error {
				return cl.Commit(ctx, forged, []byte(staleValue), 0)
			}))
			r.Release = outcome(definitive(20*time.Second, func(ctx context.Context) error { return cl.Release(ctx, forged) }))
			select {
			case <-k.Lost():
			case <-time.After(10 * time.Second):
			}
			if err := k.Err(); err != nil {
				r.KeeperErr = err.Error()
				r.KeeperLost = errors.Is(err, claim.ErrLost)
				for i := 0; lostAt.Load() == 0 && i < 100; i++ {
					time.Sleep(10 * time.Millisecond) // OnLost runs just after Lost is closed
				}
				if c := contAt.Load(); c != 0 {
					r.LostAfterResume = time.Duration(lostAt.Load() - c)
				}
			}
			if err := out.Encode(r); err != nil {
				return 2
			}
		case "exit":
			return 0
		}
	}
	return 0
}

// child is a holder process seen from the test.
type child struct {
	*proc[childMsg]
	t     testing.TB
	lease claim.Lease
}

// proc is a re-execution of the test binary (-test.run=^$, so TestMain
// runs only what env selects) that reads commands on stdin and writes
// JSON messages of type M on stdout: the holder and the herd worker.
type proc[M any] struct {
	cmd    *exec.Cmd
	stdin  *os.File
	msgs   chan M
	stderr *syncBuffer
	done   chan struct{} // closed when stdout reached EOF
}

// startProc starts a process of the test binary with env added, its
// messages queued in a channel of buffer; what names it in failures. The
// caller registers its cleanup (killing it, closing stdin, waiting for
// done).
func startProc[M any](t testing.TB, what string, buffer int, env ...string) *proc[M] {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	dieWithParent(cmd)
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc[M]{cmd: cmd, stdin: inW, msgs: make(chan M, buffer), stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s process: %v", what, err)
	}
	inR.Close()
	outW.Close()
	go func() {
		defer close(p.done)
		defer outR.Close()
		dec := json.NewDecoder(outR)
		for {
			var m M
			if err := dec.Decode(&m); err != nil {
				return
			}
			p.msgs <- m
		}
	}()
	return p
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startHolder starts a holder process for key and returns once it holds
// the lease. On every exit path of the test (t.Cleanup) the process is
// continued (in case it was stopped), killed and reaped.
func startHolder(t testing.TB, rawURL, key string, ttl time.Duration) *child {
	t.Helper()
	c := &child{t: t, proc: startProc[childMsg](t, "holder", 4,
		childEnv+"=holder", urlEnv+"="+rawURL, keyEnv+"="+key, ttlEnv+"="+ttl.String())}
	cmd, inW := c.cmd, c.stdin
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		inW.Close()
		<-c.done
		if t.Failed() {
			t.Logf("holder process stderr:\n%s", c.stderr.String())
		}
	})
	m := c.next(90 * time.Second)
	if m.Event != "claimed" {
		t.Fatalf("holder process: %s %s", m.Event, m.Error)
	}
	c.lease = m.Lease
	return c
}

// next returns the process's next message, failing the test after d.
func (c *child) next(d time.Duration) childMsg {
	c.t.Helper()
	select {
	case m := <-c.msgs:
		return m
	case <-c.done:
		select {
		case m := <-c.msgs:
			return m
		default:
		}
		c.t.Fatalf("holder process ended without answering; stderr:\n%s", c.stderr.String())
	case <-time.After(d):
		c.t.Fatalf("holder process did not answer within %s", d)
	}
	return childMsg{}
}

func (c *child) send(cmd string) {
	c.t.Helper()
	if _, err := fmt.Fprintln(c.stdin, cmd); err != nil {
		c.t.Fatalf("holder process: send %q: %v", cmd, err)
	}
}

func (c *child) signal(sig syscall.Signal) {
	c.t.Helper()
	if err := c.cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("holder process: %v: %v", sig, err)
	}
}

// exit asks the process to exit and checks it exits cleanly (a race
// report in the child makes it exit non-zero).
func (c *child) exit() {
	c.t.Helper()
	c.send("exit")
	errc := make(chan error, 1)
	go func() { errc <- c.cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			c.t.Errorf("holder process exit: %v; stderr:\n%s", err, c.stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-errc
		c.t.Errorf("holder process did not exit; stderr:\n%s", c.stderr.String())
	}
}
