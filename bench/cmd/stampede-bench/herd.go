package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stampede-go/stampede/internal/cli"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/countdriver"
)

func init() {
	app.Register(cli.Command{Name: "herd", Summary: "a real multi-process stampede: M processes x N callers, counted", Run: herdCmd})
}

func herdCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if conf := os.Getenv(herdWorkerEnv); conf != "" {
		return herdChild(ctx, conf, os.Stdin, stdout, stderr)
	}
	fs := app.Flags("herd", stderr)
	var cfg herdConfig
	fs.StringVar(&cfg.Backend, "backend", "", "backend URL (redis://..., etcd://..., mem://NAME), or a kind (redis, postgres, memcache, etcd, consul, dynamo, zookeeper, nats, mysql: "+
		"$STAMPEDE_TEST_<KIND>_URL, else a test server started here); default: the embedded in-process backend (processes simulated)")
	fs.IntVar(&cfg.Procs, "procs", 8, "processes (each its own OS process, backend client and L1)")
	fs.IntVar(&cfg.Callers, "callers", 1000, "concurrent callers per process, released at once")
	fs.IntVar(&cfg.Keys, "keys", 1, "distinct keys per round")
	fs.Float64Var(&cfg.Zipf, "zipf", 0, "draw each caller's key from a Zipf distribution of this exponent (> 1); 0: caller j of process i asks key (i+j) mod keys")
	fs.IntVar(&cfg.Rounds, "rounds", 1, "rounds, each a new herd on new keys")
	fs.DurationVar(&cfg.Load, "load", 200*time.Millisecond, "the loader's latency (a slow upsert)")
	fs.DurationVar(&cfg.Lease, "lease", 0, "flight's lease TTL (default flight's 5s; 1s with -kill-holder)")
	fs.BoolVar(&cfg.KillHolder, "kill-holder", false, "kill the first process whose loader starts, mid-load; the others take over after its lease")
	fs.IntVar(&cfg.Batch, "batch", 0, "each caller asks this many distinct keys of -keys at once, with one GetMany (keys drawn per process and caller); 0: one key with a Get")
	fs.BoolVar(&cfg.Loop, "loop", false, "with -batch: each caller asks its keys with a loop of Gets, one after another, instead of a GetMany (the comparison)")
	fs.BoolVar(&cfg.Sim, "sim", false, "simulate the processes inside this one (always so for mem://)")
	fs.DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "bound on the whole run")
	fs.BoolVar(&cfg.JSON, "json", false, "print one JSON report instead of text")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: stampede-bench herd [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Starts -procs processes (this binary, re-executed), each with its own backend")
		fmt.Fprintln(stderr, "client and its own L1, starts -callers callers in each, releases all of them")
		fmt.Fprintln(stderr, "at once, and has every caller do a flight Get. The loader counts its calls.")
		fmt.Fprintln(stderr, "Prints loader calls per key, requests per tier, backend round trips per")
		fmt.Fprintln(stderr, "process (counted), latency, takeovers and errors. On the in-process backend")
		fmt.Fprintln(stderr, "(no -backend, or mem://) the processes are simulated inside this one.")
		fmt.Fprintln(stderr, "With -batch N each caller asks N keys at once (one GetMany, or with -loop")
		fmt.Fprintln(stderr, "a loop of N Gets), and round trips and latency are reported per batch.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if cfg.Procs < 1 || cfg.Callers < 1 || cfg.Keys < 1 || cfg.Rounds < 1 || cfg.Load < 0 || cfg.Lease < 0 ||
		(cfg.Zipf != 0 && cfg.Zipf <= 1) {
		fmt.Fprintln(stderr, "stampede-bench herd: need -procs, -callers, -keys, -rounds >= 1, -load, -lease >= 0, and -zipf 0 or > 1")
		return cli.ErrUsage
	}
	if cfg.Batch < 0 || (cfg.Batch > 0 && cfg.Keys < cfg.Batch) || (cfg.Loop && cfg.Batch == 0) {
		fmt.Fprintln(stderr, "stampede-bench herd: need -batch >= 0, -keys >= -batch (a batch is distinct keys), and -batch with -loop")
		return cli.ErrUsage
	}
	if cfg.Batch > 0 && (cfg.Zipf != 0 || cfg.KillHolder) {
		fmt.Fprintln(stderr, "stampede-bench herd: -batch draws its keys uniformly and does not combine with -zipf or -kill-holder")
		return cli.ErrUsage
	}
	if cfg.KillHolder && cfg.Procs < 2 {
		fmt.Fprintln(stderr, "stampede-bench herd: -kill-holder needs -procs >= 2 (someone must take over)")
		return cli.ErrUsage
	}
	if kind, ok := benchKinds[cfg.Backend]; ok {
		url, stop, err := kindServer(ctx, kind, stderr)
		if err != nil {
			return fmt.Errorf("herd: %w", err)
		}
		if stop != nil {
			defer stop()
		}
		cfg.Backend = url
	} else if cfg.Backend == "mem" {
		cfg.Backend = "mem://"
	}
	rep, err := runHerd(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	rep.print(stdout)
	if rep.Errors > 0 {
		return fmt.Errorf("herd: %d callers got an error (e.g. %s)", rep.Errors, rep.ErrorEg)
	}
	return nil
}

// herdWorkerCommand is the command line that starts a worker process
// (tests point it at the test binary).
var herdWorkerCommand = func() (string, []string, error) {
	exe, err := os.Executable()
	return exe, []string{"herd"}, err
}

// worker is the parent's handle on one worker, real or simulated.
type worker interface {
	release() error // the round's start barrier
	kill() error    // SIGKILL, or a simulated crash
	finish()        // no more rounds
	wait() error    // until it has exited
}

// runHerd runs the herd and gathers the report.
func runHerd(ctx context.Context, cfg herdConfig, stderr io.Writer) (*herdSummary, error) {
	if cfg.Backend == "" {
		cfg.Backend = "mem://"
	}
	if strings.HasPrefix(cfg.Backend, "mem:") {
		cfg.Sim = true
	}
	if cfg.Lease == 0 && cfg.KillHolder {
		cfg.Lease = time.Second
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	cfg.Name = "herd-" + hex.EncodeToString(rnd[:4])
	cfg.Seed = binary.LittleEndian.Uint64(rnd[:])
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	stderr = &syncWriter{w: stderr} // workers' logs, from several goroutines
	events := make(chan herdEvent, 1024)
	send := func(ev herdEvent) {
		ev.at = time.Now()
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}
	// Open one client first: a bad URL fails here, once, rather than in
	// every worker, and a backend that creates its table or schema on
	// first use does so before the workers race to.
	probe, err := claim.Open(ctx, cfg.Backend)
	if err != nil {
		return nil, fmt.Errorf("herd: %w", err)
	}
	if _, err := probe.Get(ctx, cfg.Name+":probe"); err != nil && !errors.Is(err, claim.ErrNotFound) {
		probe.Close()
		return nil, fmt.Errorf("herd: %s: %w", claim.RedactURL(cfg.Backend), err)
	}
	probe.Close()
	var ws []worker
	if cfg.Sim {
		ws, err = startSimulated(ctx, cfg, send, stderr)
	} else {
		ws, err = startProcesses(ctx, cfg, send, stderr)
	}
	stopAll := func() {
		// Keep reading events (exits, late loader calls) while the
		// workers stop, so none blocks on a full channel.
		stop := make(chan struct{})
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			for {
				select {
				case <-events:
				case <-stop:
					return
				}
			}
		}()
		for _, w := range ws {
			w.finish()
		}
		for _, w := range ws {
			w.wait()
		}
		close(stop)
		<-drained
	}
	if err != nil {
		for _, w := range ws {
			w.kill()
		}
		stopAll()
		return nil, err
	}
	h := newHerdSummary(cfg)
	err = h.collect(ctx, cfg, ws, events)
	if err != nil {
		for _, w := range ws {
			w.kill()
		}
	}
	stopAll()
	if err != nil {
		return nil, err
	}
	h.finish(cfg)
	return h, nil
}

// collect runs the rounds: barrier, release, gather.
func (h *herdSummary) collect(ctx context.Context, cfg herdConfig, ws []worker, events <-chan herdEvent) error {
	alive := make([]bool, len(ws))
	for i := range alive {
		alive[i] = true
	}
	killed := -1
	next := func() (herdEvent, error) {
		select {
		case ev := <-events:
			switch ev.Ev {
			case "error":
				return ev, fmt.Errorf("herd: process %d: %s", ev.Proc, ev.Err)
			case "exit":
				if ev.Proc != killed {
					return ev, fmt.Errorf("herd: process %d exited early: %s", ev.Proc, ev.Err)
				}
			}
			return ev, nil
		case <-ctx.Done():
			return herdEvent{}, fmt.Errorf("herd: %w (raise -timeout?)", ctx.Err())
		}
	}
	// ready[r][p]: process p's callers of round r wait at the barrier (a
	// fast process may say so while the others still finish round r-1).
	ready := make([][]bool, cfg.Rounds+2)
	for r := range ready {
		ready[r] = make([]bool, len(ws))
	}
	markReady := func(ev herdEvent) {
		if ev.Ev == "ready" && ev.Round >= 1 && ev.Round <= cfg.Rounds && ev.Proc >= 0 && ev.Proc < len(ws) {
			ready[ev.Round][ev.Proc] = true
		}
	}
	for round := 1; round <= cfg.Rounds; round++ {
		for {
			waiting := 0
			for i := range ws {
				if alive[i] && !ready[round][i] {
					waiting++
				}
			}
			if waiting == 0 {
				break
			}
			ev, err := next()
			if err != nil {
				return err
			}
			markReady(ev)
		}
		t0 := time.Now()
		for i, w := range ws {
			if alive[i] {
				if err := w.release(); err != nil {
					return fmt.Errorf("herd: releasing process %d: %w", i, err)
				}
			}
		}
		done := make([]bool, len(ws))
		pending := func() bool {
			for i := range ws {
				if alive[i] && !done[i] {
					return true
				}
			}
			return false
		}
		for pending() {
			ev, err := next()
			if err != nil {
				return err
			}
			switch ev.Ev {
			case "ready":
				markReady(ev)
			case "load":
				h.load(ev)
				if cfg.KillHolder && killed < 0 {
					killed = ev.Proc
					alive[ev.Proc] = false
					if err := ws[ev.Proc].kill(); err != nil {
						return fmt.Errorf("herd: killing process %d: %w", ev.Proc, err)
					}
					h.Kill = &killReport{Proc: ev.Proc, Key: ev.Key, AfterMS: cli.Millis(time.Since(t0))}
					h.killedAt = time.Now()
				}
			case "round":
				if ev.Round == round && alive[ev.Proc] && !done[ev.Proc] {
					done[ev.Proc] = true
					h.add(ev.Proc, ev.Report)
				}
			}
		}
		h.RoundMS = append(h.RoundMS, cli.Millis(time.Since(t0)))
	}
	return nil
}

// --- simulated processes -------------------------------------------------

type simWorker struct {
	gos    chan struct{}
	dead   chan struct{}
	once   sync.Once
	client *claim.Client // the counted client the worker uses
	cancel context.CancelFunc
	done   chan error
}

func (w *simWorker) release() error {
	w.gos <- struct{}{}
	return nil
}

// kill simulates a crash: the backend client goes first (its leases are
// not released: they expire by their TTL; its commit fails), then the
// worker's callers are cancelled.
func (w *simWorker) kill() error {
	w.once.Do(func() {
		close(w.dead)
		w.client.Close()
		w.cancel()
	})
	return nil
}

func (w *simWorker) finish() { w.once.Do(func() { close(w.dead) }) }

func (w *simWorker) wait() error { return <-w.done }

func startSimulated(ctx context.Context, cfg herdConfig, send func(herdEvent), stderr io.Writer) ([]worker, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var ws []worker
	for i := range cfg.Procs {
		raw, err := claim.Open(ctx, cfg.Backend)
		if err != nil {
			return ws, err
		}
		wctx, cancel := context.WithCancel(ctx)
		b, calls := count(raw)
		w := &simWorker{gos: make(chan struct{}, cfg.Rounds), dead: make(chan struct{}), client: b, cancel: cancel, done: make(chan error, 1)}
		barrier := func(int) error {
			select {
			case <-w.gos:
				return nil
			case <-w.dead:
				return errors.New("stopped")
			}
		}
		wc := workerConfig{herdConfig: cfg, Proc: i}
		go func() {
			defer cancel()
			err := runWorker(wctx, wc, b, calls, send, barrier, log.With("proc", i))
			if err != nil {
				select {
				case <-w.dead: // killed or finished: expected
					err = nil
				default:
					send(herdEvent{Ev: "error", Proc: i, Err: err.Error()})
				}
			}
			w.done <- err
		}()
		ws = append(ws, w)
	}
	return ws, nil
}

// --- OS processes ---------------------------------------------------------

type procWorker struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{}
	once   sync.Once
}

func (w *procWorker) release() error {
	_, err := io.WriteString(w.stdin, "go\n")
	return err
}

func (w *procWorker) kill() error {
	err := w.cmd.Process.Kill()
	<-w.exited
	return err
}

func (w *procWorker) finish() { w.once.Do(func() { w.stdin.Close() }) }

func (w *procWorker) wait() error {
	select {
	case <-w.exited:
	case <-time.After(30 * time.Second):
		w.cmd.Process.Kill()
		<-w.exited
	}
	return nil
}

func startProcesses(ctx context.Context, cfg herdConfig, send func(herdEvent), stderr io.Writer) ([]worker, error) {
	exe, args, err := herdWorkerCommand()
	if err != nil {
		return nil, fmt.Errorf("herd: finding this binary to re-execute: %w", err)
	}
	var ws []worker
	for i := range cfg.Procs {
		conf, _ := json.Marshal(workerConfig{herdConfig: cfg, Proc: i})
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), herdWorkerEnv+"="+string(conf))
		cmd.Stderr = stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return ws, err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return ws, err
		}
		if err := cmd.Start(); err != nil {
			return ws, fmt.Errorf("herd: starting process %d: %w", i, err)
		}
		w := &procWorker{cmd: cmd, stdin: stdin, exited: make(chan struct{})}
		ws = append(ws, w)
		go func() {
			sc := bufio.NewScanner(stdout)
			sc.Buffer(make([]byte, 64<<10), 256<<20) // a round report carries every latency
			for sc.Scan() {
				line := sc.Bytes()
				if len(line) == 0 || line[0] != '{' {
					continue // not ours (a test binary's PASS, say)
				}
				var ev herdEvent
				if err := json.Unmarshal(line, &ev); err != nil {
					send(herdEvent{Ev: "error", Proc: i, Err: "unreadable report: " + err.Error()})
					continue
				}
				ev.Proc = i
				send(ev)
			}
			werr := cmd.Wait()
			msg := "exit status 0"
			if werr != nil {
				msg = werr.Error()
			}
			close(w.exited)
			send(herdEvent{Ev: "exit", Proc: i, Err: msg})
		}()
	}
	return ws, nil
}

