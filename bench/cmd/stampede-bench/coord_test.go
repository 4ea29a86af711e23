package main

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/testserver"
)

// TestCoordChild is not a test: it is a process of the elect and sem
// tests, which re-execute this test binary with coordChildEnv set.
func TestCoordChild(t *testing.T) {
	conf := os.Getenv(coordChildEnv)
	if conf == "" {
		t.Skip("only run as an elect or sem process")
	}
	if err := coordChild(context.Background(), conf, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// On every server backend, 8 processes campaign and leaders are SIGKILLed
// one after another: one leader at a time, terms up, a new leader within
// the lease (+ a margin for a loaded machine) of each kill, every live
// observer sees every term in order. (stampede-bench elect; the failover
// times are in BENCHMARKS.md section 7.)
func TestElect(t *testing.T) {
	useTestBinaryFor(t, "TestCoordChild")
	for _, kind := range testserver.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testserver.Require(t, kind)
			var stderr bytes.Buffer
			ttl := time.Second
			rep, err := runElect(context.Background(), createTable(kind, srv.URL()), 8, 2, ttl, &stderr)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			t.Logf("terms %v, failover after SIGKILL %v ms", rep.Terms, rep.FailoverMs)
			if rep.Overlaps != 0 || rep.BadObservers != 0 {
				t.Errorf("problems: %v", rep.Problems)
			}
			if len(rep.Terms) != 3 || len(rep.FailoverMs) != 2 {
				t.Errorf("terms %v, failovers %v: want 3 leaders, 2 failovers", rep.Terms, rep.FailoverMs)
			}
			for i := 1; i < len(rep.Terms); i++ {
				if rep.Terms[i] <= rep.Terms[i-1] {
					t.Errorf("terms %v: not increasing", rep.Terms)
				}
			}
			for _, ms := range rep.FailoverMs {
				// The dead leader's lease ran out at most ttl after the
				// kill; the bound leaves a wide margin for a loaded
				// machine.
				if ms > float64((ttl + 5*time.Second).Milliseconds()) {
					t.Errorf("a new leader %v ms after the kill, lease %s", ms, ttl)
				}
			}
		})
	}
}

// On every server backend, a semaphore of 3 under 8 processes x 50
// goroutines: never more than 3 holders by the file-lock counter (outside
// stampede), no token twice, and permits taken.
func TestSem(t *testing.T) {
	useTestBinaryFor(t, "TestCoordChild")
	for _, kind := range testserver.Kinds {
		t.Run(string(kind), func(t *testing.T) {
			srv := testserver.Require(t, kind)
			var stderr bytes.Buffer
			rep, err := runSem(context.Background(), createTable(kind, srv.URL()), 3, 8, 50, 2*time.Second, time.Millisecond, &stderr)
			if err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			t.Logf("%+v", *rep)
			if rep.Over != 0 || rep.DupToken != 0 || rep.Peak > 3 {
				t.Errorf("over N %d, duplicate tokens %d, peak %d", rep.Over, rep.DupToken, rep.Peak)
			}
			if rep.Permits == 0 {
				t.Error("no permit taken")
			}
		})
	}
}
