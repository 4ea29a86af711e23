package flight_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	a, _ := flight.New[Company](procA, &flight.Options[Company]{Name: "companies"})
	b, _ := flight.New[Company](procB, &flight.Options[Company]{Name: "companies"})
	defer a.Close()
	defer b.Close()

	for _, step := range []struct {
		c    *flight.Cache[Company]
		name string
	}{{a, "Apple Inc."}, {a, "APPLE INC"}, {b, "apple  inc"}} {
		r, err := step.c.Fetch(ctx, step.name, upsert)
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
	find := func(ctx context.Context, key string) (string, error) {
		calls++
		return "", fmt.Errorf("no company %q: %w", key, flight.ErrNotFound)
	}
	c, _ := flight.New[string](b, &flight.Options[string]{NegativeTTL: time.Minute})
	defer c.Close()
	for range 3 {
		r, err := c.Fetch(ctx, "Initech", find)
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
	slow, done := make(chan struct{}), make(chan struct{})
	quote := func(ctx context.Context, key string) (string, error) {
		defer close(done)
		<-slow // a slow pricing service
		return "exact price", nil
	}
	c, _ := flight.New[string](b, nil)
	defer c.Close()
	r, _ := c.Fetch(ctx, "price", quote, flight.WithFallback("estimate"))
	fmt.Println(r.Value, r.Source)
	close(slow)
	<-done
	for { // until the load has filled L1 (a call just before may join it)
		if r, _ = c.Fetch(ctx, "price", quote, flight.WithFallback("estimate")); r.Source == flight.SourceL1 {
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
	a, _ := flight.New[int](procA, nil)
	b, _ := flight.New[int](procB, nil)
	defer a.Close()
	defer b.Close()
	v, _ := b.Get(ctx, "config", load)
	fmt.Println("B sees version", v)
	version = 2
	if err := a.Invalidate(ctx, "config"); err != nil {
		panic(err)
	}
	for { // the invalidation reaches B asynchronously
		if r, _ := b.Fetch(ctx, "config", load); r.Source != flight.SourceL1 {
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
	opt := &flight.Options[Company]{Name: "companies", ErrorTTL: time.Second}
	a, _ := flight.New[Company](procA, opt)
	b, _ := flight.New[Company](procB, opt)
	defer a.Close()
	defer b.Close()

	_, err := a.Get(ctx, "Apple Inc.", load)
	fmt.Println("A:", err, errors.Is(err, errUpstream))
	_, err = b.Get(ctx, "Apple Inc.", load)
	var re *flight.RemoteError
	fmt.Println("B:", err, errors.Is(err, flight.ErrRemoteLoad), errors.As(err, &re) && re.Text == errUpstream.Error())
	fmt.Println("loader calls:", calls.Load())
	// Output:
	// A: flight: load "apple inc": upstream: 503 Service Unavailable true
	// B: flight: load "apple inc" failed in the key's holder: upstream: 503 Service Unavailable true true
	// loader calls: 1
}

// Invalidate fences the loads under way: process A is computing version
// 1 of a key when the data changes and B invalidates the key. A's load
// can no longer store its value in L2 or in any L1 (its lease is
// revoked): A's caller still gets it, marked Superseded, and the next
// call loads version 2.
func ExampleCache_Invalidate_fencing() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()
	var version atomic.Int64
	version.Store(1)
	loading := make(chan struct{}, 1)
	slow := make(chan struct{})
	load := func(ctx context.Context, key string) (int64, error) {
		v := version.Load() // read the data...
		select {
		case loading <- struct{}{}:
		default:
		}
		<-slow // ...and take a while to compute the value
		return v, nil
	}
	a, _ := flight.New[int64](procA, nil)
	b, _ := flight.New[int64](procB, nil)
	defer a.Close()
	defer b.Close()

	first := make(chan flight.Result[int64])
	go func() {
		r, _ := a.Fetch(ctx, "report", load)
		first <- r
	}()
	<-loading // A holds the key's claim and is loading version 1
	version.Store(2)
	if err := b.Invalidate(ctx, "report"); err != nil {
		panic(err)
	}
	close(slow)
	r := <-first
	fmt.Println("A's caller:", r.Value, "superseded:", r.Superseded)
	r, _ = b.Fetch(ctx, "report", load)
	fmt.Println("B:", r.Value, "from", r.Source)
	r, _ = a.Fetch(ctx, "report", load)
	fmt.Println("A:", r.Value, "from", r.Source)
	// Output:
	// A's caller: 1 superseded: true
	// B: 2 from loaded
	// A: 2 from L2
}

// Set writes a value through: to L2, superseding any load of the key
// under way, and out of every other process's L1, whose next call reads
// the new value from L2 without a load.
func ExampleCache_Set() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()
	var calls atomic.Int64
	load := func(ctx context.Context, key string) (string, error) {
		calls.Add(1)
		return "light", nil // what the database holds
	}
	a, _ := flight.New[string](procA, &flight.Options[string]{Name: "themes"})
	b, _ := flight.New[string](procB, &flight.Options[string]{Name: "themes"})
	defer a.Close()
	defer b.Close()

	v, _ := b.Get(ctx, "user 42", load)
	fmt.Println("B:", v)
	// The user changes the setting: A writes the database, then the cache.
	if err := a.Set(ctx, "user 42", "dark"); err != nil {
		panic(err)
	}
	v, _ = a.Get(ctx, "user 42", load)
	fmt.Println("A:", v)
	for { // the drop reaches B's L1 asynchronously
		if r, _ := b.Fetch(ctx, "user 42", load); r.Source != flight.SourceL1 {
			fmt.Println("B:", r.Value, "from", r.Source)
			break
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Println("loader calls:", calls.Load())
	// Output:
	// B: light
	// A: dark
	// B: dark from L2
	// loader calls: 1
}

// GetMany answers a page of keys with one call of a batch loader (one
// query) for the keys no tier has; each key has its own Result, with its
// own error.
func ExampleCache_GetMany() {
	ctx := context.Background()
	b, _ := memory.New(nil, nil)
	defer b.Close()
	c, _ := flight.New[Company](b, &flight.Options[Company]{Name: "companies"})
	defer c.Close()
	db := map[string]Company{"apple inc": {1, "Apple Inc."}, "initech": {2, "Initech"}, "globex": {3, "Globex"}}
	var batches [][]string
	byName := func(ctx context.Context, keys []string) (map[string]Company, error) {
		batches = append(batches, slices.Sorted(slices.Values(keys)))
		found := map[string]Company{} // e.g. SELECT ... WHERE name = ANY($1)
		for _, k := range keys {
			if co, ok := db[k]; ok {
				found[k] = co
			}
		}
		return found, nil // a key left out is not found
	}
	_, _ = c.GetMany(ctx, []string{"Apple Inc."}, byName)

	res, err := c.GetMany(ctx, []string{"APPLE INC", "Initech", "Globex", "Hooli"}, byName)
	if err != nil {
		panic(err) // the call as a whole: ErrClosed
	}
	for _, r := range res {
		if r.Err != nil {
			fmt.Printf("%-11q not found: %v\n", r.Key, errors.Is(r.Err, flight.ErrNotFound))
			continue
		}
		fmt.Printf("%-11q id=%d from %v\n", r.Key, r.Value.ID, r.Source)
	}
	fmt.Println("batch loader calls:", batches)
	// Output:
	// "apple inc" id=1 from L1
	// "initech"   id=2 from loaded
	// "globex"    id=3 from loaded
	// "hooli"     not found: true
	// batch loader calls: [[apple inc] [globex hooli initech]]
}

// A loader sets the lifetime of what it loaded: a quote fresh for 10 ms,
// a company for the Cache's hour, and a not-found cached for an hour
// though Options.NegativeTTL is off. The lifetime travels with the value
// in L2, so every process serves it the same way.
func ExampleSetExpiry() {
	ctx := context.Background()
	b, _ := memory.New(nil, nil)
	defer b.Close()
	c, _ := flight.New[string](b, &flight.Options[string]{TTL: time.Hour})
	defer c.Close()
	calls := map[string]int{}
	load := func(ctx context.Context, key string) (string, error) {
		calls[key]++
		switch key {
		case "acme quote":
			flight.SetExpiry(ctx, flight.Expiry{TTL: 10 * time.Millisecond})
			return "101.50", nil
		case "hooli":
			flight.SetExpiry(ctx, flight.Expiry{TTL: time.Hour})
			return "", flight.ErrNotFound
		}
		return "Apple Inc.", nil
	}
	keys := []string{"ACME quote", "Apple Inc.", "Hooli"}
	for _, k := range keys {
		_, _ = c.Get(ctx, k, load)
	}
	time.Sleep(50 * time.Millisecond)
	for _, k := range keys {
		r, err := c.Fetch(ctx, k, load)
		fmt.Printf("%-12q from %v, not found: %v\n", k, r.Source, errors.Is(err, flight.ErrNotFound))
	}
	fmt.Println("loader calls:", calls)
	// Output:
	// "ACME quote" from loaded, not found: false
	// "Apple Inc." from L1, not found: false
	// "Hooli"      from L1, not found: true
	// loader calls: map[acme quote:2 apple inc:1 hooli:1]
}

// With FailSafeTTL an expired value answers when its refresh fails, instead
// of the error: here the price service goes down after the value expired.
// The failing loader is called once for the whole fleet; the expired value
// is published again in its place for FailSafeThrottle, so the other
// process answers with it from L2 and nobody calls the loader until then.
func ExampleOptions_failSafe() {
	ctx := context.Background()
	space := memory.NewSpace(nil)
	procA, _ := memory.New(space, nil)
	procB, _ := memory.New(space, nil)
	defer procA.Close()
	defer procB.Close()
	opt := &flight.Options[float64]{
		Name:             "prices",
		TTL:              10 * time.Millisecond,
		TTLJitter:        -1,
		FailSafeTTL:      time.Hour,   // keep expired values an hour as fail-safe answers
		FailSafeThrottle: time.Minute, // and call a failing loader at most once a minute
	}
	a, _ := flight.New[float64](procA, opt)
	b, _ := flight.New[float64](procB, opt)
	defer a.Close()
	defer b.Close()
	var down atomic.Bool
	var failed atomic.Int64
	price := func(ctx context.Context, key string) (float64, error) {
		if down.Load() {
			failed.Add(1)
			return 0, errors.New("price service: 503 Service Unavailable")
		}
		return 101.5, nil
	}
	v, _ := a.Get(ctx, "ACME", price)
	fmt.Println("A:", v)
	time.Sleep(50 * time.Millisecond) // the value expires
	down.Store(true)                  // and the price service goes down
	for _, step := range []struct {
		name string
		c    *flight.Cache[float64]
	}{{"A", a}, {"B", b}, {"A", a}} {
		r, err := step.c.Fetch(ctx, "ACME", price)
		fmt.Println(step.name+":", r.Value, "from", r.Source, "error:", err)
	}
	fmt.Println("failed loader calls:", failed.Load(), "fail-safe answers in A:", a.Stats().FailSafe)
	// Output:
	// A: 101.5
	// A: 101.5 from fail-safe error: <nil>
	// B: 101.5 from fail-safe error: <nil>
	// A: 101.5 from fail-safe error: <nil>
	// failed loader calls: 1 fail-safe answers in A: 2
}