// syncWriter serialises writes to w.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// --- the report ------------------------------------------------------------

type herdSummary struct {
	Backend    string  `json:"backend"`
	Mode       string  `json:"mode"` // "processes" or "simulated"
	Procs      int     `json:"procs"`
	Callers    int     `json:"callers_per_proc"`
	Keys       int     `json:"keys"`
	Zipf       float64 `json:"zipf,omitempty"`
	Rounds     int     `json:"rounds"`
	LoadMS     float64 `json:"load_ms"`
	LeaseMS    float64 `json:"lease_ms,omitempty"`
	KillHolder bool    `json:"kill_holder,omitempty"`
	Batch      int     `json:"batch,omitempty"`
	Loop       bool    `json:"loop,omitempty"`

	// Requests counts the callers' asks (Gets; batches in batch mode, a
	// loop of Gets being one), KeyRequests the keys of the batches.
	// BySource counts keys answered, by tier. Errors counts the asks with
	// an error (in batch mode: a batch with at least one failed or wrong
	// key), KeyErrors the keys.
	Requests    int            `json:"requests"`
	KeyRequests int            `json:"key_requests,omitempty"`
	BySource    map[string]int `json:"by_source"`
	Errors      int            `json:"errors"`
	KeyErrors   int            `json:"key_errors,omitempty"`
	ErrorEg     string         `json:"error_example,omitempty"`

	// KeysAsked is the number of distinct keys callers asked for, all
	// rounds together; LoaderCalls counts every loader call (reported by
	// the loader as it starts, so a killed holder's count too).
	KeysAsked   int `json:"keys_asked"`
	LoaderCalls int `json:"loader_calls"`
	// BatchLoaderCalls counts GetMany's BatchFunc calls (each loads one
	// key or more), in batch mode without -loop.
	BatchLoaderCalls uint64 `json:"batch_loader_calls,omitempty"`
	// LoadsPerKey: how many keys were loaded 0, 1, 2... times.
	LoadsPerKey map[int]int `json:"loads_per_key"`
	Commits     uint64      `json:"commits"`
	LostCommits uint64      `json:"lost_commits"`
	Waits       uint64      `json:"waits"`
	Takeovers   uint64      `json:"takeovers"`
	FailOpen    uint64      `json:"fail_open"`

	// Per-process round trips (all rounds) and round trips per key.
	PerProc []procTotals `json:"per_proc"`
	// Calls sums every process's round trips by method.
	Calls    map[string]int64 `json:"calls"`
	RTPerKey stat3            `json:"round_trips_per_proc_per_key"`
	// RTPerBatch, in batch mode: each process's round trips over the
	// batches it asked (its callers x rounds).
	RTPerBatch *stat3 `json:"round_trips_per_proc_per_batch,omitempty"`
	// Latencies: of a Get, or of a whole batch in batch mode.
	P50MS     float64     `json:"p50_ms"`
	P99MS     float64     `json:"p99_ms"`
	MaxMS     float64     `json:"max_ms"`
	RoundMS   []float64   `json:"round_ms"`
	Kill      *killReport `json:"kill,omitempty"`
	ElapsedMS float64     `json:"elapsed_ms"`

	loads    map[string][]time.Time
	lats     []int64
	killedAt time.Time
	calls    countdriver.Counts
	started  time.Time
}

