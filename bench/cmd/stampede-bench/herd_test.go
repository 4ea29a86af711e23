package main

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/countdriver"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestHerdWorker is not a test: it is the worker process of the herd
// tests, which re-execute this test binary with herdWorkerEnv set.
func TestHerdWorker(t *testing.T) {
	conf := os.Getenv(herdWorkerEnv)
	if conf == "" {
		t.Skip("only run as a herd worker process")
	}
	if err := herdChild(context.Background(), conf, os.Stdin, os.Stdout, os.Stderr); err != nil {
		t.Fatal(err)
	}
}

// useTestBinary makes herd start its worker processes from this test
// binary (TestHerdWorker). Under the race detector, the workers skip its
// one-second sleep at exit (GORACE atexit_sleep_ms), which every herd
// would otherwise wait for.
func useTestBinary(t *testing.T) {
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	old := herdWorkerCommand
	herdWorkerCommand = func() (string, []string, error) {
		return os.Args[0], []string{"-test.run=^TestHerdWorker$", "-test.count=1"}, nil
	}
	t.Cleanup(func() { herdWorkerCommand = old })
}

func herdRun(t *testing.T, cfg herdConfig) *herdSummary {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Minute
	}
	var stderr bytes.Buffer
	h, err := runHerd(context.Background(), cfg, &stderr)
	if err != nil {
		t.Fatalf("herd: %v\nstderr:\n%s", err, stderr.String())
	}
	var out bytes.Buffer
	h.print(&out)
	t.Logf("\n%s", out.String())
	if h.Errors != 0 {
		t.Errorf("%d callers got an error, e.g. %s", h.Errors, h.ErrorEg)
	}
	if h.Requests+callersOfKilled(h, cfg) != cfg.Procs*cfg.Callers*cfg.Rounds {
		t.Errorf("requests = %d, want %d", h.Requests, cfg.Procs*cfg.Callers*cfg.Rounds)
	}
	return h
}

func callersOfKilled(h *herdSummary, cfg herdConfig) int {
	if h.Kill == nil {
		return 0
	}
	return cfg.Callers * cfg.Rounds
}

// oneLoadPerKey checks the herd's promise: every key asked was loaded
// exactly once, committed once, and each process's backend round trips
// per key do not grow with its callers.
func oneLoadPerKey(t *testing.T, h *herdSummary) {
	t.Helper()
	loadedOnce(t, h)
	for _, p := range h.PerProc {
		// get, subscribe, claim, get; the holder also commits and
		// releases: 6 at most per key, whatever the callers.
		if p.Keys == 0 || p.Total > int64(6*p.Keys) {
			t.Errorf("process %d: %d round trips for %d keys (%v), want at most 6 per key", p.Proc, p.Total, p.Keys, p.Calls)
		}
		// With driver.ClaimReader and driver.CommitReleaser (memory and
		// Redis have both), holders too make 4: get, subscribe,
		// claim+read, commit+release.
		if p.Calls["claim"] == 0 && p.Calls["commit"] == 0 && p.Total > int64(4*p.Keys) {
			t.Errorf("process %d: %d round trips for %d keys (%v), want at most 4 per key", p.Proc, p.Total, p.Keys, p.Calls)
		}
		if p.Calls["subscribe"] > int64(p.Keys) {
			t.Errorf("process %d: %d subscriptions for %d keys, want at most one per key", p.Proc, p.Calls["subscribe"], p.Keys)
		}
	}
}

// loadedOnce checks that every key asked was loaded exactly once and
// committed once, with no takeover and no load without a claim.
func loadedOnce(t *testing.T, h *herdSummary) {
	t.Helper()
	if h.LoaderCalls != h.KeysAsked || len(h.LoadsPerKey) != 1 || h.LoadsPerKey[1] != h.KeysAsked {
		t.Errorf("loader calls = %d for %d keys (loads per key: %v), want exactly 1 per key", h.LoaderCalls, h.KeysAsked, h.LoadsPerKey)
	}
	if h.Commits != uint64(h.KeysAsked) || h.LostCommits != 0 {
		t.Errorf("commits = %d, lost commits = %d, want %d, 0", h.Commits, h.LostCommits, h.KeysAsked)
	}
	if h.Takeovers != 0 || h.FailOpen != 0 {
		t.Errorf("takeovers = %d, fail-open = %d, want 0", h.Takeovers, h.FailOpen)
	}
}

