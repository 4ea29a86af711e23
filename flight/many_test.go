package flight

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stampede-go/stampede/internal/countdriver"
)

// batchLoader counts its calls and the loads of each key; keys starting
// with "gone" are not found.
type batchLoader struct {
	mu    sync.Mutex
	calls int
	per   map[string]int
	gate  chan struct{}
}

func newBatchLoader() *batchLoader { return &batchLoader{per: map[string]int{}} }

func (l *batchLoader) load(ctx context.Context, keys []string) (map[string]string, error) {
	l.mu.Lock()
	l.calls++
	for _, k := range keys {
		l.per[k]++
	}
	l.mu.Unlock()
	if l.gate != nil {
		<-l.gate
	}
	out := map[string]string{}
	for _, k := range keys {
		if !strings.HasPrefix(k, "gone") {
			out[k] = "v:" + k
		}
	}
	return out, nil
}

func TestGetMany(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	a, pa := newCache(f, &Options[string]{})
	b, _ := newCache(f, &Options[string]{})
	// "l1" in A's L1, "l2" in L2 only (loaded by B), the rest cold.
	if _, err := a.Get(ctx, "l1", func(context.Context, string) (string, error) { return "v:l1", nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "l2", func(context.Context, string) (string, error) { return "v:l2", nil }); err != nil {
		t.Fatal(err)
	}
	l := newBatchLoader()
	pa.mark()
	res, err := a.GetMany(ctx, []string{"l1", "l2", "c1", "gone", "c2", "c1", ""}, l.load)
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		v   string
		src Source
		err error
	}{{"v:l1", SourceL1, nil}, {"v:l2", SourceL2, nil}, {"v:c1", SourceLoaded, nil}, {"", SourceLoaded, ErrNotFound},
		{"v:c2", SourceLoaded, nil}, {"v:c1", SourceLoaded, nil}, {"", SourceNone, ErrInvalidKey}}
	for i, w := range want {
		r := res[i]
		if r.Value != w.v || (w.err == nil && r.Err != nil) || (w.err != nil && !errors.Is(r.Err, w.err)) || (w.err == nil && r.Source != w.src) {
			t.Errorf("result %d: %q from %s, err %v; want %q from %s, err %v", i, r.Value, r.Source, r.Err, w.v, w.src, w.err)
		}
	}
	if l.calls != 1 || l.per["c1"] != 1 || l.per["c2"] != 1 || l.per["gone"] != 1 || len(l.per) != 3 {
		t.Errorf("batch loader: %d calls, keys %v; want one call of c1, c2, gone-", l.calls, l.per)
	}
	// One batched read (l2, c1, c2, gone), one batched subscription,
	// claim and commit of the three cold keys, and the release of "gone"
	// (a not-found, not cached: nothing to commit): 5 round trips.
	c := pa.counts()
	if c.Total() != 5 || c[countdriver.GetMany] != 1 || c[countdriver.SubscribeMany] != 1 || c[countdriver.ClaimMany] != 1 ||
		c[countdriver.CommitReleaseMany] != 1 || c[countdriver.Release] != 1 {
		t.Errorf("round trips: %s, want get-many, subscribe-many, claim-many, commit-release-many and release once each", named(c))
	}
	// The results were cached: B answers them from L2 without loading.
	res, err = b.GetMany(ctx, []string{"c1", "c2"}, noBatch(t))
	if err != nil || res[0].Value != "v:c1" || res[0].Source != SourceL2 || res[1].Value != "v:c2" {
		t.Errorf("B: %+v, %v", res, err)
	}
	if _, err := a.GetMany(ctx, []string{"x"}, nil); !errors.Is(err, ErrNoLoader) {
		t.Errorf("GetMany without a loader: %v, want ErrNoLoader", err)
	}
}

func noBatch(t *testing.T) BatchFunc[string] {
	return func(context.Context, []string) (map[string]string, error) {
		t.Error("unexpected batch load")
		return nil, errors.New("unexpected")
	}
}

