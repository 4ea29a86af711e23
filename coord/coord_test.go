package coord_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/coord"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The conformance sections of this package, on the in-process backend.
func TestConformance(t *testing.T) {
	sp := memory.NewSpace(nil)
	h := conformance.Harness{Open: func(context.Context) (*claim.Client, error) { return memory.New(sp, nil) }}
	for _, name := range []string{"ElectionOneLeader", "ElectionTakeover", "ElectionObserve", "ElectionCancel",
		"SemaphoreLimit", "SemaphoreTakeover", "SemaphoreShape", "RWMutex", "RWMutexWriterNotStarved"} {
		if err := conformance.Test(context.Background(), h, name); err != nil {
			t.Error(err)
		}
	}
}

func TestBadInput(t *testing.T) {
	ctx := context.Background()
	c, _ := memory.New(nil, nil)
	defer c.Close()
	if _, err := coord.NewElection(c, "", nil); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("NewElection(\"\"): %v", err)
	}
	for _, n := range []int{0, -1, coord.MaxSlots + 1} {
		if _, err := coord.NewSemaphore(ctx, c, "s", n, nil); err == nil {
			t.Errorf("NewSemaphore(n=%d): no error", n)
		}
	}
	if _, err := coord.NewSemaphore(ctx, c, "", 1, nil); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("NewSemaphore(\"\"): %v", err)
	}
	if _, err := coord.NewRWMutex(ctx, c, "rw", &coord.RWMutexOptions{Readers: -1}); err == nil {
		t.Error("NewRWMutex(Readers: -1): no error")
	}
}

// A leadership whose lease is revoked (as a takeover would) is lost: its
// context ends, Lost is closed, Proclaim is refused.
func TestLeadershipLost(t *testing.T) {
	ctx := context.Background()
	c, _ := memory.New(nil, nil)
	defer c.Close()
	e, _ := coord.NewElection(c, "e", &coord.ElectionOptions{TTL: 300 * time.Millisecond})
	ld, err := e.Campaign(ctx, "a", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Revoke(ctx, "\x00coord:election:e"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ld.Lost():
	case <-time.After(5 * time.Second):
		t.Fatal("leadership not lost after its lease was revoked")
	}
	if ld.Context().Err() == nil {
		t.Error("context not cancelled")
	}
	if err := ld.Proclaim(ctx, []byte("x")); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Proclaim after loss: %v, want ErrLost", err)
	}
}

// Observe's channel closes when its context ends.
func TestObserveEnds(t *testing.T) {
	c, _ := memory.New(nil, nil)
	defer c.Close()
	e, _ := coord.NewElection(c, "e", nil)
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := e.Observe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	for range ch {
	}
}