// batchSizes runs the batch herd at two batch sizes, 10 and 50 keys: 4
// processes x 50 callers, each asking one batch of a cold key space of
// 200, much smaller than processes x callers x batch, so batches overlap
// within each process and across processes. Both load every key once;
// with batches of 50 (the acceptance run's size) every process makes at
// most 6 round trips per batch, and no more than 1 more than with
// batches of 10.
func batchSizes(t *testing.T, backend string) (small, large *herdSummary) {
	t.Helper()
	cfg := herdConfig{Backend: backend, Procs: 4, Callers: 50, Keys: 200, Rounds: 1, Load: 50 * time.Millisecond}
	cfg.Batch = 10
	small = herdRun(t, cfg)
	cfg.Batch = 50
	large = herdRun(t, cfg)
	for _, h := range []*herdSummary{small, large} {
		onePerBatchKey(t, h)
	}
	atMostPerBatch(t, large, 6)
	// The per-batch figure does not grow with the batch: a GetMany is a
	// handful of batched calls whatever its size.
	if large.RTPerBatch.Max > small.RTPerBatch.Max+1 {
		t.Errorf("round trips per process per batch: max %.2f with batches of %d, %.2f with batches of %d; want no more than 1 more",
			large.RTPerBatch.Max, large.Batch, small.RTPerBatch.Max, small.Batch)
	}
	return small, large
}

// onePerBatchKey checks a batch herd (GetMany, or a loop of Gets with
// Loop): every key of every batch answered with its own value, every key
// asked loaded exactly once; with GetMany, only the batched calls claim
// and commit.
func onePerBatchKey(t *testing.T, h *herdSummary) {
	t.Helper()
	loadedOnce(t, h)
	if h.RTPerBatch == nil {
		t.Fatal("no round trips per batch in a batch herd's report")
	}
	if h.KeyRequests != h.Requests*h.Batch || h.KeyErrors != 0 {
		t.Errorf("%d keys asked in %d batches of %d, %d answered with an error; want %d, 0",
			h.KeyRequests, h.Requests, h.Batch, h.KeyErrors, h.Requests*h.Batch)
	}
	answered := 0
	for _, n := range h.BySource {
		answered += n
	}
	if answered != h.KeyRequests {
		t.Errorf("%d keys answered (%v), want %d", answered, h.BySource, h.KeyRequests)
	}
	if h.Loop {
		return
	}
	if h.BatchLoaderCalls == 0 || h.BatchLoaderCalls > uint64(h.KeysAsked) {
		t.Errorf("%d batch loader calls for %d keys", h.BatchLoaderCalls, h.KeysAsked)
	}
	for _, p := range h.PerProc {
		if p.Requests != h.Callers*h.Rounds {
			t.Errorf("process %d: %d batches, want %d", p.Proc, p.Requests, h.Callers*h.Rounds)
			continue
		}
		// Not "get": a reset of the invalidation topic (a Redis pub/sub
		// connection rebuilt on a loaded machine) makes flight read its
		// generation key with one Get, whatever the batches.
		for _, single := range []string{"claim", "claim+read", "commit", "commit+release"} {
			if p.Calls[single] != 0 {
				t.Errorf("process %d: %d single-key %s calls (%v), want the batched calls only", p.Proc, p.Calls[single], single, p.Calls)
			}
		}
		if p.Calls["get-many"] == 0 {
			t.Errorf("process %d: no get-many (%v)", p.Proc, p.Calls)
		}
	}
}

// atMostPerBatch checks that each process of a batch herd made at most
// max round trips per batch it asked.
func atMostPerBatch(t *testing.T, h *herdSummary, max float64) {
	t.Helper()
	for _, p := range h.PerProc {
		if p.PerBatch > max {
			t.Errorf("process %d: %d round trips for %d batches of %d (%.2f per batch: %v), want at most %g per batch",
				p.Proc, p.Total, p.Requests, h.Batch, p.PerBatch, p.Calls, max)
		}
	}
}

