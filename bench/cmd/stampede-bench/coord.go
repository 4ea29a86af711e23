package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/coord"
	"github.com/stampede-go/stampede/internal/cli"
)

// Multi-process runs of package coord: an election whose leaders are
// SIGKILLed one after another (elect), and a semaphore under many
// processes checked by a counter outside stampede (sem).

func init() {
	app.Register(cli.Command{Name: "elect", Summary: "M processes campaign; the leader is SIGKILLed, again and again: one new leader each time, terms up, every observer sees every term", Run: electCmd})
	app.Register(cli.Command{Name: "sem", Summary: "a semaphore of N under M processes x G goroutines, checked by a file-lock counter outside stampede; throughput", Run: semCmd})
}

// coordChildEnv carries a child's configuration (JSON) for elect and sem.
const coordChildEnv = "STAMPEDE_COORD_CHILD"

type coordConfig struct {
	Mode    string        `json:"mode"` // elect or sem
	Backend string        `json:"backend"`
	Name    string        `json:"name"`
	Proc    int           `json:"proc"`
	TTL     time.Duration `json:"ttl_ns"`
	// sem
	N        int           `json:"n,omitempty"`
	Workers  int           `json:"workers,omitempty"`
	Duration time.Duration `json:"duration_ns,omitempty"`
	Hold     time.Duration `json:"hold_ns,omitempty"`
	Counter  string        `json:"counter,omitempty"` // the file of the independent counter
}

// coordEvent is one line from a child.
type coordEvent struct {
	Ev    string `json:"ev"` // ready, leader, observed, done, error
	Proc  int    `json:"proc"`
	Term  uint64 `json:"term,omitempty"`
	Rev   uint64 `json:"rev,omitempty"`
	ID    string `json:"id,omitempty"`
	Over  int    `json:"over,omitempty"`  // sem: times the counter exceeded N
	Peak  int    `json:"peak,omitempty"`  // sem: the counter's highest value seen
	Count int    `json:"count,omitempty"` // sem: permits taken
	Dups  int    `json:"dups,omitempty"`  // sem: a slot token seen twice
	Err   string `json:"err,omitempty"`
	// Slots: the tokens this process got, per slot ("slot:token").
	Slots []string `json:"slots,omitempty"`
}

// childCommand is how takeover, elect and sem start their child
// processes: this binary, re-executed with the subcommand (tests replace
// it with the test binary).
var childCommand = func(sub string) (string, []string, error) {
	exe, err := os.Executable()
	return exe, []string{sub}, err
}

// printJSON writes v indented: a command's -json report.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
}

func (c *child) kill() { _ = c.cmd.Process.Kill(); <-c.exited }

// startCoordChildren starts one child per config; their events go to ev.
func startCoordChildren(sub string, cfgs []coordConfig, ev chan<- coordEvent, stderr io.Writer) ([]*child, error) {
	stderr = &syncWriter{w: stderr} // the children's logs, from several goroutines
	var cs []*child
	for _, cfg := range cfgs {
		exe, args, err := childCommand(sub)
		if err != nil {
			return cs, err
		}
		conf, _ := json.Marshal(cfg)
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), coordChildEnv+"="+string(conf))
		cmd.Stderr = stderr
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return cs, err
		}
		c := &child{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
		cs = append(cs, c)
		proc := cfg.Proc
		go func() {
			sc := bufio.NewScanner(out)
			sc.Buffer(make([]byte, 64<<10), 256<<20) // sem's report lists every token
			for sc.Scan() {
				line := sc.Bytes()
				if len(line) == 0 || line[0] != '{' {
					continue
				}
				var e coordEvent
				if json.Unmarshal(line, &e) == nil {
					e.Proc = proc
					ev <- e
				}
			}
			_ = cmd.Wait()
			close(c.exited)
			ev <- coordEvent{Ev: "exit", Proc: proc}
		}()
	}
	return cs, nil
}

// ElectReport is the result of an elect run.
type ElectReport struct {
	Backend string `json:"backend"`
	Procs   int    `json:"procs"`
	Kills   int    `json:"kills"`
	TTLMs   int64  `json:"ttl_ms"`
	// Terms in the order their leaders were announced.
	Terms []uint64 `json:"terms"`
	// From each SIGKILL to the next leader's announcement, ms.
	FailoverMs []float64 `json:"failover_ms"`
	// Leaders announced while another was alive (must be 0).
	Overlaps int `json:"overlaps"`
	// Observers that missed a term or saw one out of order (must be 0).
	BadObservers int      `json:"bad_observers"`
	Problems     []string `json:"problems,omitempty"`
}

func electCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if conf := os.Getenv(coordChildEnv); conf != "" {
		return coordChild(ctx, conf, os.Stdin, stdout)
	}
	fs := app.Flags("elect", stderr)
	backend := fs.String("backend", "redis", "backend URL, or a kind (a test server started here)")
	procs := fs.Int("procs", 8, "processes campaigning")
	kills := fs.Int("kills", 3, "leaders SIGKILLed, one after another")
	ttl := fs.Duration("ttl", time.Second, "the leader's lease")
	asJSON := fs.Bool("json", false, "print one JSON report")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *procs < 2 || *kills < 1 || *kills >= *procs || *ttl <= 0 {
		fmt.Fprintln(stderr, "stampede-bench elect: need -procs >= 2, 1 <= -kills < -procs, -ttl > 0")
		return cli.ErrUsage
	}
	url, stop, err := resolveBackend(ctx, *backend, stderr)
	if err != nil {
		return err
	}
	defer stop()
	rep, err := runElect(ctx, url, *procs, *kills, *ttl, stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "elect (%s, %d processes, lease %s): %d leaders killed; terms %v; failover after SIGKILL (ms) %v; overlaps %d; observers with a missed or disordered term %d\n",
		rep.Backend, rep.Procs, time.Duration(rep.TTLMs)*time.Millisecond, rep.Kills, rep.Terms, rep.FailoverMs, rep.Overlaps, rep.BadObservers)
	if rep.Overlaps > 0 || rep.BadObservers > 0 {
		return fmt.Errorf("elect: %s", strings.Join(rep.Problems, "; "))
	}
	return nil
}

// resolveBackend turns a kind into a test server's URL.
func resolveBackend(ctx context.Context, backend string, stderr io.Writer) (string, func(), error) {
	if kind, ok := benchKinds[backend]; ok {
		u, stop, err := kindServer(ctx, kind, stderr)
		if err != nil {
			return "", nil, err
		}
		if stop == nil {
			stop = func() {}
		}
		return u, stop, nil
	}
	if strings.HasPrefix(backend, "mem") {
		return "", nil, errors.New("the in-process backend cannot be shared with other processes; use a server")
	}
	return backend, func() {}, nil
}

