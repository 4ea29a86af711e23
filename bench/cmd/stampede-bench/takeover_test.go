package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTakeoverHolder is not a test: it is the holder process of the
// takeover tests, which re-execute this test binary with takeoverChildEnv
// set.
func TestTakeoverHolder(t *testing.T) {
	conf := os.Getenv(takeoverChildEnv)
	if conf == "" {
		t.Skip("only run as a takeover holder process")
	}
	if err := takeoverChild(context.Background(), conf, os.Stdin, os.Stdout); err != nil {
		t.Fatal(err)
	}
}

// useTestBinaryFor makes takeover, elect and sem start their child
// processes from this test binary, running the test named test.
func useTestBinaryFor(t *testing.T, test string) {
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	old := childCommand
	childCommand = func(string) (string, []string, error) {
		return os.Args[0], []string{"-test.run=^" + test + "$", "-test.count=1"}, nil
	}
	t.Cleanup(func() { childCommand = old })
}

// A SIGKILLed holder's key is taken over, in both modes, with a higher
// token, after its deadline (never before: that would be two holders).
func TestTakeoverRedis(t *testing.T) {
	srv := testserver.Require(t, testserver.Redis)
	useTestBinaryFor(t, "TestTakeoverHolder")
	for _, fair := range []bool{false, true} {
		var stderr bytes.Buffer
		rep, err := runTakeover(context.Background(), srv.URL(), 2, 500*time.Millisecond, fair, &stderr)
		if err != nil {
			t.Fatalf("fair=%v: %v\n%s", fair, err, stderr.String())
		}
		t.Logf("fair=%v: past the deadline %v ms", fair, rep.PastMs)
		if rep.BadTokens != 0 {
			t.Errorf("fair=%v: %d takeovers with a token not above the dead holder's", fair, rep.BadTokens)
		}
		if rep.PastMs[0] < 0 {
			t.Errorf("fair=%v: a waiter held the key %v ms before the dead holder's deadline", fair, rep.PastMs[0])
		}
	}
}
