package flight_test

import (
	"context"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/backendtest"
)

func TestFencedInvalidation(t *testing.T) {
	sp := memory.NewSpace(nil)
	backendtest.Flight(t, func(t *testing.T) *claim.Client {
		c, err := memory.New(sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	})
}

// A caller that comes after Invalidate does not join the superseded load
// in the invalidating process; Set's value stays in its own L1.
func TestInvalidateLeavesTheFlight(t *testing.T) {
	ctx := context.Background()
	sp := memory.NewSpace(nil)
	c, _ := memory.New(sp, nil)
	defer c.Close()
	fc, err := flight.New[string](c, &flight.Options[string]{Name: "leave"})
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close()
	started, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = fc.Get(ctx, "k", func(context.Context, string) (string, error) {
			close(started)
			<-release
			return "old", nil
		})
	}()
	<-started
	if err := fc.Invalidate(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	r, err := fc.Fetch(ctx, "k", func(context.Context, string) (string, error) { return "new", nil })
	close(release)
	if err != nil || r.Value != "new" || r.Shared || r.Superseded {
		t.Fatalf("a call after Invalidate: %+v, %v; want its own load of \"new\"", r, err)
	}
	if err := fc.Set(ctx, "s", "set"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // the process's own message, if it were not skipped
	r, err = fc.Fetch(ctx, "s", func(context.Context, string) (string, error) { return "loaded", nil })
	if err != nil || r.Value != "set" || r.Source != flight.SourceL1 {
		t.Fatalf("after Set: %+v, %v; want \"set\" from L1", r, err)
	}
}
