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

// Processes campaign; leaders are SIGKILLed one after another: one leader
// at a time, terms up, a new leader within the lease (+ margin) of each
// kill, every live observer sees every term in order.
func TestElectRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinaryFor(t, "TestCoordChild")
	var stderr bytes.Buffer
	ttl := time.Second
	rep, err := runElect(context.Background(), srv.URL(), 5, 2, ttl, &stderr)
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
	for _, ms := range rep.FailoverMs {
		// The dead leader's lease ran out at most ttl after the kill;
		// the bound leaves a wide margin for a loaded machine.
		if ms > float64((ttl + 5*time.Second).Milliseconds()) {
			t.Errorf("a new leader %v ms after the kill, lease %s", ms, ttl)
		}
	}
}

// A semaphore of 3 under 4 processes x 10 goroutines: never more than 3
// holders by the file-lock counter, no token twice.
func TestSemRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinaryFor(t, "TestCoordChild")
	var stderr bytes.Buffer
	rep, err := runSem(context.Background(), srv.URL(), 3, 4, 10, 2*time.Second, time.Millisecond, &stderr)
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
}
