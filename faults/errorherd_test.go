package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/flight"
)

// The error herd (issue 13, "Done when"): errHerdProcs processes, each
// with errHerdCallers callers of one key, a loader failing after
// errHerdLoad. The holder publishes its failure (flight.Options.ErrorTTL),
// so every caller has an error within 2 load times and the loader runs
// once fleet-wide. Before errors travelled, each waiting process took the
// claim in turn and loaded again: the last caller waited about
// errHerdProcs load times.
const (
	errHerdProcs   = 8
	errHerdCallers = 50
	errHerdLoad    = 200 * time.Millisecond
	// errHerdTTL is the workers' ErrorTTL: far longer than the herd, so
	// that "one load" does not depend on the machine's speed (the
	// latency bound is what measures that).
	errHerdTTL = 10 * time.Second
)

// The worker process: the test binary re-executed with errHerdEnv set
// (diverted in init, before TestMain). It opens a client and a Cache,
// warms them up on a key of its own (connections, subscriptions), prints
// {"event":"ready"}, and then runs one herd per line read from stdin,
// the line its key: errHerdCallers concurrent Gets of the key (the loader
// fails after errHerdLoad on errHerdKey, answers herdValue after
// errHerdLoad on any other), printing each caller's latency and what it
// got as one JSON line ({"event":"result"}). At the end of its input it
// closes and exits.
const (
	errHerdEnv      = "STAMPEDE_FAULTS_ERRHERD"
	errHerdURLEnv   = "STAMPEDE_FAULTS_ERRHERD_URL"
	errHerdNameEnv  = "STAMPEDE_FAULTS_ERRHERD_NAME"
	errHerdLoadsEnv = "STAMPEDE_FAULTS_ERRHERD_LOADS" // file the loader appends a line to, per call
)

// The herds' keys: the error herd's, and the keys of the value herds
// run before and after it (the control); the value herds' value.
const (
	errHerdKey  = "the failing key"
	valueBefore = "the loading key, before"
	valueAfter  = "the loading key, after"
	herdValue   = "the value"
)

// errLoader is what the workers' loader fails with.
var errLoader = errors.New("errherd: the system of record refused the query")

func init() {
	if os.Getenv(errHerdEnv) != "" {
		os.Exit(errHerdWorker())
	}
}

// herdMsg is one line of a worker's output.
type herdMsg struct {
	Event string `json:"event"` // "ready", "result", "error"
	Error string `json:"error,omitempty"`
	// Per caller: its latency (from its call to its answer) and what it
	// got: "local" (the loader's own error: this process held the key),
	// "remote" (the holder's published error), "value" (the value),
	// else the unexpected answer.
	Latencies []time.Duration `json:"latencies,omitempty"`
	Got       []string        `json:"got,omitempty"`
	// Stats counters of the herd.
	Loads        uint64 `json:"loads"`
	ErrorCommits uint64 `json:"error_commits"`
	Takeovers    uint64 `json:"takeovers"`
	FailOpen     uint64 `json:"fail_open"`
	Health       string `json:"health"`
}

// herdLoad is the workers' loader: it appends "PID KEY" to the file
// named by errHerdLoadsEnv, takes errHerdLoad, and fails on errHerdKey.
func herdLoad(ctx context.Context, key string) (string, error) {
	f, err := os.OpenFile(os.Getenv(errHerdLoadsEnv), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return "", err
	}
	_, werr := fmt.Fprintf(f, "%d %s\n", os.Getpid(), key)
	if err := errors.Join(werr, f.Close()); err != nil {
		return "", err
	}
	select {
	case <-time.After(errHerdLoad):
	case <-ctx.Done():
	}
	if key == errHerdKey {
		return "", errLoader
	}
	return herdValue, nil
}

func errHerdWorker() int {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		_ = out.Encode(herdMsg{Event: "error", Error: err.Error()})
		return 2
	}
	var cl *claim.Client
	var err error
	for try := 0; try < 3; try++ { // opening may dial (and time out on a loaded machine)
		if cl, err = call(60*time.Second, func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, os.Getenv(errHerdURLEnv)) }); err == nil {
			break
		}
	}
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	c, err := flight.New(cl, &flight.Options[string]{
		Name:      os.Getenv(errHerdNameEnv),
		Normalize: flight.Identity,
		ErrorTTL:  errHerdTTL,
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return fail(err)
	}
	defer c.Close()
	// Warm up as a running service would be: a key of this process's
	// own, loaded (not counted), committed, read.
	warm := fmt.Sprint("warm-up ", os.Getpid())
	for range 2 {
		if _, err := c.Get(context.Background(), warm, func(context.Context, string) (string, error) { return "w", nil }); err != nil {
			return fail(fmt.Errorf("warm-up: %w", err))
		}
	}
	if err := out.Encode(herdMsg{Event: "ready"}); err != nil {
		return 2
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if err := out.Encode(runHerd(c, in.Text())); err != nil {
			return 2
		}
	}
	return 0
}