// Several processes, many callers each, overlapping batches of a cold key
// space: every key is loaded exactly once across the fleet, every caller
// gets every value.
func TestGetManyHerd(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	l := newBatchLoader()
	const procs, callers, batch, space = 4, 20, 10, 40
	var caches []*Cache[string]
	for range procs {
		c, _ := newCache(f, &Options[string]{})
		caches = append(caches, c)
	}
	var wg sync.WaitGroup
	var bad atomic.Int64
	for p := range procs {
		for i := range callers {
			wg.Go(func() {
				keys := make([]string, batch)
				for j := range keys {
					keys[j] = fmt.Sprintf("k%d", (p*7+i*3+j*5)%space)
				}
				res, err := caches[p].GetMany(ctx, keys, l.load)
				if err != nil {
					t.Error(err)
					return
				}
				for j, r := range res {
					if r.Err != nil || r.Value != "v:"+keys[j] {
						bad.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d wrong answers", bad.Load())
	}
	var twice []string
	for k, n := range l.per {
		if n != 1 {
			twice = append(twice, fmt.Sprintf("%s×%d", k, n))
		}
	}
	sort.Strings(twice)
	if len(twice) > 0 {
		t.Errorf("keys loaded more than once: %v", twice)
	}
	for _, c := range caches {
		idle(t, c)
	}
}

// A Get of a key a GetMany is loading joins it; a GetMany of a key a Get
// is loading joins that.
func TestGetManyCoalesces(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	a, _ := newCache(f, &Options[string]{})
	l := newBatchLoader()
	l.gate = make(chan struct{})
	done := make(chan []Result[string], 1)
	go func() {
		res, _ := a.GetMany(ctx, []string{"x", "y"}, l.load)
		done <- res
	}()
	eventually(t, "the batch is loading", func() bool { l.mu.Lock(); defer l.mu.Unlock(); return l.calls == 1 })
	got := make(chan Result[string], 1)
	go func() {
		r, _ := a.Fetch(ctx, "y", noLoad(t))
		got <- r
	}()
	eventually(t, "the Get joined", func() bool { return a.Stats().Coalesced == 1 })
	close(l.gate)
	if r := <-got; r.Value != "v:y" || !r.Shared {
		t.Errorf("Get joined to the batch: %+v", r)
	}
	if res := <-done; res[0].Value != "v:x" || res[1].Value != "v:y" {
		t.Errorf("GetMany: %+v", res)
	}
	// The other way round.
	gate := make(chan struct{})
	go func() {
		_, _ = a.Get(ctx, "z", func(context.Context, string) (string, error) { <-gate; return "v:z", nil })
	}()
	eventually(t, "the Get is loading", func() bool { a.mu.Lock(); defer a.mu.Unlock(); return a.flights["z"] != nil })
	go func() {
		res, _ := a.GetMany(ctx, []string{"z"}, noBatch(t))
		done <- res
	}()
	eventually(t, "the batch joined", func() bool { return a.Stats().Coalesced == 2 })
	close(gate)
	if res := <-done; res[0].Value != "v:z" || !res[0].Shared {
		t.Errorf("GetMany joined to a Get: %+v", res)
	}
}

// A failing batch loader fails every key it was asked for; the error is
// published like a single load's (another process gets ErrRemoteLoad).
func TestGetManyLoaderError(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	a, _ := newCache(f, &Options[string]{})
	b, _ := newCache(f, &Options[string]{})
	failing := func(context.Context, []string) (map[string]string, error) { return nil, errTest }
	res, err := a.GetMany(ctx, []string{"p", "q"}, failing)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !errors.Is(r.Err, errTest) {
			t.Errorf("key %d: err %v, want the loader's", i, r.Err)
		}
	}
	res, err = b.GetMany(ctx, []string{"p", "q"}, noBatch(t))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if !errors.Is(r.Err, ErrRemoteLoad) {
			t.Errorf("B key %d: err %v, want ErrRemoteLoad", i, r.Err)
		}
	}
}