func TestHerdSimulated(t *testing.T) {
	h := herdRun(t, herdConfig{Procs: 8, Callers: 1000, Keys: 1, Rounds: 1, Load: 50 * time.Millisecond})
	if h.Mode != "simulated" || h.Requests != 8000 {
		t.Errorf("mode %q, %d requests, want simulated, 8000", h.Mode, h.Requests)
	}
	oneLoadPerKey(t, h)
	if got := h.Calls["release"] + h.Calls["commit+release"]; got != 1 {
		t.Errorf("releases = %d, want 1", got)
	}
}

func TestHerdSimulatedManyKeys(t *testing.T) {
	h := herdRun(t, herdConfig{Procs: 4, Callers: 100, Keys: 10, Rounds: 2, Load: 20 * time.Millisecond})
	if h.KeysAsked != 20 {
		t.Errorf("keys asked = %d, want 20 (10 per round)", h.KeysAsked)
	}
	oneLoadPerKey(t, h)
	h = herdRun(t, herdConfig{Procs: 3, Callers: 100, Keys: 30, Zipf: 1.3, Rounds: 1, Load: 20 * time.Millisecond})
	oneLoadPerKey(t, h)
}

// The batch herd in process: GetMany at two batch sizes, then the same
// batches with a loop of Gets (every key loaded once there too, at more
// round trips per batch).
func TestHerdSimulatedBatch(t *testing.T) {
	_, large := batchSizes(t, "")
	if large.Mode != "simulated" {
		t.Errorf("mode = %q, want simulated", large.Mode)
	}
	loop := herdRun(t, herdConfig{Procs: 4, Callers: 50, Keys: 200, Batch: 50, Loop: true, Rounds: 1, Load: 20 * time.Millisecond})
	onePerBatchKey(t, loop)
	if loop.RTPerBatch.Avg <= large.RTPerBatch.Avg {
		t.Errorf("round trips per process per batch: a loop of Gets %.2f, a GetMany %.2f; want the loop's higher",
			loop.RTPerBatch.Avg, large.RTPerBatch.Avg)
	}
	if loop.BatchLoaderCalls != 0 || loop.Calls["get-many"] != 0 {
		t.Errorf("a loop of Gets made %d batch loader calls, %d get-many; want 0, 0", loop.BatchLoaderCalls, loop.Calls["get-many"])
	}
	// Two rounds: new keys each round, each loaded once.
	h := herdRun(t, herdConfig{Procs: 4, Callers: 20, Keys: 100, Batch: 20, Rounds: 2, Load: 20 * time.Millisecond})
	onePerBatchKey(t, h)
}

func TestHerdSimulatedKillHolder(t *testing.T) {
	cfg := herdConfig{Procs: 3, Callers: 50, Keys: 1, Rounds: 1, Load: 20 * time.Millisecond, KillHolder: true, Lease: 300 * time.Millisecond}
	h := herdRun(t, cfg)
	killedHolder(t, h)
}

func killedHolder(t *testing.T, h *herdSummary) {
	t.Helper()
	if h.Kill == nil {
		t.Fatal("no process was killed")
	}
	if h.LoaderCalls < 1 || h.LoaderCalls > 2 {
		t.Errorf("loader calls = %d, want 1 or 2 (the killed holder's and the takeover's)", h.LoaderCalls)
	}
	if h.Commits != 1 {
		t.Errorf("commits = %d, want 1", h.Commits)
	}
	if p := h.PerProc[h.Kill.Proc]; p.Requests != 0 {
		t.Errorf("the killed process %d reported %d requests", p.Proc, p.Requests)
	}
}

func TestHerdProcessesRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinary(t)
	h := herdRun(t, herdConfig{Backend: srv.URL(), Procs: 3, Callers: 50, Keys: 3, Rounds: 2, Load: 50 * time.Millisecond})
	if h.Mode != "processes" {
		t.Errorf("mode = %q, want processes", h.Mode)
	}
	if h.KeysAsked != 6 {
		t.Errorf("keys asked = %d, want 6", h.KeysAsked)
	}
	oneLoadPerKey(t, h)
	waitersTakeTheWakeValue(t, h)
}