func runElect(ctx context.Context, url string, procs, kills int, ttl time.Duration, stderr io.Writer) (*ElectReport, error) {
	c, err := claim.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	rep := &ElectReport{Backend: c.Features().Name, Procs: procs, Kills: kills, TTLMs: ttl.Milliseconds()}
	c.Close()
	name := fmt.Sprintf("elect-%d", time.Now().UnixNano())
	cfgs := make([]coordConfig, procs)
	for i := range cfgs {
		cfgs[i] = coordConfig{Mode: "elect", Backend: url, Name: name, Proc: i, TTL: ttl}
	}
	ev := make(chan coordEvent, 1024)
	cs, err := startCoordChildren("elect", cfgs, ev, stderr)
	defer func() {
		for _, c := range cs {
			c.stdin.Close()
			c.kill()
		}
	}()
	if err != nil {
		return nil, err
	}
	observed := make([][]uint64, procs) // terms each process observed, in order
	alive := make([]bool, procs)
	for i := range alive {
		alive[i] = true
	}
	ready := 0
	leader := -1
	var killedAt time.Time
	timeout := time.After(time.Duration(kills+2)*(ttl+10*time.Second) + 30*time.Second)
	for {
		var e coordEvent
		select {
		case e = <-ev:
		case <-timeout:
			return nil, fmt.Errorf("elect: timed out (leader %d, terms %v)", leader, rep.Terms)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		switch e.Ev {
		case "error":
			return nil, fmt.Errorf("elect: process %d: %s", e.Proc, e.Err)
		case "ready":
			ready++
		case "observed":
			observed[e.Proc] = append(observed[e.Proc], e.Term)
		case "leader":
			if leader >= 0 && alive[leader] {
				rep.Overlaps++
				rep.Problems = append(rep.Problems, fmt.Sprintf("process %d leads (term %d) while process %d is alive and leading", e.Proc, e.Term, leader))
			}
			if n := len(rep.Terms); n > 0 && e.Term <= rep.Terms[n-1] {
				rep.Problems = append(rep.Problems, fmt.Sprintf("term %d after %d", e.Term, rep.Terms[n-1]))
				rep.Overlaps++
			}
			if !killedAt.IsZero() {
				rep.FailoverMs = append(rep.FailoverMs, float64(time.Since(killedAt).Microseconds())/1e3)
			}
			rep.Terms = append(rep.Terms, e.Term)
			leader = e.Proc
		}
		// Kill the leader once every observer is up and it is announced
		// (and observed by everyone still alive).
		if leader >= 0 && alive[leader] && ready == procs && everyoneSaw(observed, alive, rep.Terms) {
			if len(rep.Terms) > kills {
				break
			}
			cs[leader].kill()
			alive[leader] = false
			killedAt = time.Now()
		}
		if e.Ev == "exit" && alive[e.Proc] {
			return nil, fmt.Errorf("elect: process %d exited by itself", e.Proc)
		}
	}
	for i, obs := range observed {
		if !alive[i] {
			continue
		}
		if !containsInOrder(obs, rep.Terms) {
			rep.BadObservers++
			rep.Problems = append(rep.Problems, fmt.Sprintf("process %d observed %v, terms were %v", i, obs, rep.Terms))
		}
	}
	return rep, nil
}

// everyoneSaw: every live process observed the latest term.
func everyoneSaw(observed [][]uint64, alive []bool, terms []uint64) bool {
	last := terms[len(terms)-1]
	for i, obs := range observed {
		if alive[i] && (len(obs) == 0 || obs[len(obs)-1] != last) {
			return false
		}
	}
	return true
}

// containsInOrder: obs is exactly terms (each observer started before the
// first leader, so it sees them all, once, in order).
func containsInOrder(obs, terms []uint64) bool {
	if len(obs) != len(terms) {
		return false
	}
	for i := range obs {
		if obs[i] != terms[i] {
			return false
		}
	}
	return true
}

// coordChild runs one process of elect or sem.
func coordChild(ctx context.Context, conf string, stdin io.Reader, stdout io.Writer) error {
	var cfg coordConfig
	if err := json.Unmarshal([]byte(conf), &cfg); err != nil {
		return err
	}
	var mu sync.Mutex
	emit := func(e coordEvent) {
		b, _ := json.Marshal(e)
		mu.Lock()
		fmt.Fprintf(stdout, "%s\n", b)
		mu.Unlock()
	}
	fail := func(err error) error {
		emit(coordEvent{Ev: "error", Err: err.Error()})
		return err
	}
	c, err := claim.Open(ctx, cfg.Backend)
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // stdin's end (the parent gone) ends the child
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()
	if cfg.Mode == "sem" {
		return semChild(ctx, c, cfg, emit, fail)
	}
	e, err := coord.NewElection(c, cfg.Name, &coord.ElectionOptions{TTL: cfg.TTL})
	if err != nil {
		return fail(err)
	}
	obs, err := e.Observe(ctx)
	if err != nil {
		return fail(err)
	}
	go func() {
		for l := range obs {
			if !l.Resigned {
				emit(coordEvent{Ev: "observed", Term: l.Term, Rev: l.Rev, ID: l.ID})
			}
		}
	}()
	emit(coordEvent{Ev: "ready"})
	ld, err := e.Campaign(ctx, "p"+strconv.Itoa(cfg.Proc), nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fail(err)
	}
	emit(coordEvent{Ev: "leader", Term: ld.Term()})
	select {
	case <-ld.Lost():
		return fail(fmt.Errorf("leadership lost while alive: %v", context.Cause(ld.Context())))
	case <-ctx.Done():
		return nil
	}
}

// SemReport is the result of a sem run.
type SemReport struct {
	Backend  string  `json:"backend"`
	N        int     `json:"n"`
	Procs    int     `json:"procs"`
	Workers  int     `json:"workers_per_proc"`
	Seconds  float64 `json:"seconds"`
	HoldMs   float64 `json:"hold_ms"`
	Permits  int     `json:"permits"`
	PerSec   float64 `json:"permits_per_s"`
	Peak     int     `json:"peak_holders"`
	Over     int     `json:"over_n"`         // must be 0
	DupToken int     `json:"duplicate_tkns"` // must be 0
}

func semCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if conf := os.Getenv(coordChildEnv); conf != "" {
		return coordChild(ctx, conf, os.Stdin, stdout)
	}
	fs := app.Flags("sem", stderr)
	backend := fs.String("backend", "redis", "backend URL, or a kind (a test server started here)")
	n := fs.Int("n", 3, "the semaphore's count")
	procs := fs.Int("procs", 8, "processes")
	workers := fs.Int("workers", 50, "goroutines per process, each acquiring and releasing in a loop")
	dur := fs.Duration("duration", 10*time.Second, "how long the workers run")
	hold := fs.Duration("hold", time.Millisecond, "how long each holder holds")
	asJSON := fs.Bool("json", false, "print one JSON report")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	url, stop, err := resolveBackend(ctx, *backend, stderr)
	if err != nil {
		return err
	}
	defer stop()
	rep, err := runSem(ctx, url, *n, *procs, *workers, *dur, *hold, stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "sem (%s, N=%d, %d processes x %d goroutines, hold %s, %s): %d permits, %.0f/s; peak holders %d; over N %d; duplicate tokens %d\n",
		rep.Backend, rep.N, rep.Procs, rep.Workers, *hold, *dur, rep.Permits, rep.PerSec, rep.Peak, rep.Over, rep.DupToken)
	if rep.Over > 0 || rep.DupToken > 0 {
		return fmt.Errorf("sem: %d times over N, %d duplicate tokens", rep.Over, rep.DupToken)
	}
	return nil
}

