package claim_test

import (
	"context"
	"fmt"
	"time"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/memory" // registers mem://; import your backend's package instead
)

// Run a job once per key across the fleet: whoever acquires the key does
// the work under a lease kept alive in the background, commits the result
// fenced by the lease, and releases it, which wakes every waiter.
func Example() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://example") // e.g. "redis://localhost:6379/0?prefix=app"
	if err != nil {
		panic(err)
	}
	defer c.Close()

	l, err := c.Acquire(ctx, "rebuild:report-42", 10*time.Second) // waits for a holder elsewhere, bounded by its lease
	if err != nil {
		panic(err)
	}
	k := c.KeepAlive(ctx, l, nil) // renews every TTL/3; k.Context() ends the moment the lease is lost
	result := []byte("report 42, rebuilt")
	// ... the work, under k.Context() ...
	if err := c.CommitRelease(ctx, k.Stop(), result, time.Hour); err != nil {
		panic(err) // claim.ErrLost: another holder took over; nothing was written
	}
	v, err := c.Get(ctx, "rebuild:report-42")
	fmt.Printf("%s, token %d\n", v, l.Token)
	// Output: report 42, rebuilt, token 1
}

// GetOrAcquire is the stampede idiom in one call: the stored value, or a
// lease to compute it, waiting in between for whoever holds the key.
func ExampleClient_GetOrAcquire() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://example-get-or-acquire")
	if err != nil {
		panic(err)
	}
	defer c.Close()
	for range 2 {
		got, err := c.GetOrAcquire(ctx, "company:apple", 5*time.Second, nil)
		if err != nil {
			panic(err)
		}
		if got.Found {
			fmt.Printf("found %s\n", got.Value)
			continue
		}
		fmt.Println("computing")
		if err := c.CommitRelease(ctx, got.Lease, []byte("Apple Inc."), time.Hour); err != nil {
			panic(err)
		}
	}
	// Output:
	// computing
	// found Apple Inc.
}

// Topics reach every process of the fleet, on every backend.
func ExampleClient_Publish() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://example-topics")
	if err != nil {
		panic(err)
	}
	defer c.Close()
	got := make(chan string, 1)
	stop, err := c.SubscribeTopic(ctx, "invalidations", func(msg []byte, reset bool) { got <- string(msg) })
	if err != nil {
		panic(err)
	}
	defer stop()
	if err := c.Publish(ctx, "invalidations", []byte("company:apple")); err != nil {
		panic(err)
	}
	fmt.Println(<-got)
	// Output: company:apple
}

// AcquireFair serves waiters in the order they came: a release hands the
// lease to the next one, whose wake-up carries it.
func ExampleClient_AcquireFair() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://fair-example")
	if err != nil {
		panic(err)
	}
	defer c.Close()

	first, err := c.AcquireFair(ctx, "printer", 10*time.Second)
	if err != nil {
		panic(err)
	}
	next := make(chan claim.Lease)
	go func() {
		l, err := c.AcquireFair(ctx, "printer", 10*time.Second) // queued behind first
		if err != nil {
			panic(err)
		}
		next <- l
	}()
	time.Sleep(10 * time.Millisecond)             // (for the example: let it queue)
	if err := c.Release(ctx, first); err != nil { // hands the lease over
		panic(err)
	}
	l := <-next
	fmt.Println("next holder's token is higher:", l.Token > first.Token)
	_ = c.Release(ctx, l)
	// Output: next holder's token is higher: true
}