// waitersTakeTheWakeValue: on a backend whose wake-ups carry the holder's
// value (driver.ValueNotifier: Redis, the other push backends, MariaDB), a process that loaded nothing
// reads each key once (before it waits) and never after its wake-up: 3
// round trips per key (get, subscribe, claim+read). One more get is
// allowed: the read of the cache's generation after a reset of the
// invalidation topic.
func waitersTakeTheWakeValue(t *testing.T, h *herdSummary) {
	t.Helper()
	for _, p := range h.PerProc {
		if p.Loads != 0 || p.Keys == 0 {
			continue
		}
		if g := p.Calls["get"]; g > int64(p.Keys)+1 {
			t.Errorf("waiting process %d: %d gets for %d keys (%v), want one per key: the wake-up carries the value", p.Proc, g, p.Keys, p.Calls)
		}
		if p.Total > int64(3*p.Keys)+1 {
			t.Errorf("waiting process %d: %d round trips for %d keys (%v), want 3 per key", p.Proc, p.Total, p.Keys, p.Calls)
		}
	}
}

// On every push backend a waiting process costs 3 round trips per key
// (get, subscribe, claim+read; the wake-up carries the value), counted
// in real processes.
func TestHerdProcessesWakeValue(t *testing.T) {
	for _, kind := range []testserver.Kind{testserver.Postgres, testserver.Etcd, testserver.Consul, testserver.ZooKeeper} {
		t.Run(string(kind), func(t *testing.T) {
			srv := testserver.Require(t, kind)
			useTestBinary(t)
			h := herdRun(t, herdConfig{Backend: srv.URL(), Procs: 3, Callers: 20, Keys: 2, Rounds: 2, Load: 100 * time.Millisecond})
			oneLoadPerKey(t, h)
			waitersTakeTheWakeValue(t, h)
		})
	}
}

// The backends of issue 18 in the full herd: 8 processes × 1000 callers,
// one load per key.
func TestHerdProcessesNewBackends(t *testing.T) {
	for _, kind := range []testserver.Kind{testserver.NATS, testserver.MySQL} {
		t.Run(string(kind), func(t *testing.T) {
			srv := testserver.Require(t, kind)
			useTestBinary(t)
			h := herdRun(t, herdConfig{Backend: srv.URL(), Procs: 8, Callers: 1000, Keys: 1, Rounds: 1, Load: 100 * time.Millisecond})
			oneLoadPerKey(t, h)
			// NATS pushes the value; MariaDB is polled, but the poll
			// that sees the release carries it (driver.PollValueReader).
			waitersTakeTheWakeValue(t, h)
			// Processes simulated in one start the same instant, and an
			// instant loader puts the commit among the waiters' claims:
			// MariaDB's claim statement once deadlocked here (fail-open
			// loads, 2.05 per key).
			h = herdRun(t, herdConfig{Backend: srv.URL(), Procs: 8, Callers: 100, Keys: 1, Rounds: 10, Sim: true})
			loadedOnce(t, h)
		})
	}
}

func TestHerdProcessesBatchRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinary(t)
	_, large := batchSizes(t, srv.URL())
	if large.Mode != "processes" {
		t.Errorf("mode = %q, want processes", large.Mode)
	}
}

func TestHerdProcessesBatchPostgres(t *testing.T) {
	srv := testserver.Require(t, testserver.Postgres)
	useTestBinary(t)
	_, large := batchSizes(t, srv.URL())
	if large.Mode != "processes" {
		t.Errorf("mode = %q, want processes", large.Mode)
	}
}

func TestHerdKillHolderRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinary(t)
	h := herdRun(t, herdConfig{Backend: srv.URL(), Procs: 3, Callers: 20, Keys: 1, Rounds: 1,
		Load: 200 * time.Millisecond, KillHolder: true, Lease: 500 * time.Millisecond})
	killedHolder(t, h)
}