type procTotals struct {
	Proc     int              `json:"proc"`
	Requests int              `json:"requests"`
	BySource map[string]int   `json:"by_source"`
	Keys     int              `json:"keys"`
	Calls    map[string]int64 `json:"calls"`
	Total    int64            `json:"round_trips"`
	PerKey   float64          `json:"round_trips_per_key"`
	PerBatch float64          `json:"round_trips_per_batch,omitempty"`
	Loads    uint64           `json:"loads"`
	Errors   int              `json:"errors"`
	calls    countdriver.Counts
}

type stat3 struct {
	Min float64 `json:"min"`
	Avg float64 `json:"avg"`
	Max float64 `json:"max"`
}

type killReport struct {
	Proc    int     `json:"proc"`
	Key     string  `json:"key"`
	AfterMS float64 `json:"killed_after_ms"` // from the release of the herd
	// TakeoverMS: from the kill to the takeover's loader call.
	TakeoverMS float64 `json:"takeover_load_after_ms"`
}

func newHerdSummary(cfg herdConfig) *herdSummary {
	mode := "processes"
	if cfg.Sim {
		mode = "simulated"
	}
	backend := claim.RedactURL(cfg.Backend)
	if strings.HasPrefix(cfg.Backend, "mem:") {
		backend = cfg.Backend + " (in-process)"
	}
	h := &herdSummary{
		Backend: backend, Mode: mode, Procs: cfg.Procs, Callers: cfg.Callers, Keys: cfg.Keys,
		Zipf: cfg.Zipf, Rounds: cfg.Rounds, LoadMS: cli.Millis(cfg.Load), LeaseMS: cli.Millis(cfg.Lease), KillHolder: cfg.KillHolder,
		Batch: cfg.Batch, Loop: cfg.Loop,
		BySource: map[string]int{}, LoadsPerKey: map[int]int{}, loads: map[string][]time.Time{}, started: time.Now(),
	}
	for i := range cfg.Procs {
		h.PerProc = append(h.PerProc, procTotals{Proc: i, BySource: map[string]int{}})
	}
	return h
}