// runHerd runs errHerdCallers concurrent Gets of key on c.
func runHerd(c *flight.Cache[string], key string) herdMsg {
	base := c.Stats()
	r := herdMsg{Event: "result", Latencies: make([]time.Duration, errHerdCallers), Got: make([]string, errHerdCallers)}
	var wg sync.WaitGroup
	for i := range errHerdCallers {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			v, err := c.Get(ctx, key, herdLoad)
			r.Latencies[i] = time.Since(start)
			var re *flight.RemoteError
			switch {
			case errors.Is(err, errLoader):
				r.Got[i] = "local"
			case errors.As(err, &re) && re.Text == errLoader.Error() && errors.Is(err, flight.ErrRemoteLoad):
				r.Got[i] = "remote"
			case err != nil:
				r.Got[i] = "error: " + err.Error()
			case v == herdValue:
				r.Got[i] = "value"
			default:
				r.Got[i] = "value " + v
			}
		})
	}
	wg.Wait()
	st := c.Stats()
	r.Loads, r.ErrorCommits = st.Loads-base.Loads, st.ErrorCommits-base.ErrorCommits
	r.Takeovers, r.FailOpen = st.Takeovers-base.Takeovers, st.FailOpen-base.FailOpen
	r.Health = st.Health.State.String()
	return r
}

// herdWorker is a worker process seen from the test.
type herdWorker struct {
	*proc[herdMsg]
	t      testing.TB
	exited chan error
}

func startHerdWorker(t testing.TB, rawURL, name, loads string) *herdWorker {
	t.Helper()
	w := &herdWorker{t: t, exited: make(chan error, 1), proc: startProc[herdMsg](t, "worker", 2,
		errHerdEnv+"=1", errHerdURLEnv+"="+rawURL, errHerdNameEnv+"="+name, errHerdLoadsEnv+"="+loads)}
	cmd, inW := w.cmd, w.stdin
	go func() { w.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		inW.Close()
		<-w.done
		if e := w.stderr.String(); t.Failed() && e != "" {
			t.Logf("worker process %d stderr:\n%s", cmd.Process.Pid, e)
		}
	})
	return w
}

// next returns the worker's next message, failing the test after d.
func (w *herdWorker) next(d time.Duration, want string) herdMsg {
	w.t.Helper()
	var m herdMsg
	select {
	case m = <-w.msgs:
	case <-w.done:
		select {
		case m = <-w.msgs:
		default:
			w.t.Fatalf("worker process %d ended without %s; stderr:\n%s", w.cmd.Process.Pid, want, w.stderr.String())
		}
	case <-time.After(d):
		w.t.Fatalf("worker process %d: no %s within %s", w.cmd.Process.Pid, want, d)
	}
	if m.Event != want {
		w.t.Fatalf("worker process %d: %s %s, want %s; stderr:\n%s", w.cmd.Process.Pid, m.Event, m.Error, want, w.stderr.String())
	}
	return m
}

// wait checks the worker exits cleanly (a race report makes it exit
// non-zero).
func (w *herdWorker) wait() {
	w.t.Helper()
	select {
	case err := <-w.exited:
		if err != nil {
			w.t.Errorf("worker process %d exit: %v; stderr:\n%s", w.cmd.Process.Pid, err, w.stderr.String())
		}
	case <-time.After(60 * time.Second):
		w.t.Errorf("worker process %d did not exit; stderr:\n%s", w.cmd.Process.Pid, w.stderr.String())
	}
}

// herdTurn runs the backends' herds one at a time, their processes'
// start (8 race-enabled binaries, a CPU-heavy second or two) included:
// on a two-core machine, one backend's starting processes or 400 callers
// would otherwise take the CPU from another's herd while it is timed.
var herdTurn sync.Mutex

