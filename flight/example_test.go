package flight_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/flight"
)

type Company struct {
	ID   int
	Name string
}

// Two processes share one backend: each holds its own *claim.Client (here
// two memory Clients of one in-process Space; in production claim.Open
// with a Redis, etcd, PostgreSQL... URL in each process). The loader runs
// once; each answer says which tier gave it.
func Example() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()

	var calls atomic.Int64
	upsert := func(ctx context.Context, name string) (Company, error) {
		calls.Add(1)
		return Company{ID: 42, Name: name}, nil // e.g. INSERT ... ON CONFLICT DO NOTHING RETURNING id
	}
	a, _ := flight.New[Company](procA, &flight.Options[Company]{Name: "companies", Loader: upsert})
	b, _ := flight.New[Company](procB, &flight.Options[Company]{Name: "companies", Loader: upsert})
	defer a.Close()
	defer b.Close()

	for _, step := range []struct {
		c    *flight.Cache[Company]
		name string
	}{{a, "Apple Inc."}, {a, "APPLE INC"}, {b, "apple  inc"}} {
		r, err := step.c.Fetch(ctx, step.name, nil)
		if err != nil {
			panic(err)
		}
		fmt.Printf("%-12q -> %q id=%d from %v\n", step.name, r.Key, r.Value.ID, r.Source)
	}
	fmt.Println("loader calls:", calls.Load())
	// Output:
	// "Apple Inc." -> "apple inc" id=42 from loaded
	// "APPLE INC"  -> "apple inc" id=42 from L1
	// "apple  inc" -> "apple inc" id=42 from L2
	// loader calls: 1
}

// A thundering herd: 4 processes × 250 concurrent callers miss one key at
// once; the loader runs once.
func Example_herd() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	var calls atomic.Int64
	load := func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		time.Sleep(20 * time.Millisecond) // a slow query
		return "report for " + key, nil
	}
	var wg sync.WaitGroup
	for range 4 {
		b, _ := memory.New(space, nil)
		defer b.Close()
		c, _ := flight.New[string](b, nil)
		defer c.Close()
		for range 250 {
			wg.Go(func() {
				if _, err := c.Get(ctx, "Q3 revenue", load); err != nil {
					panic(err)
				}
			})
		}
	}
	wg.Wait()
	fmt.Println("requests: 1000, loader calls:", calls.Load())
	// Output:
	// requests: 1000, loader calls: 1
}

func ExampleNormalizeKey() {
	for _, k := range []string{"Apple Inc.", "APPLE INC", "apple  inc", "Straße", "ＡＢＣ Ltd.!", "AT&T"} {
		fmt.Printf("%q\n", flight.NormalizeKey(k))
	}
	// Output:
	// "apple inc"
	// "apple inc"
	// "apple inc"
	// "strasse"
	// "abc ltd"
	// "at&t"
}

// A not-found from the loader is cached for NegativeTTL, so a missing key
// does not reach the database on every request.
func ExampleOptions_negativeTTL() {
	ctx := context.Background()
	b, _ := memory.New(nil, nil)
	defer b.Close()
	calls := 0
	c, _ := flight.New[string](b, &flight.Options[string]{
		NegativeTTL: time.Minute,
		Loader: func(ctx context.Context, key string) (string, error) {
			calls++
			return "", fmt.Errorf("no company %q: %w", key, flight.ErrNotFound)
		},
	})
	defer c.Close()
	for range 3 {
		r, err := c.Fetch(ctx, "Initech", nil)
		fmt.Println(errors.Is(err, flight.ErrNotFound), r.Source)
	}
	fmt.Println("loader calls:", calls)
	// Output:
	// true loaded
	// true L1
	// true L1
	// loader calls: 1
}

// With the Fallback policy a caller answers at once while the load runs
// in the background and fills the cache.
func ExampleWithFallback() {
	ctx := context.Background()
	b, _ := memory.New(nil, nil)
	defer b.Close()
	done := make(chan struct{})
	c, _ := flight.New[string](b, &flight.Options[string]{
		Loader: func(ctx context.Context, key string) (string, error) {
			defer close(done)
			time.Sleep(50 * time.Millisecond)
			return "exact price", nil
		},
	})
	defer c.Close()
	r, _ := c.Fetch(ctx, "price", nil, flight.WithFallback("estimate"))
	fmt.Println(r.Value, r.Source)
	<-done
	for {
		if r, _ = c.Fetch(ctx, "price", nil, flight.WithFallback("estimate")); r.Source != flight.SourceFallback {
			break
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println(r.Value, r.Source)
	// Output:
	// estimate fallback
	// exact price L1
}

// Invalidate drops a key from L2 and, through a topic of the Client
// (claim.Client.Publish, on every backend), from every process's L1.
func ExampleCache_Invalidate() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()
	version := 1
	load := func(ctx context.Context, key string) (int, error) { return version, nil }
	a, _ := flight.New[int](procA, &flight.Options[int]{Loader: load})
	b, _ := flight.New[int](procB, &flight.Options[int]{Loader: load})
	defer a.Close()
	defer b.Close()
	v, _ := b.Get(ctx, "config", nil)
	fmt.Println("B sees version", v)
	version = 2
	if err := a.Invalidate(ctx, "config"); err != nil {
		panic(err)
	}
	for { // the invalidation reaches B asynchronously
		if r, _ := b.Fetch(ctx, "config", nil); r.Source != flight.SourceL1 {
			fmt.Println("B sees version", r.Value)
			break
		}
		time.Sleep(time.Millisecond)
	}
	// Output:
	// B sees version 1
	// B sees version 2
}

// A loader error travels like a value: the process that loaded gets the
// loader's own error; another process asking within ErrorTTL gets the
// holder's published error at once (ErrRemoteLoad, a *RemoteError), and
// the loader is not called again.
func ExampleRemoteError() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()
	errUpstream := errors.New("upstream: 503 Service Unavailable")
	var calls atomic.Int64
	load := func(ctx context.Context, key string) (Company, error) {
		calls.Add(1)
		return Company{}, errUpstream
	}
	opt := &flight.Options[Company]{Name: "companies", Loader: load, ErrorTTL: time.Second}
	a, _ := flight.New[Company](procA, opt)
	b, _ := flight.New[Company](procB, opt)
	defer a.Close()
	defer b.Close()

	_, err := a.Get(ctx, "Apple Inc.", nil)
	fmt.Println("A:", err, errors.Is(err, errUpstream))
	_, err = b.Get(ctx, "Apple Inc.", nil)
	var re *flight.RemoteError
	fmt.Println("B:", err, errors.Is(err, flight.ErrRemoteLoad), errors.As(err, &re) && re.Text == errUpstream.Error())
	fmt.Println("loader calls:", calls.Load())
	// Output:
	// A: flight: load "apple inc": upstream: 503 Service Unavailable true
	// B: flight: load "apple inc" failed in the key's holder: upstream: 503 Service Unavailable true true
	// loader calls: 1
}