func (h *herdSummary) load(ev herdEvent) {
	h.LoaderCalls++
	h.loads[ev.Key] = append(h.loads[ev.Key], ev.at)
	if h.Kill != nil && h.Kill.TakeoverMS == 0 && ev.Key == h.Kill.Key {
		h.Kill.TakeoverMS = cli.Millis(ev.at.Sub(h.killedAt))
	}
}

func (h *herdSummary) add(proc int, r *procRound) {
	if r == nil {
		return
	}
	p := &h.PerProc[proc]
	p.Requests += r.Requests
	p.Keys += r.Keys
	p.calls = p.calls.Plus(r.Calls)
	p.Loads += r.Loads
	p.Errors += r.Errors
	for s, n := range r.BySource {
		p.BySource[s] += n
		h.BySource[s] += n
	}
	h.Requests += r.Requests
	h.KeyRequests += r.KeyRequests
	h.Errors += r.Errors
	h.KeyErrors += r.KeyErrors
	if h.ErrorEg == "" {
		h.ErrorEg = r.ErrorEg
	}
	h.Commits += r.Commits
	h.LostCommits += r.LostCommits
	h.Waits += r.Waits
	h.Takeovers += r.Takeovers
	h.FailOpen += r.FailOpen
	h.lats = append(h.lats, r.LatUS...)
}