func runSem(ctx context.Context, url string, n, procs, workers int, dur, hold time.Duration, stderr io.Writer) (*SemReport, error) {
	c, err := claim.Open(ctx, url)
	if err != nil {
		return nil, err
	}
	rep := &SemReport{Backend: c.Features().Name, N: n, Procs: procs, Workers: workers, Seconds: dur.Seconds(), HoldMs: float64(hold.Microseconds()) / 1e3}
	c.Close()
	dir, err := os.MkdirTemp("", "stampede-sem-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	counter := filepath.Join(dir, "counter")
	if err := os.WriteFile(counter, []byte("0"), 0o600); err != nil {
		return nil, err
	}
	name := fmt.Sprintf("sem-%d", time.Now().UnixNano())
	cfgs := make([]coordConfig, procs)
	for i := range cfgs {
		cfgs[i] = coordConfig{Mode: "sem", Backend: url, Name: name, Proc: i, TTL: 10 * time.Second, N: n, Workers: workers, Duration: dur, Hold: hold, Counter: counter}
	}
	ev := make(chan coordEvent, 1024)
	cs, err := startCoordChildren("sem", cfgs, ev, stderr)
	defer func() {
		for _, c := range cs {
			c.stdin.Close()
			c.kill()
		}
	}()
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	done := 0
	timeout := time.After(dur + 2*time.Minute)
	for done < procs {
		var e coordEvent
		select {
		case e = <-ev:
		case <-timeout:
			return nil, fmt.Errorf("sem: timed out with %d of %d processes done", done, procs)
		}
		switch e.Ev {
		case "error":
			return nil, fmt.Errorf("sem: process %d: %s", e.Proc, e.Err)
		case "exit":
			return nil, fmt.Errorf("sem: process %d exited before reporting", e.Proc)
		case "done":
			done++
			rep.Permits += e.Count
			rep.Over += e.Over
			rep.Peak = max(rep.Peak, e.Peak)
			rep.DupToken += e.Dups
			for _, s := range e.Slots {
				if seen[s] {
					rep.DupToken++
				}
				seen[s] = true
			}
		}
	}
	rep.PerSec = float64(rep.Permits) / dur.Seconds()
	return rep, nil
}

// fileCounter is the independent counter: a number in a file, changed
// under flock by every holder of every process.
type fileCounter struct{ path string }

func (f fileCounter) add(d int) (int, error) {
	fd, err := os.OpenFile(f.path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer fd.Close()
	if err := syscall.Flock(int(fd.Fd()), syscall.LOCK_EX); err != nil {
		return 0, err
	}
	defer syscall.Flock(int(fd.Fd()), syscall.LOCK_UN)
	b, err := io.ReadAll(fd)
	if err != nil {
		return 0, err
	}
	v, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, err
	}
	v += d
	if _, err := fd.WriteAt([]byte(fmt.Sprintf("%-12d", v)), 0); err != nil {
		return 0, err
	}
	return v, nil
}

func semChild(ctx context.Context, c *claim.Client, cfg coordConfig, emit func(coordEvent), fail func(error) error) error {
	s, err := coord.NewSemaphore(ctx, c, cfg.Name, cfg.N, &coord.SemaphoreOptions{TTL: cfg.TTL})
	if err != nil {
		return fail(err)
	}
	fc := fileCounter{cfg.Counter}
	var count, over, peak atomic.Int64
	var mu sync.Mutex
	var slots []string
	var firstErr error
	end := time.Now().Add(cfg.Duration)
	var wg sync.WaitGroup
	for range cfg.Workers {
		wg.Go(func() {
			for time.Now().Before(end) && ctx.Err() == nil {
				p, err := s.Acquire(ctx)
				if err != nil {
					mu.Lock()
					if firstErr == nil && ctx.Err() == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				v, err := fc.add(1)
				if err == nil {
					if v > cfg.N {
						over.Add(1)
					}
					for {
						pk := peak.Load()
						if int64(v) <= pk || peak.CompareAndSwap(pk, int64(v)) {
							break
						}
					}
				}
				time.Sleep(cfg.Hold)
				if _, err := fc.add(-1); err != nil {
					mu.Lock()
					firstErr = err
					mu.Unlock()
				}
				mu.Lock()
				slots = append(slots, fmt.Sprintf("%d:%d", p.Slot(), p.Token()))
				mu.Unlock()
				count.Add(1)
				_ = p.Release(ctx)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fail(firstErr)
	}
	emit(coordEvent{Ev: "done", Count: int(count.Load()), Over: int(over.Load()), Peak: int(peak.Load()), Slots: slots})
	<-ctx.Done() // the parent ends the child
	return nil
}
