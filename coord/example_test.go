package coord_test

import (
	"context"
	"fmt"
	"time"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/memory" // registers mem://; import your backend's package instead
	"github.com/stampede-go/stampede/coord"
)

// One leader at a time across the fleet; the term fences a deposed
// leader's writes.
func ExampleElection() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://election-example") // e.g. "etcd://localhost:2379"
	if err != nil {
		panic(err)
	}
	defer c.Close()

	e, _ := coord.NewElection(c, "scheduler", &coord.ElectionOptions{TTL: 10 * time.Second})
	ld, err := e.Campaign(ctx, "host-a", []byte("10.0.0.1:8080")) // blocks until leader
	if err != nil {
		panic(err)
	}
	// Lead under ld.Context(): it is cancelled the moment leadership is
	// lost. Writes elsewhere carry ld.Term() and are refused below the
	// highest term seen.
	l, _ := e.Leader(ctx)
	fmt.Printf("leader %s at %s, term %d\n", l.ID, l.Value, l.Term)
	if err := ld.Resign(ctx); err != nil {
		panic(err)
	}
	_, err = e.Leader(ctx)
	fmt.Println(err)
	// Output:
	// leader host-a at 10.0.0.1:8080, term 1
	// coord: no leader
}

// At most three holders at once, each with a slot and a fencing token.
func ExampleSemaphore() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://semaphore-example")
	if err != nil {
		panic(err)
	}
	defer c.Close()

	s, err := coord.NewSemaphore(ctx, c, "exports", 3, nil) // every process must ask for 3
	if err != nil {
		panic(err)
	}
	var held []*coord.Permit
	for range 3 {
		p, err := s.Acquire(ctx)
		if err != nil {
			panic(err)
		}
		held = append(held, p)
	}
	_, err = s.TryAcquire(ctx)
	fmt.Println("a fourth:", err != nil)
	for _, p := range held {
		_ = p.Release(ctx)
	}
	// Output: a fourth: true
}

// Many readers or one writer; writers are not starved by readers.
func ExampleRWMutex() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mem://rwmutex-example")
	if err != nil {
		panic(err)
	}
	defer c.Close()

	m, err := coord.NewRWMutex(ctx, c, "catalog", nil)
	if err != nil {
		panic(err)
	}
	r1, _ := m.RLock(ctx)
	r2, _ := m.RLock(ctx) // readers share
	_ = r1.Release(ctx)
	_ = r2.Release(ctx)
	w, err := m.Lock(ctx) // alone
	if err != nil {
		panic(err)
	}
	fmt.Println("writing, token above zero:", w.Write(), w.Token() > 0)
	_ = w.Release(ctx)
	// Output: writing, token above zero: true true
}