// TestErrorHerd: errHerdProcs real processes × errHerdCallers callers of
// one key whose loader fails after errHerdLoad. Every caller gets an error
// (the holder's callers the loader's own, every other caller the holder's
// published one, flight.ErrRemoteLoad), none stranded until the holder's
// lease ends (asserted; the figure reported against 2 load times),
// and the loader ran once fleet-wide (counted by the loader itself, in a
// file every process appends to). Just before and just after, the same
// processes run the same herd on keys whose loader succeeds after
// errHerdLoad: the control, which shows what one load and the backend's
// round trips cost on this machine at that time.
//
// The reported bound is 2 load times, the issue's, or the slower control's slowest
// caller plus half a load time if that is more. 2 load times tells one
// load from two: a caller answered by any load after the first (a process
// taking the claim once the holder released it, the behaviour before
// errors travelled) cannot have its answer before 2 load times, since that
// load starts after the first one ended; a caller answered by the first
// load's error waits for that load and a few round trips (the holder's
// commit and release, the waiter's wake-up and read), on loopback well
// within a second load time. Not always on this test server: dynalite,
// the DynamoDB emulator, runs every request on one Node.js thread, and
// the waiting processes poll it (DynamoDB cannot push), so during a herd
// its requests queue behind the 8 processes' polls and the herd's round
// trips alone can take more than a load time, for values as for errors
// (the control shows it: 350-650 ms on a loaded two-core machine). An
// error's path costs the round trips of a value's (commit and release,
// wake-up, read), so the control is the honest reference there; half a
// load time over it still tells a second load apart (that costs a whole
// load time more), and the loader's own count tells it exactly.
func TestErrorHerd(t *testing.T) {
	forEach(t, needsProcesses, func(t *testing.T, b backend) { errorHerdOnce(t, b) })
}

func errorHerdOnce(t *testing.T, b backend) {
	u := b.sharedURL(t) // before the turn: may start the server
	name := "errherd-" + randHex(4)
	loads := filepath.Join(t.TempDir(), "loads")
	var before, herd, after []herdMsg
	func() {
		herdTurn.Lock()
		defer herdTurn.Unlock()
		workers := make([]*herdWorker, errHerdProcs)
		for i := range workers {
			workers[i] = startHerdWorker(t, u, name, loads)
		}
		for _, w := range workers {
			w.next(3*time.Minute, "ready")
		}
		before = fleetHerd(t, workers, valueBefore)
		herd = fleetHerd(t, workers, errHerdKey)
		after = fleetHerd(t, workers, valueAfter)
		for _, w := range workers {
			w.stdin.Close() // the end of its input: the worker closes and exits
		}
		for _, w := range workers {
			w.wait()
		}
	}()
	calls := loaderCalls(t, loads)

	// The control: one load each, every caller has the value.
	var control time.Duration // the slower value herd's slowest caller
	var cs [2]herdSummary
	for i, c := range []struct {
		key     string
		results []herdMsg
	}{{valueBefore, before}, {valueAfter, after}} {
		cs[i] = summarise(t, c.key, c.results)
		for _, g := range cs[i].got {
			if g != "value" {
				t.Errorf("%s: a caller got %s", c.key, g)
				break
			}
		}
		if calls[c.key] != 1 || cs[i].loads != 1 {
			t.Errorf("%s: loader ran %d times (file), %d (stats); want 1", c.key, calls[c.key], cs[i].loads)
		}
		control = max(control, cs[i].worst)
	}

	// The error herd.
	es := summarise(t, "error herd", herd)
	var unexpected []string
	for _, g := range es.got {
		if g != "local" && g != "remote" {
			unexpected = append(unexpected, g)
		}
	}
	bound := max(2*errHerdLoad, control+errHerdLoad/2)
	figure(t, "error herd", fmt.Sprintf("p50 / max caller latency (%d processes × %d callers, loader fails after %s)", errHerdProcs, errHerdCallers, errHerdLoad), b.name, "%s / %s", ms(es.p50), ms(es.worst))
	figure(t, "error herd", "max caller latency, the same herd with a loader that succeeds, before / after", b.name, "%s / %s", ms(cs[0].worst), ms(cs[1].worst))
	figure(t, "error herd", "bound: 2 load times, or the slower control's max + half a load time", b.name, "%s", ms(bound))
	figure(t, "error herd", "loader calls fleet-wide (want 1)", b.name, "%d", calls[errHerdKey])

	if len(unexpected) > 0 {
		t.Errorf("%d callers got something else than the loader's error or the holder's: %v", len(unexpected), unexpected[:min(len(unexpected), 5)])
	}
	if calls[errHerdKey] != 1 || es.loads != 1 || len(es.holders) != 1 {
		t.Errorf("error herd: loader ran %d times (file), %d (stats); processes whose callers got the loader's own error: %v; want 1, 1, one process",
			calls[errHerdKey], es.loads, es.holders)
	}
	if es.errorCommits != 1 || es.takeovers != 0 {
		t.Errorf("error herd: %d errors committed, %d takeovers; want 1, 0", es.errorCommits, es.takeovers)
	}
	// The bound above is reported, not asserted: the loader's own count
	// tells one load from two exactly, and on a loaded two-core machine a
	// polled backend's round trips alone passed it (MariaDB, 2 runs of 6
	// at load average 24, with one load each). What is asserted is that no
	// caller was stranded: a waiter that missed the holder's wake-up waits
	// until the holder's lease (flight's default, 5 s) runs out, so every
	// caller answered within half a lease of the control's slowest was
	// woken by the error.
	if stranded := control + flightLease/2; es.worst > stranded {
		t.Errorf("error herd: slowest caller %s (p50 %s), want under %s (the value herds' slowest %s + half the holder's lease: a waiter stranded until the lease ran out)",
			es.worst, es.p50, stranded, control)
	}
}