func (h *herdSummary) finish(cfg herdConfig) {
	h.ElapsedMS = cli.Millis(time.Since(h.started))
	asked := map[string]bool{}
	for round := 1; round <= cfg.Rounds; round++ {
		for p := range cfg.Procs {
			for _, ks := range herdAsks(cfg, p, round) {
				for _, k := range ks {
					asked[herdKey(round, k)] = true
				}
			}
		}
	}
	h.KeysAsked = len(asked)
	for k := range asked {
		h.LoadsPerKey[len(h.loads[k])]++
	}
	var perKey, perBatch []float64
	for i := range h.PerProc {
		p := &h.PerProc[i]
		p.Calls = p.calls.ByName()
		p.Total = p.calls.Total()
		h.calls = h.calls.Plus(p.calls)
		if p.Keys == 0 {
			continue // killed before reporting
		}
		p.PerKey = float64(p.Total) / float64(p.Keys)
		perKey = append(perKey, p.PerKey)
		if cfg.Batch > 0 {
			p.PerBatch = float64(p.Total) / float64(p.Requests)
			perBatch = append(perBatch, p.PerBatch)
		}
		if cfg.Batch > 0 && !cfg.Loop {
			h.BatchLoaderCalls += p.Loads
		}
	}
	h.RTPerKey = stats3(perKey)
	if cfg.Batch > 0 {
		s := stats3(perBatch)
		h.RTPerBatch = &s
	}
	h.Calls = h.calls.ByName()
	slices.Sort(h.lats)
	if l := len(h.lats); l > 0 {
		h.P50MS = float64(h.lats[l/2]) / 1000
		h.P99MS = float64(h.lats[l*99/100]) / 1000
		h.MaxMS = float64(h.lats[l-1]) / 1000
	}
}

