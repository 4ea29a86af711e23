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
// binary (TestHerdWorker).
func useTestBinary(t *testing.T) {
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
	if h.LoaderCalls != h.KeysAsked || len(h.LoadsPerKey) != 1 || h.LoadsPerKey[1] != h.KeysAsked {
		t.Errorf("loader calls = %d for %d keys (loads per key: %v), want exactly 1 per key", h.LoaderCalls, h.KeysAsked, h.LoadsPerKey)
	}
	if h.Commits != uint64(h.KeysAsked) {
		t.Errorf("commits = %d, want %d", h.Commits, h.KeysAsked)
	}
	if h.Takeovers != 0 || h.FailOpen != 0 {
		t.Errorf("takeovers = %d, fail-open = %d, want 0", h.Takeovers, h.FailOpen)
	}
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
	for _, bad := range [][]string{{"-procs", "0"}, {"-zipf", "0.5"}, {"-kill-holder", "-procs", "1"}, {"extra"}} {
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