// flightLease is flight's default Options.LeaseTTL, which the workers use.
const flightLease = 5 * time.Second

// fleetHerd runs one herd on key in every worker at once and returns
// their results.
func fleetHerd(t *testing.T, workers []*herdWorker, key string) []herdMsg {
	t.Helper()
	for _, w := range workers {
		if _, err := fmt.Fprintln(w.stdin, key); err != nil {
			t.Fatalf("worker process %d: %v", w.cmd.Process.Pid, err)
		}
	}
	results := make([]herdMsg, len(workers))
	for i, w := range workers {
		results[i] = w.next(2*time.Minute, "result")
	}
	return results
}

// herdSummary is a herd's results across the processes.
type herdSummary struct {
	got                            []string // every caller's answer
	p50, worst                     time.Duration
	holders                        []int // processes whose callers got the loader's own error
	loads, errorCommits, takeovers uint64
}

// summarise sums up a herd's results, logs each process's, and checks
// that none failed open or saw its backend degraded.
func summarise(t *testing.T, what string, results []herdMsg) herdSummary {
	t.Helper()
	var (
		s   herdSummary
		lat []time.Duration
	)
	for i, r := range results {
		lat = append(lat, r.Latencies...)
		s.got = append(s.got, r.Got...)
		local := 0
		for _, g := range r.Got {
			if g == "local" {
				local++
			}
		}
		if local > 0 {
			s.holders = append(s.holders, i)
		}
		pl := slices.Sorted(slices.Values(r.Latencies))
		t.Logf("%s, process %d: %d callers, %d with the loader's own error, %d loads; latency min %s, max %s",
			what, i, len(r.Got), local, r.Loads, pl[0].Round(time.Millisecond), pl[len(pl)-1].Round(time.Millisecond))
		if r.FailOpen != 0 || r.Health != "healthy" {
			t.Errorf("%s, process %d: %d flights failed open, health %s; want none, healthy", what, i, r.FailOpen, r.Health)
		}
		s.loads += r.Loads
		s.errorCommits += r.ErrorCommits
		s.takeovers += r.Takeovers
	}
	if len(lat) != errHerdProcs*errHerdCallers {
		t.Fatalf("%s: %d answers, want %d", what, len(lat), errHerdProcs*errHerdCallers)
	}
	slices.Sort(lat)
	s.p50, s.worst = lat[len(lat)/2], lat[len(lat)-1]
	return s
}

// loaderCalls counts the loader calls the workers appended to path, by
// key.
func loaderCalls(t testing.TB, path string) map[string]int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("loader calls: %v", err)
	}
	n := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		pid, key, ok := strings.Cut(line, " ")
		if _, err := strconv.Atoi(pid); !ok || err != nil || (key != errHerdKey && key != valueBefore && key != valueAfter) {
			t.Fatalf("loader calls file: line %q", line)
		}
		n[key]++
	}
	return n
}