// stats3 returns the minimum, mean and maximum of vs (zeros if empty).
func stats3(vs []float64) stat3 {
	if len(vs) == 0 {
		return stat3{}
	}
	s := stat3{Min: vs[0], Max: vs[0]}
	var sum float64
	for _, v := range vs {
		s.Min, s.Max = min(s.Min, v), max(s.Max, v)
		sum += v
	}
	s.Avg = sum / float64(len(vs))
	return s
}

func (h *herdSummary) print(w io.Writer) {
	fmt.Fprintf(w, "stampede-bench herd: %s, %d %s x %d callers, %d key(s)", h.Backend, h.Procs,
		map[string]string{"processes": "OS processes", "simulated": "simulated processes"}[h.Mode], h.Callers, h.Keys)
	if h.Zipf > 0 {
		fmt.Fprintf(w, " (zipf s=%g)", h.Zipf)
	}
	if h.Batch > 0 {
		how := "one GetMany"
		if h.Loop {
			how = fmt.Sprintf("a loop of %d Gets", h.Batch)
		}
		fmt.Fprintf(w, ", batches of %d keys (%s each)", h.Batch, how)
	}
	fmt.Fprintf(w, ", %d round(s), loader %s", h.Rounds, cli.FormatDuration(time.Duration(h.LoadMS*float64(time.Millisecond))))
	if h.KillHolder {
		fmt.Fprintf(w, ", -kill-holder (lease %s)", cli.FormatDuration(time.Duration(h.LeaseMS*float64(time.Millisecond))))
	}
	fmt.Fprintln(w)
	if h.Batch > 0 {
		fmt.Fprintf(w, "  batches       %d (%d keys), errors %d (%d keys)\n", h.Requests, h.KeyRequests, h.Errors, h.KeyErrors)
	} else {
		fmt.Fprintf(w, "  requests      %d, errors %d\n", h.Requests, h.Errors)
	}
	var parts []string
	for _, s := range []flight.Source{flight.SourceL1, flight.SourceL2, flight.SourceLoaded, flight.SourceRemote, flight.SourceStale, flight.SourceFallback} {
		if k := h.BySource[s.String()]; k > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, k))
		}
	}
	fmt.Fprintf(w, "  answered by   %s\n", strings.Join(parts, ", "))
	var lpk []string
	for _, n := range sortedKeys(h.LoadsPerKey) {
		lpk = append(lpk, fmt.Sprintf("%d key(s) loaded %dx", h.LoadsPerKey[n], n))
	}
	fmt.Fprintf(w, "  loader calls  %d for %d key(s) asked: %s", h.LoaderCalls, h.KeysAsked, strings.Join(lpk, ", "))
	if h.BatchLoaderCalls > 0 {
		fmt.Fprintf(w, "; in %d batch loader calls", h.BatchLoaderCalls)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  flights       commits %d, lost commits %d, waits %d, takeovers %d, fail-open %d\n",
		h.Commits, h.LostCommits, h.Waits, h.Takeovers, h.FailOpen)
	if b := h.RTPerBatch; b != nil {
		fmt.Fprintf(w, "  round trips   per process per batch: min %.2f, avg %.2f, max %.2f\n", b.Min, b.Avg, b.Max)
		fmt.Fprintf(w, "                per process per key: min %.2f, avg %.2f, max %.2f  (all: %s)\n",
			h.RTPerKey.Min, h.RTPerKey.Avg, h.RTPerKey.Max, fmtCalls(h.calls))
		fmt.Fprintf(w, "  latency       per batch: p50 %s, p99 %s, max %s\n", fmtMS(h.P50MS), fmtMS(h.P99MS), fmtMS(h.MaxMS))
	} else {
		fmt.Fprintf(w, "  round trips   per process per key: min %.2f, avg %.2f, max %.2f  (all: %s)\n",
			h.RTPerKey.Min, h.RTPerKey.Avg, h.RTPerKey.Max, fmtCalls(h.calls))
		fmt.Fprintf(w, "  latency       p50 %s, p99 %s, max %s\n", fmtMS(h.P50MS), fmtMS(h.P99MS), fmtMS(h.MaxMS))
	}
	if h.Kill != nil {
		fmt.Fprintf(w, "  kill-holder   process %d killed %s after the release, loading %q; takeover load %s after the kill\n",
			h.Kill.Proc, fmtMS(h.Kill.AfterMS), h.Kill.Key, fmtMS(h.Kill.TakeoverMS))
	}
	var rms []string
	for _, r := range h.RoundMS {
		rms = append(rms, fmtMS(r))
	}
	fmt.Fprintf(w, "  rounds        %s\n", strings.Join(rms, ", "))
	fmt.Fprintln(w)
	asks, perBatch := "requests", ""
	if h.Batch > 0 {
		asks, perBatch = " batches", "  per batch"
	}
	fmt.Fprintf(w, "  proc  %s  answered by                       keys  loads  round trips  per key%s  by method\n", asks, perBatch)
	for _, p := range h.PerProc {
		if p.Requests == 0 && p.Keys == 0 {
			fmt.Fprintf(w, "  %4d  (killed: no report)\n", p.Proc)
			continue
		}
		var src []string
		for _, s := range []flight.Source{flight.SourceL1, flight.SourceL2, flight.SourceLoaded, flight.SourceRemote} {
			if k := p.BySource[s.String()]; k > 0 {
				src = append(src, fmt.Sprintf("%s %d", s, k))
			}
		}
		pb := ""
		if h.Batch > 0 {
			pb = fmt.Sprintf("  %9.2f", p.PerBatch)
		}
		fmt.Fprintf(w, "  %4d  %8d  %-32s  %4d  %5d  %11d  %7.2f%s  %s\n", p.Proc, p.Requests, strings.Join(src, ", "),
			p.Keys, p.Loads, p.Total, p.PerKey, pb, fmtCalls(p.calls))
	}
}

func fmtCalls(c countdriver.Counts) string {
	var parts []string
	for i, n := range c {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", countdriver.Method(i), n))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func fmtMS(v float64) string { return cli.FormatDuration(time.Duration(v * float64(time.Millisecond))) }

func sortedKeys(m map[int]int) []int {
	ks := make([]int, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Ints(ks)
	return ks
}