func TestHerdCommand(t *testing.T) {
	ctx := context.Background()
	var out, errb bytes.Buffer
	if code := run(ctx, []string{"herd", "-procs", "2", "-callers", "10", "-load", "1ms", "-json"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	var rep map[string]any
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if rep["loader_calls"] != 1.0 || rep["requests"] != 20.0 {
		t.Errorf("loader_calls %v, requests %v; want 1, 20", rep["loader_calls"], rep["requests"])
	}
	out.Reset()
	if code := run(ctx, []string{"herd", "-procs", "2", "-callers", "10", "-batch", "5", "-keys", "20", "-load", "1ms", "-json"}, &out, &errb); code != 0 {
		t.Fatalf("-batch: exit %d: %s", code, errb.String())
	}
	rep = nil
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("-batch: not JSON: %v\n%s", err, out.String())
	}
	if rep["loader_calls"] != rep["keys_asked"] || rep["requests"] != 20.0 || rep["key_requests"] != 100.0 || rep["round_trips_per_proc_per_batch"] == nil {
		t.Errorf("-batch: loader_calls %v for keys_asked %v, requests %v, key_requests %v, round_trips_per_proc_per_batch %v; want equal, 20, 100, present",
			rep["loader_calls"], rep["keys_asked"], rep["requests"], rep["key_requests"], rep["round_trips_per_proc_per_batch"])
	}
	for _, bad := range [][]string{{"-procs", "0"}, {"-zipf", "0.5"}, {"-kill-holder", "-procs", "1"}, {"extra"},
		{"-batch", "-1"}, {"-batch", "5"}, {"-loop"}, {"-batch", "2", "-keys", "4", "-zipf", "1.5"}, {"-batch", "2", "-keys", "4", "-kill-holder"}} {
		errb.Reset()
		if code := run(ctx, append([]string{"herd"}, bad...), &out, &errb); code != 2 {
			t.Errorf("herd %s: exit %d, want 2", strings.Join(bad, " "), code)
		}
	}
}

// TestCountedKeepsFastPaths: count puts the counter under the Client, at
// its driver, and shows the Client the driver's optional interfaces, so the
// Client takes the same fast paths as without the counter, each one round
// trip; without them (hidden here) the Client builds them from the
// required calls, and the counter sees those.
func TestCountedKeepsFastPaths(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name                        string
		opt                         countdriver.Options
		wantB, wantR, wantC         bool
		wantClaimRead, wantCommitRl map[string]int64
	}{
		{"memory", countdriver.Options{}, true, true, true,
			map[string]int64{"claim+read": 1}, map[string]int64{"commit+release": 1}},
		{"no fast paths", countdriver.Options{NoFastPaths: true}, true, false, false,
			map[string]int64{"claim": 1, "get": 1}, map[string]int64{"commit": 1, "release": 1}},
		{"no broadcast", countdriver.Options{NoBroadcast: true}, false, true, true,
			map[string]int64{"claim+read": 1}, map[string]int64{"commit+release": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem, err := memory.New(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			// What the driver shows, then the counter under test on top.
			shown, _ := countdriver.Wrap(mem.Driver(), nil, tc.opt)
			c, n := count(claim.NewClient(shown, nil))
			defer c.Close() // closes the driver under both wrappers
			d := c.Driver()
			_, isB := d.(driver.Broadcaster)
			_, isR := d.(driver.ClaimReader)
			_, isC := d.(driver.CommitReleaser)
			if isB != tc.wantB || isR != tc.wantR || isC != tc.wantC {
				t.Errorf("counted driver is Broadcaster %v, ClaimReader %v, CommitReleaser %v; want %v, %v, %v",
					isB, isR, isC, tc.wantB, tc.wantR, tc.wantC)
			}
			l, _, found, err := c.TryClaimRead(ctx, "k", time.Minute)
			if err != nil || found {
				t.Fatalf("TryClaimRead: found %v, %v", found, err)
			}
			if got := n.Snapshot().ByName(); !maps.Equal(got, tc.wantClaimRead) {
				t.Errorf("TryClaimRead counted %v, want %v", got, tc.wantClaimRead)
			}
			before := n.Snapshot()
			if err := c.CommitRelease(ctx, l, []byte("v"), time.Minute); err != nil {
				t.Fatal(err)
			}
			if got := n.Snapshot().Sub(before).ByName(); !maps.Equal(got, tc.wantCommitRl) {
				t.Errorf("CommitRelease counted %v, want %v", got, tc.wantCommitRl)
			}
			if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
				t.Errorf("Get after CommitRelease: %q, %v", v, err)
			}
			sum := func(m map[string]int64) (t int64) {
				for _, v := range m {
					t += v
				}
				return t
			}
			if got, want := n.Total(), sum(tc.wantClaimRead)+sum(tc.wantCommitRl)+1; got != want { // +1: the Get
				t.Errorf("total %d round trips, want %d", got, want)
			}
		})
	}
}
