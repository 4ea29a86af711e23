package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stampede-go/stampede/internal/testserver"
)

func TestBenchMem(t *testing.T) {
	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"bench", "-backends", "mem", "-rounds", "2", "-benchtime", "20ms",
		"-herd-procs", "3", "-herd-callers", "20", "-out", out}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	t.Logf("\n%s", stdout.String())
	for _, want := range []string{"| claim+release, uncontended (µs) |", "| handoff p50, hold 300 ms (ms) |", "| flight L1 hit (ns; allocs) |",
		"| herd: loader calls per key | 1.00 |"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("table lacks %q", want)
		}
	}
	if !strings.Contains(stderr.String(), "[10/10] mem: FlightHerd") {
		t.Errorf("no progress line for the last benchmark in stderr:\n%s", stderr.String())
	}
	for _, f := range []string{"claim-release.svg", "handoff.svg", "fanout.svg", "store.svg", "flight-l1-hit.svg", "flight-l2-hit.svg", "herd.svg"} {
		data, err := os.ReadFile(filepath.Join(out, f))
		if err != nil || !bytes.Contains(data, []byte("<svg")) {
			t.Errorf("%s: not an SVG chart (%v)", f, err)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep benchReport
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Results) != 10 || rep.failed() != 0 {
		t.Errorf("results.json: %d results, %d failed; want 10, 0", len(rep.Results), rep.failed())
	}
}

// TestBenchKind: a kind name takes the server from STAMPEDE_TEST_<KIND>_URL.
func TestBenchKind(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	t.Setenv(testserver.Redis.EnvVar(), srv.URL())
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"bench", "-backends", "redis", "-run", "ClaimRelease|FlightHerd", "-rounds", "2",
		"-benchtime", "20ms", "-herd-procs", "2", "-herd-callers", "10", "-out", ""}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "| herd: loader calls per key | 1.00 |") || strings.Contains(stderr.String(), "starting") {
		t.Errorf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	}
	if code := run(context.Background(), []string{"bench", "-backends", "nosuch"}, &stdout, &stderr); code != 1 {
		t.Errorf("unknown backend: exit %d, want 1", code)
	}
}
