package faults

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/testserver"
)

// Outage figures: a stampede of outageProcs processes (a Client and a
// flight Cache each) on outageKeys keys, outageCallers callers per key per
// process, a loader taking outageLoad; the server is killed (SIGKILL) once
// every key's load has started.
const (
	outageProcs   = 8
	outageKeys    = 5
	outageCallers = 5
	outageLoad    = time.Second
	outageLoadTO  = 3 * time.Second // flight.Options.LoadTimeout (3 loads)
	outageOpTO    = time.Second     // flight.Options.OpTimeout
)

// TestOutage: the server dies in the middle of a stampede. Every caller
// is answered with the value (failing open: the loader runs without the
// claim), and within LoadTimeout + OpTimeout of the later of its call and
// the kill (issue 13: a waiting process learns at once that the server
// is gone, from a wake-up or a failed poll, instead of waiting for the
// holder's lease); no process loads a key more than once.
func TestOutage(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) { outageOnce(t, b) })
}

func outageOnce(t *testing.T, b backend) {
	srv := testserver.RequireWith(t, b.kind, nil)
	u := b.urlOf(srv.URL(), outageOpTO)
	name := "outage-" + randHex(4)

	var (
		mu      sync.Mutex
		loads   = map[string]int{} // "proc/key" -> loader calls
		started atomic.Int64
	)
	caches := make([]*flight.Cache[string], outageProcs)
	loaders := make([]flight.LoadFunc[string], outageProcs) // loaders[p]: process p's loader
	for p := range caches {
		loaders[p] = func(ctx context.Context, key string) (string, error) {
			mu.Lock()
			loads[fmt.Sprint(p, "/", key)]++
			mu.Unlock()
			started.Add(1)
			select {
			case <-time.After(outageLoad):
			case <-ctx.Done():
			}
			return "v:" + key, nil
		}
		c, err := flight.New(open(t, u), &flight.Options[string]{
			Name: name, LoadTimeout: outageLoadTO, OpTimeout: outageOpTO, WaitTimeout: time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		caches[p] = c
	}

	type answer struct {
		start, end time.Time
		err        error
		src        flight.Source
	}
	answers := make(chan answer, outageProcs*outageKeys*outageCallers)
	var wg sync.WaitGroup
	for p := range caches {
		for k := range outageKeys {
			for range outageCallers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					start := time.Now()
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					r, err := caches[p].Fetch(ctx, fmt.Sprint("k", k), loaders[p])
					answers <- answer{start, time.Now(), err, r.Source}
				}()
			}
		}
	}
	// Kill the server once every key is being loaded somewhere.
	deadline := time.Now().Add(30 * time.Second)
	for started.Load() < outageKeys && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if started.Load() < outageKeys {
		t.Fatalf("only %d of %d loads started in 30 s", started.Load(), outageKeys)
	}
	killedAt := time.Now()
	if err := srv.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	wg.Wait()
	close(answers)

	var (
		after   []time.Duration // from the later of call and kill to the answer
		errs    int
		firstE  error
		sources = map[flight.Source]int{}
	)
	for a := range answers {
		sources[a.src]++
		from := a.start
		if from.Before(killedAt) {
			from = killedAt
		}
		after = append(after, a.end.Sub(from))
		if a.err != nil {
			errs++
			if firstE == nil {
				firstE = a.err
			}
		}
	}
	slices.Sort(after)
	p99 := after[len(after)*99/100]
	worst := after[len(after)-1]
	bound := outageLoadTO + outageOpTO
	total, twice := 0, 0
	for _, n := range loads {
		total += n
		if n > 1 {
			twice++
		}
	}
	figure(t, "outage", "p99 / max answer after the kill (bound LoadTimeout+OpTimeout "+bound.String()+")", b.name, "%s / %s", ms(p99), ms(worst))
	figure(t, "outage", fmt.Sprintf("loads (%d keys × %d processes: at most %d)", outageKeys, outageProcs, outageKeys*outageProcs), b.name, "%d", total)
	t.Logf("answers by source: %v", sources)
	if errs > 0 {
		t.Errorf("%d of %d callers got an error, want the value (fail open); first: %v", errs, len(after), firstE)
	}
	// The bound is asserted on every answer with errorGrace for the
	// machine's scheduling; the p99 against the bound alone is a figure
	// (reported above): a CI run on a loaded machine answered every
	// caller 0.87 s past it at once, one stall.
	if worst > bound+errorGrace {
		t.Errorf("slowest answer after the kill %s, want at most %s (+%s scheduling grace)", worst, bound, errorGrace)
	}
	if twice > 0 {
		t.Errorf("%d (process, key) pairs loaded more than once; loads %v", twice, loads)
	}
}
