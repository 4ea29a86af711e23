package flight

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// The scenarios the design comes from.
func TestScenarios(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	a, pa := newCache(f, &Options[string]{})

	// One process asks twice: the second is an L1 hit, no backend call.
	r := fetchOK(t, a, ctx, "Apple Inc.", ld.load)
	wantSource(t, r, SourceLoaded)
	before := pa.calls()
	r2 := fetchOK(t, a, ctx, "apple  inc", ld.load)
	wantSource(t, r2, SourceL1)
	if r2.Value != r.Value || pa.calls() != before {
		t.Fatalf("second ask: %q (backend calls %d -> %d), want %q from L1 alone", r2.Value, before, pa.calls(), r.Value)
	}

	// A then B: B hits L2 and fills its L1.
	b, pb := newCache(f, &Options[string]{})
	wantSource(t, fetchOK(t, b, ctx, "APPLE INC.", ld.load), SourceL2)
	before = pb.calls()
	wantSource(t, fetchOK(t, b, ctx, "Apple Inc", ld.load), SourceL1)
	if pb.calls() != before {
		t.Fatal("B's second ask reached the backend")
	}

	// Restart: a new process has an empty L1; L2 answers.
	a.Close()
	a2, _ := newCache(f, &Options[string]{})
	r = fetchOK(t, a2, ctx, "apple inc", ld.load)
	wantSource(t, r, SourceL2)

	// L2 gone: the loader answers again (idempotently, in the real world).
	if err := pa.Delete(ctx, "default:apple inc"); err != nil {
		t.Fatal(err)
	}
	c, _ := newCache(f, &Options[string]{})
	wantSource(t, fetchOK(t, c, ctx, "Apple Inc.", ld.load), SourceLoaded)
	if n := ld.count("apple inc"); n != 2 {
		t.Fatalf("loader calls after L2 loss: %d, want 2", n)
	}

	// Thundering herd across processes: one load.
	var caches []*Cache[string]
	for range 4 {
		c, _ := newCache(f, &Options[string]{})
		caches = append(caches, c)
	}
	var wg sync.WaitGroup
	for _, c := range caches {
		for range 50 {
			wg.Go(func() {
				if _, err := c.Get(ctx, "Globex Corp", ld.load); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	if n := ld.count("globex corp"); n != 1 {
		t.Fatalf("herd: %d loader calls, want 1", n)
	}
}

// herd runs procs × callers concurrent Gets of each key and checks there
// was one loader call per key, and every caller got that call's value.
// slow: on backends without the one-round-trip paths.
func herd(t *testing.T, slow bool, procs, callers int, keys []string) {
	ctx := context.Background()
	f := newFleet(t)
	f.slow = slow
	ld := newLoader()
	ld.delay = 5 * time.Millisecond
	var caches []*Cache[string]
	for range procs {
		c, _ := newCache(f, &Options[string]{})
		caches = append(caches, c)
	}
	start := make(chan struct{})
	var (
		mu  sync.Mutex
		got = map[string]map[string]int{}
		wg  sync.WaitGroup
	)
	for i, c := range caches {
		for j := range callers {
			key := keys[(i+j)%len(keys)]
			wg.Go(func() {
				<-start
				v, err := c.Get(ctx, key, ld.load)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if got[key] == nil {
					got[key] = map[string]int{}
				}
				got[key][v]++
				mu.Unlock()
			})
		}
	}
	close(start)
	wg.Wait()
	for _, k := range keys {
		if n := ld.count(k); n != 1 {
			t.Errorf("key %q: %d loader calls, want 1", k, n)
		}
		if len(got[k]) != 1 {
			t.Errorf("key %q: callers saw %d different values: %v", k, len(got[k]), got[k])
		}
	}
	var st Stats
	for _, c := range caches {
		s := c.Stats()
		st.Loads += s.Loads
		st.Requests += s.Requests
		st.Commits += s.Commits
		st.FailOpen += s.FailOpen
		st.LostCommits += s.LostCommits
	}
	if st.Loads != uint64(len(keys)) || st.Commits != uint64(len(keys)) || st.Requests != uint64(procs*callers) {
		t.Errorf("fleet stats: %d loads, %d commits, %d requests; want %d, %d, %d", st.Loads, st.Commits, st.Requests, len(keys), len(keys), procs*callers)
	}
	if st.FailOpen != 0 || st.LostCommits != 0 {
		t.Errorf("fleet stats: %d flights failed open, %d commits lost; want none", st.FailOpen, st.LostCommits)
	}
}

func TestHerdOneKey(t *testing.T) {
	for run := range 3 {
		t.Run(fmt.Sprint(run), func(t *testing.T) { herd(t, false, 8, 1000, []string{"one key"}) })
	}
	t.Run("slow", func(t *testing.T) { herd(t, true, 8, 1000, []string{"one key"}) })
}

func TestHerdManyKeys(t *testing.T) {
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = fmt.Sprintf("key %d", i)
	}
	t.Run("fast", func(t *testing.T) { herd(t, false, 8, 1000, keys) })
	t.Run("slow", func(t *testing.T) { herd(t, true, 8, 1000, keys) })
}

// The holder's process stops mid-load (no renewals, no release): a
// waiter takes over after the lease; the value is loaded twice and
// committed once; the stale holder's late commit is refused.
func TestHolderDies(t *testing.T) {
	t.Run("fast", func(t *testing.T) { holderDies(t, false) })
	t.Run("slow", func(t *testing.T) { holderDies(t, true) })
}

func holderDies(t *testing.T, slow bool) {
	ctx := context.Background()
	f := newFleet(t)
	f.slow = slow
	lease := 200 * time.Millisecond
	gate := make(chan struct{})
	started := make(chan struct{})
	a, pa := newCache(f, &Options[string]{LeaseTTL: lease, noKeepAlive: true})
	b, pb := newCache(f, &Options[string]{LeaseTTL: lease})

	type res struct {
		r   Result[string]
		err error
	}
	aDone := make(chan res, 1)
	go func() {
		r, err := a.Fetch(ctx, "k", func(ctx context.Context, key string) (string, error) {
			close(started)
			<-gate // a stopped process: ignores its context, never renews
			return "from A", nil
		})
		aDone <- res{r, err}
	}()
	<-started
	r, err := b.Fetch(ctx, "k", func(context.Context, string) (string, error) { return "from B", nil })
	if err != nil {
		t.Fatal(err)
	}
	if r.Value != "from B" || r.Source != SourceLoaded {
		t.Fatalf("B got %q from %v, want its own load", r.Value, r.Source)
	}
	if st := b.Stats(); st.Takeovers != 1 || st.Waits != 1 || st.Commits != 1 {
		t.Fatalf("B stats %+v: want 1 wait, 1 takeover, 1 commit", st)
	}
	close(gate)
	ar := <-aDone
	if ar.err != nil || ar.r.Value != "from A" {
		t.Fatalf("A got %q, %v; want its own value", ar.r.Value, ar.err)
	}
	if st := a.Stats(); st.LostCommits != 1 || st.Commits != 0 {
		t.Fatalf("A stats %+v: want its commit refused", st)
	}
	if pa.commits() != 0 || pb.commits() != 1 {
		t.Fatalf("commits landed: A %d, B %d; want 0 and 1", pa.commits(), pb.commits())
	}
	c, _ := newCache(f, &Options[string]{})
	r = fetchOK(t, c, ctx, "k", func(context.Context, string) (string, error) { return "", errTest })
	if r.Value != "from B" || r.Source != SourceL2 {
		t.Fatalf("L2 holds %q (%v), want B's value", r.Value, r.Source)
	}
}

// A crashed process: its claim.Client is closed (memory leases outlive
// it, like a dead process's), so it neither renews nor releases.
func TestHolderCrashes(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	lease := 200 * time.Millisecond
	started := make(chan struct{})
	gate := make(chan struct{})
	a, pa := newCache(f, &Options[string]{LeaseTTL: lease})
	b, _ := newCache(f, &Options[string]{LeaseTTL: lease})
	aDone := make(chan error, 1)
	var cause error
	go func() {
		_, err := a.Get(ctx, "k", func(ctx context.Context, _ string) (string, error) {
			close(started)
			select {
			case <-gate:
			case <-ctx.Done(): // the keeper lost the lease
				cause = context.Cause(ctx)
			}
			return "", ctx.Err()
		})
		aDone <- err
	}()
	<-started
	pa.Close()
	v, err := b.Get(ctx, "k", func(context.Context, string) (string, error) { return "from B", nil })
	if err != nil || v != "from B" {
		t.Fatalf("B: %q, %v", v, err)
	}
	close(gate)
	if err := <-aDone; err == nil {
		t.Fatal("A's load succeeded without its lease")
	}
	if !errors.Is(cause, claim.ErrLost) {
		t.Fatalf("A's loader context ended with %v, want the lost lease", cause)
	}
	if st := b.Stats(); st.Takeovers != 1 {
		t.Fatalf("B stats %+v: want a takeover", st)
	}
}

// A process whose callers use the Fallback policy answers at once while
// another process holds the claim, and picks the value up afterwards.
func TestFallbackAcrossProcesses(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	ld.gate = make(chan struct{})
	ld.called = make(chan string, 1)
	a, _ := newCache(f, &Options[string]{})
	b, _ := newCache(f, &Options[string]{Wait: Fallback})
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Get(ctx, "k", ld.load)
	}()
	<-ld.called
	r := fetchOK(t, b, ctx, "k", ld.load)
	if r.Source != SourceFallback || r.Value != "" {
		t.Fatalf("B: %q from %v, want the zero fallback", r.Value, r.Source)
	}
	close(ld.gate)
	<-done
	idle(t, b)
	r = fetchOK(t, b, ctx, "k", ld.load)
	if r.Source != SourceL1 || r.Value != "v1:k" {
		t.Fatalf("B afterwards: %q from %v", r.Value, r.Source)
	}
	if ld.total.Load() != 1 {
		t.Fatalf("%d loads", ld.total.Load())
	}
}

func TestLeaderCancelled(t *testing.T) {
	type ctxKey struct{}
	f := newFleet(t)
	c, _ := newCache(f, &Options[string]{})
	gate := make(chan struct{})
	started := make(chan struct{})
	var loadCtxErr error
	var loadVal any
	load := func(ctx context.Context, key string) (string, error) {
		close(started)
		<-gate
		loadCtxErr, loadVal = ctx.Err(), ctx.Value(ctxKey{})
		return "v", nil
	}
	lctx, cancel := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "leader"))
	leader := make(chan error, 1)
	go func() {
		_, err := c.Get(lctx, "k", load)
		leader <- err
	}()
	<-started
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for range 10 {
		wg.Go(func() {
			r, err := c.Fetch(context.Background(), "k", load)
			if err == nil && (r.Value != "v" || !r.Shared) {
				err = fmt.Errorf("got %q shared=%v", r.Value, r.Shared)
			}
			errs <- err
		})
	}
	eventually(t, "followers joined", func() bool { return c.Stats().Coalesced == 10 })
	cancel()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader: %v, want context.Canceled", err)
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if loadCtxErr != nil || loadVal != "leader" {
		t.Fatalf("load context: err %v, value %v; want live, with the leader's values", loadCtxErr, loadVal)
	}
}

// released checks no lease is left on the key: another process can claim it.
func released(t *testing.T, f *fleet, key string) {
	t.Helper()
	p := f.proc()
	l, err := p.TryClaim(context.Background(), key, time.Second)
	if err != nil {
		t.Fatalf("claim %q still held: %v", key, err)
	}
	p.Release(context.Background(), l)
}

func TestLoaderPanicAndGoexit(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fail  func()
		check func(error) bool
	}{
		{"panic", func() { panic("boom") }, func(err error) bool {
			var pe *PanicError
			return errors.As(err, &pe) && pe.Value == "boom" && len(pe.Stack) > 0
		}},
		{"panic error", func() { panic(errTest) }, func(err error) bool { return errors.Is(err, errTest) }},
		{"goexit", runtime.Goexit, func(err error) bool { return errors.Is(err, ErrGoexit) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			c, _ := newCache(f, &Options[string]{})
			gate := make(chan struct{})
			load := func(context.Context, string) (string, error) {
				<-gate
				tc.fail()
				return "unreachable", nil
			}
			var wg sync.WaitGroup
			errs := make(chan error, 20)
			for range 20 {
				wg.Go(func() {
					_, err := c.Get(context.Background(), "k", load)
					errs <- err
				})
			}
			eventually(t, "callers joined", func() bool { return c.Stats().Coalesced == 19 })
			close(gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				if !tc.check(err) {
					t.Fatalf("caller got %v", err)
				}
			}
			released(t, f, "default:k")
			// Within ErrorTTL the failure is the key's answer, the
			// loader's own error still underneath in this process.
			ok := func(context.Context, string) (string, error) { return "ok", nil }
			_, err := c.Get(context.Background(), "k", ok)
			if !errors.Is(err, ErrRemoteLoad) || !tc.check(err) {
				t.Fatalf("after the failure: %v, want the published failure", err)
			}
			if err := c.Invalidate(context.Background(), "k"); err != nil {
				t.Fatal(err)
			}
			v, err := c.Get(context.Background(), "k", ok)
			if err != nil || v != "ok" {
				t.Fatalf("after Invalidate: %q, %v", v, err)
			}
			if st := c.Stats(); st.Loads != 2 || st.LoadErrors != 1 || st.Errors != 21 || st.ErrorHits != 1 || st.ErrorCommits != 1 {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

func TestHungLoader(t *testing.T) {
	f := newFleet(t)
	c, _ := newCache(f, &Options[string]{LoadTimeout: 50 * time.Millisecond})
	gate := make(chan struct{})
	defer close(gate)
	_, err := c.Get(context.Background(), "k", func(context.Context, string) (string, error) {
		<-gate // ignores its context
		return "late", nil
	})
	if !errors.Is(err, ErrLoadTimeout) {
		t.Fatalf("got %v, want ErrLoadTimeout", err)
	}
	released(t, f, "default:k")
}

func TestLoaderError(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	// ErrorTTL off: errors are not kept.
	c, _ := newCache(f, &Options[string]{ErrorTTL: -1})
	_, err := c.Get(ctx, "k", func(context.Context, string) (string, error) { return "", errTest })
	if !errors.Is(err, errTest) || errors.Is(err, ErrRemoteLoad) {
		t.Fatalf("got %v", err)
	}
	v, err := c.Get(ctx, "k", func(context.Context, string) (string, error) { return "v", nil })
	if err != nil || v != "v" {
		t.Fatalf("got %q, %v", v, err)
	}
	if st := c.Stats(); st.ErrorCommits != 0 || st.ErrorHits != 0 || st.Loads != 2 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCorruptL2(t *testing.T) {
	ctx := context.Background()
	for name, data := range map[string][]byte{
		"garbage":    []byte("not an envelope"),
		"empty":      {},
		"truncated":  appendEnvelope(nil, envelope{schema: "string", payload: []byte(`"x"`)})[:20],
		"bad json":   appendEnvelope(nil, envelope{written: time.Now(), fresh: time.Hour, schema: "string", payload: []byte(`{`)}),
		"other type": appendEnvelope(nil, envelope{written: time.Now(), fresh: time.Hour, schema: "string", payload: []byte(`42`)}),
		"old schema": appendEnvelope(nil, envelope{written: time.Now(), fresh: time.Hour, schema: "v0", payload: []byte(`"old"`)}),
	} {
		t.Run(name, func(t *testing.T) {
			f := newFleet(t)
			c, p := newCache(f, &Options[string]{})
			if err := p.Set(ctx, "default:k", data, 0); err != nil {
				t.Fatal(err)
			}
			r := fetchOK(t, c, ctx, "k", func(context.Context, string) (string, error) { return "fresh", nil })
			if r.Value != "fresh" || r.Source != SourceLoaded {
				t.Fatalf("got %q from %v", r.Value, r.Source)
			}
			if st := c.Stats(); st.DecodeErrors == 0 {
				t.Fatal("decode error not counted")
			}
		})
	}
}

func TestSchemaChange(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	v1, _ := newCache(f, &Options[string]{Schema: "v1"})
	v2, _ := newCache(f, &Options[string]{Schema: "v2"})
	fetchOK(t, v1, ctx, "k", func(context.Context, string) (string, error) { return "one", nil })
	r := fetchOK(t, v2, ctx, "k", func(context.Context, string) (string, error) { return "two", nil })
	if r.Value != "two" || r.Source != SourceLoaded {
		t.Fatalf("v2 read %q from %v; want a miss and its own load", r.Value, r.Source)
	}
}

func TestNegativeCaching(t *testing.T) {
	ctx := context.Background()
	notFound := func(calls *int) LoadFunc[string] {
		return func(context.Context, string) (string, error) {
			*calls++
			return "", fmt.Errorf("no such company: %w", ErrNotFound)
		}
	}
	t.Run("cached", func(t *testing.T) {
		f := newFleet(t)
		calls := 0
		load := notFound(&calls)
		a, _ := newCache(f, &Options[string]{NegativeTTL: time.Hour})
		b, _ := newCache(f, &Options[string]{NegativeTTL: time.Hour})
		for i, c := range []*Cache[string]{a, a, b} {
			r, err := c.Fetch(ctx, "nobody", load)
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("ask %d: %v, want ErrNotFound", i, err)
			}
			if want := []Source{SourceLoaded, SourceL1, SourceL2}[i]; r.Source != want {
				t.Fatalf("ask %d from %v, want %v", i, r.Source, want)
			}
		}
		if calls != 1 {
			t.Fatalf("%d loader calls, want 1", calls)
		}
		if st := a.Stats(); st.Errors != 0 || st.Loaded != 1 || st.L1Hits != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
	t.Run("not cached by default", func(t *testing.T) {
		f := newFleet(t)
		calls := 0
		load := notFound(&calls)
		a, _ := newCache(f, &Options[string]{})
		for range 2 {
			if _, err := a.Get(ctx, "nobody", load); !errors.Is(err, ErrNotFound) {
				t.Fatal(err)
			}
		}
		if calls != 2 {
			t.Fatalf("%d loader calls, want 2", calls)
		}
	})
}

// flight's ErrNotFound, ErrInvalidKey and ErrClosed are claim's
// sentinels, so a loader's not-found is recognised whichever name it
// uses, and also when it passes on a claim.Client's own not-found
// (reading another store through the Client): cached with NegativeTTL,
// never counted as an error, matched by both names.
func TestLoaderNotFoundIsClaimNotFound(t *testing.T) {
	for _, s := range []struct {
		flight, claim error
		msg           string
	}{{ErrNotFound, claim.ErrNotFound, "not found"}, {ErrInvalidKey, claim.ErrInvalidKey, "invalid key"}, {ErrClosed, claim.ErrClosed, "closed"}} {
		if s.flight != s.claim || s.flight.Error() != s.msg {
			t.Fatalf("flight's %q is not claim's %q", s.flight, s.claim)
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		err  func(p *proc) error
	}{
		{"flight.ErrNotFound", func(*proc) error { return fmt.Errorf("no such company: %w", ErrNotFound) }},
		{"claim.ErrNotFound", func(*proc) error { return fmt.Errorf("no such company: %w", claim.ErrNotFound) }},
		{"bare", func(*proc) error { return claim.ErrNotFound }},
		{"client's own", func(p *proc) error {
			_, err := p.Get(ctx, "registry:nobody")
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, negative := range []time.Duration{time.Hour, 0} {
				f := newFleet(t)
				var calls atomic.Int64
				mk := func(p *proc) LoadFunc[string] {
					return func(context.Context, string) (string, error) {
						calls.Add(1)
						return "", tc.err(p)
					}
				}
				pa, pb := f.proc(), f.proc()
				a := openProcCache(t, pa, &Options[string]{NegativeTTL: negative})
				b := openProcCache(t, pb, &Options[string]{NegativeTTL: negative})
				load := map[*Cache[string]]LoadFunc[string]{a: mk(pa), b: mk(pb)} // each process's loader reads through it
				want := []Source{SourceLoaded, SourceL1, SourceL2}
				if negative == 0 {
					want = []Source{SourceLoaded, SourceLoaded, SourceLoaded}
				}
				for i, c := range []*Cache[string]{a, a, b} {
					r, err := c.Fetch(ctx, "nobody", load[c])
					if !errors.Is(err, ErrNotFound) || !errors.Is(err, claim.ErrNotFound) {
						t.Fatalf("NegativeTTL %v, ask %d: %v, want a not-found", negative, i, err)
					}
					if r.Source != want[i] || r.Value != "" {
						t.Fatalf("NegativeTTL %v, ask %d: %q from %v, want nothing from %v", negative, i, r.Value, r.Source, want[i])
					}
				}
				wantCalls := int64(1)
				if negative == 0 {
					wantCalls = 3
				}
				if n := calls.Load(); n != wantCalls {
					t.Fatalf("NegativeTTL %v: %d loader calls, want %d", negative, n, wantCalls)
				}
				for _, c := range []*Cache[string]{a, b} {
					if st := c.Stats(); st.Errors != 0 || st.LoadErrors != 0 {
						t.Fatalf("NegativeTTL %v: stats %+v: a not-found counted as an error", negative, st)
					}
				}
			}
		})
	}
}

func TestStaleWhileRevalidate(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	opt := func() *Options[string] {
		return &Options[string]{TTL: 300 * time.Millisecond, TTLJitter: -1, StaleTTL: time.Hour}
	}
	var caches []*Cache[string]
	for range 4 {
		c, _ := newCache(f, opt())
		caches = append(caches, c)
	}
	first := fetchOK(t, caches[0], ctx, "k", ld.load).Value
	for _, c := range caches[1:] {
		fetchOK(t, c, ctx, "k", ld.load)
	}
	time.Sleep(350 * time.Millisecond) // past the TTL: every copy is stale
	ld.gate = make(chan struct{})
	var wg sync.WaitGroup
	for _, c := range caches {
		for range 10 {
			wg.Go(func() {
				r, err := c.Fetch(ctx, "k", ld.load)
				if err != nil || r.Source != SourceStale || r.Value != first {
					t.Errorf("got %q from %v (%v), want the stale %q at once", r.Value, r.Source, err, first)
				}
			})
		}
	}
	wg.Wait() // nobody waited for the refresh: it is still gated
	close(ld.gate)
	for _, c := range caches {
		idle(t, c)
	}
	if n := ld.count("k"); n != 2 {
		t.Fatalf("%d loads, want 2 (one refresh fleet-wide)", n)
	}
	for _, c := range caches {
		r := fetchOK(t, c, ctx, "k", ld.load)
		if r.Value == first {
			t.Fatalf("still stale after the refresh: %q from %v", r.Value, r.Source)
		}
	}
	// The Fresh policy waits for a fresh value.
	time.Sleep(350 * time.Millisecond)
	r := fetchOK(t, caches[0], ctx, "k", ld.load, WithPolicy[string](Fresh))
	if r.Source == SourceStale {
		t.Fatalf("Fresh policy got a stale value")
	}
}

func TestEarlyRefresh(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	ld.delay = time.Millisecond
	// A huge β makes every fresh hit refresh.
	a, _ := newCache(f, &Options[string]{EarlyRefresh: 1e12})
	b, _ := newCache(f, &Options[string]{EarlyRefresh: 1e12})
	first := fetchOK(t, a, ctx, "k", ld.load)
	wantSource(t, fetchOK(t, a, ctx, "k", ld.load), SourceL1) // triggers a refresh
	idle(t, a)
	if n := ld.count("k"); n != 2 {
		t.Fatalf("%d loads, want 2", n)
	}
	r := fetchOK(t, a, ctx, "k", ld.load)
	if r.Value == first.Value {
		t.Fatal("refresh did not replace the value in L1")
	}
	idle(t, a)
	r = fetchOK(t, b, ctx, "k", ld.load)
	if r.Source != SourceL2 {
		t.Fatalf("B: %v", r.Source)
	}
	if st := a.Stats(); st.Refreshes < 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestInvalidate(t *testing.T) {
	ctx := context.Background()
	t.Run("broadcast", func(t *testing.T) {
		f := newFleet(t)
		ld := newLoader()
		var caches []*Cache[string]
		for range 4 {
			c, _ := newCache(f, &Options[string]{L1TTL: time.Hour})
			fetchOK(t, c, ctx, "k", ld.load)
			caches = append(caches, c)
		}
		if err := caches[0].Invalidate(ctx, "K."); err != nil {
			t.Fatal(err)
		}
		for i, c := range caches {
			eventually(t, fmt.Sprintf("process %d dropped the key", i), func() bool {
				_, ok := c.l1.GetIfPresent("k")
				return !ok
			})
		}
		for _, c := range caches {
			r := fetchOK(t, c, ctx, "k", ld.load)
			if r.Value != "v2:k" {
				t.Fatalf("after invalidation: %q from %v", r.Value, r.Source)
			}
		}
		if n := ld.count("k"); n != 2 {
			t.Fatalf("%d loads, want 2", n)
		}
	})
	// A Client whose driver has no native bus carries the invalidation
	// through its topic log (kept under a reserved key, read by every
	// process on the release that appends to it): every process's L1
	// drops the key, a little later than over a bus. Before the Client,
	// flight did not publish without a Broadcaster and other processes
	// kept their L1 copy until L1TTL.
	t.Run("topic log", func(t *testing.T) {
		f := newFleet(t)
		f.noBus = true
		ld := newLoader()
		var caches []*Cache[string]
		var procs []*proc
		for range 3 {
			c, p := newCache(f, &Options[string]{L1TTL: time.Hour})
			if p.Features().Broadcast {
				t.Fatal("the Client sees a native bus")
			}
			caches = append(caches, c)
			procs = append(procs, p)
		}
		// Twice: the first Invalidate creates the topic's log, the second
		// appends to it.
		for round := 1; round <= 2; round++ {
			want := fmt.Sprintf("v%d:k", round)
			for i, c := range caches {
				if r := fetchOK(t, c, ctx, "k", ld.load); r.Value != want {
					t.Fatalf("round %d, process %d: %q from %v, want %q", round, i, r.Value, r.Source, want)
				}
				if _, ok := c.l1.GetIfPresent("k"); !ok {
					t.Fatalf("round %d, process %d: k not in L1", round, i)
				}
			}
			if err := caches[round%len(caches)].Invalidate(ctx, "K."); err != nil {
				t.Fatal(err)
			}
			for i, c := range caches {
				eventually(t, fmt.Sprintf("round %d: process %d dropped the key", round, i), func() bool {
					_, ok := c.l1.GetIfPresent("k")
					return !ok
				})
			}
		}
		r := fetchOK(t, caches[1], ctx, "k", ld.load)
		if r.Value != "v3:k" || r.Source != SourceLoaded {
			t.Fatalf("after the invalidations: %q from %v, want a third load", r.Value, r.Source)
		}
		if n := ld.count("k"); n != 3 {
			t.Fatalf("%d loads, want 3", n)
		}
		for i, p := range procs {
			if n := p.n.Load(countdriver.Publish) + p.n.Load(countdriver.SubscribeTopic); n != 0 {
				t.Fatalf("process %d used a native bus (%d calls)", i, n)
			}
		}
	})
}

func TestFallbackPolicy(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	ld.gate = make(chan struct{})
	c, _ := newCache(f, &Options[string]{})
	r, err := c.Fetch(ctx, "k", ld.load, WithFallback("guess"))
	if err != nil || r.Value != "guess" || r.Source != SourceFallback {
		t.Fatalf("got %q from %v, %v", r.Value, r.Source, err)
	}
	// A fallback of another type does not compile: WithFallback(42) is a
	// CallOption[int].
	close(ld.gate)
	idle(t, c)
	wantSource(t, fetchOK(t, c, ctx, "k", ld.load), SourceL1)
	if ld.count("k") != 1 {
		t.Fatal("the background load did not fill the cache")
	}
}

func TestFailOpen(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	ld.gate = make(chan struct{})
	c, p := newCache(f, &Options[string]{})
	p.Close() // unreachable
	var wg sync.WaitGroup
	for range 100 {
		wg.Go(func() {
			r, err := c.Fetch(ctx, "k", ld.load)
			if err != nil || r.Source != SourceLoaded {
				t.Errorf("fail open: %q from %v, %v", r.Value, r.Source, err)
			}
		})
	}
	// Every caller joins the load before it ends (a caller arriving after
	// it would be an L1 hit).
	eventually(t, "callers joined", func() bool { return c.Stats().Coalesced == 99 })
	close(ld.gate)
	wg.Wait()
	if n := ld.count("k"); n != 1 {
		t.Fatalf("%d loads, want 1 (coalesced in-process)", n)
	}
	if st := c.Stats(); st.FailOpen != 1 {
		t.Fatalf("stats %+v", st)
	}

	closed, p2 := newCache(f, &Options[string]{FailClosed: true})
	p2.Close()
	if _, err := closed.Get(ctx, "k", ld.load); !errors.Is(err, ErrBackend) || !errors.Is(err, claim.ErrClosed) {
		t.Fatalf("fail closed: %v", err)
	}
}

func TestWaitTimeout(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	gate := make(chan struct{})
	started := make(chan struct{})
	a, _ := newCache(f, &Options[string]{})
	b, _ := newCache(f, &Options[string]{WaitTimeout: 50 * time.Millisecond})
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.Get(ctx, "k", func(context.Context, string) (string, error) {
			close(started)
			<-gate
			return "a", nil
		})
	}()
	<-started
	_, err := b.Get(ctx, "k", func(context.Context, string) (string, error) { return "b", nil })
	if !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("got %v, want ErrWaitTimeout", err)
	}
	close(gate)
	<-done
}

func TestCallerContext(t *testing.T) {
	f := newFleet(t)
	c, _ := newCache(f, &Options[string]{})
	gate := make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := c.Get(ctx, "k", func(context.Context, string) (string, error) { <-gate; return "v", nil })
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	close(gate)
	idle(t, c)
	// The load went on and filled the cache.
	wantSource(t, fetchOK(t, c, context.Background(), "k", func(context.Context, string) (string, error) { return "", errTest }), SourceL1)
}

func TestKeyNormalisation(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	c, _ := newCache(f, &Options[string]{})
	for _, k := range []string{"Apple Inc.", "Apple Inc", "APPLE INC.", "apple  inc", " apple\tinc! "} {
		fetchOK(t, c, ctx, k, ld.load)
	}
	if ld.total.Load() != 1 {
		t.Fatalf("%d loads, want 1", ld.total.Load())
	}
	if _, err := c.Get(ctx, " ...", ld.load); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("got %v, want ErrInvalidKey", err)
	}
	id, _ := newCache(f, &Options[string]{Normalize: Identity, Name: "raw"})
	fetchOK(t, id, ctx, "Apple Inc.", ld.load)
	fetchOK(t, id, ctx, "apple inc", ld.load)
	if ld.total.Load() != 3 {
		t.Fatalf("Identity: %d loads, want 3", ld.total.Load())
	}
}

func TestClose(t *testing.T) {
	f := newFleet(t)
	c, _ := newCache(f, &Options[string]{})
	gate := make(chan struct{})
	defer close(gate)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Get(context.Background(), "k", func(ctx context.Context, _ string) (string, error) {
			select {
			case <-gate:
			case <-ctx.Done():
			}
			return "", ctx.Err()
		})
		errc <- err
	}()
	eventually(t, "load started", func() bool { return c.Stats().Loads == 1 })
	c.Close()
	if err := <-errc; err == nil {
		t.Fatal("a Get running across Close succeeded")
	}
	if _, err := c.Get(context.Background(), "k", func(context.Context, string) (string, error) { return "", nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if _, err := c.Get(context.Background(), "k", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

func TestNoLoaderAndNoL1(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	c, p := newCache(f, &Options[string]{L1Size: -1})
	if _, err := c.Get(ctx, "k", nil); !errors.Is(err, ErrNoLoader) {
		t.Fatalf("got %v", err)
	}
	load := func(context.Context, string) (string, error) { return "v", nil }
	wantSource(t, fetchOK(t, c, ctx, "k", load), SourceLoaded)
	before := p.counts()
	wantSource(t, fetchOK(t, c, ctx, "k", load), SourceL2)
	if d := p.counts().Sub(before); d[countdriver.Get] != 1 || d.Total() != 1 {
		t.Fatal("without L1, a hit should cost one L2 read")
	}
}

// Backend round trips of one process for one key do not grow with its
// number of callers: the holder's process costs get, subscribe,
// claim+read, commit+release (4) on a driver with the fast paths
// (driver.ClaimReader, driver.CommitReleaser), and get, subscribe, claim,
// get, commit, release (6) on one without (the Client's fallbacks); a
// waiting process costs get, subscribe, claim (3) when the holder's
// wake-up carries its value (driver.ValueNotifier and CommitRelease), and
// one get more (4) when it does not. A driver without a native bus
// changes nothing here: the Client's topic log costs round trips when the
// Cache opens and on Invalidate, never per key.
func TestRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name                 string
		slow, noBus, noValue bool
		holder, waiter       int64
	}{
		{"fast", false, false, false, 4, 3},
		{"slow", true, false, false, 6, 4}, // commit, then a release that carries no value
		{"topic log", false, true, false, 4, 3},
		{"no value in wake-ups", false, false, true, 4, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f := newFleet(t)
			f.slow, f.noBus, f.noValue = tc.slow, tc.noBus, tc.noValue
			ld := newLoader()
			ld.gate = make(chan struct{})
			ld.called = make(chan string, 1)
			holder, ph := newCache(f, &Options[string]{})
			waiter, pw := newCache(f, &Options[string]{})
			var wg sync.WaitGroup
			wg.Go(func() {
				if _, err := holder.Get(ctx, "k", ld.load); err != nil {
					t.Error(err)
				}
			})
			<-ld.called
			for range 100 {
				wg.Go(func() {
					if r, err := waiter.Fetch(ctx, "k", ld.load); err != nil || r.Source != SourceRemote {
						t.Errorf("waiter: %v, %v", r.Source, err)
					}
				})
			}
			// The waiter's claim came back held: it waits (Stats.Waits
			// counts a wait only once it is over).
			eventually(t, "waiter waits", func() bool { return pw.heldClaims() == 1 && waiter.Stats().Coalesced == 99 })
			close(ld.gate)
			wg.Wait()
			if st := waiter.Stats(); st.Waits != 1 || st.Remote != 100 {
				t.Fatalf("waiter stats %+v: want 1 wait, 100 remote answers", st)
			}
			if h, w := ph.trips(), pw.trips(); h != tc.holder || w != tc.waiter {
				t.Fatalf("round trips: holder %d %v, waiter %d %v; want %d and %d", h, named(ph.counts()), w, named(pw.counts()), tc.holder, tc.waiter)
			}
			if ph.commits() != 1 {
				t.Fatalf("holder commits: %d, want 1", ph.commits())
			}
		})
	}
}

// A value committed by another process between this process's L2 read
// and its claim is adopted by the new holder, not loaded again: the
// Client's waiting engine reads the value with the claim (claim+read,
// one round trip with the driver's fast path, claim then get without),
// releases the claim at once, and the caller gets the value from L2. A
// value the Cache cannot use (another schema) is not adopted: the holder
// loads.
func TestHolderAdoptsValueCommittedBeforeClaim(t *testing.T) {
	for _, slow := range []bool{false, true} {
		t.Run(map[bool]string{false: "fast", true: "slow"}[slow], func(t *testing.T) {
			for _, other := range []bool{false, true} {
				t.Run(map[bool]string{false: "adopted", true: "other schema"}[other], func(t *testing.T) {
					holderAdopts(t, slow, other)
				})
			}
		})
	}
}

func holderAdopts(t *testing.T, slow, otherSchema bool) {
	ctx := context.Background()
	f := newFleet(t)
	f.slow = slow
	ld := newLoader()
	aopt := &Options[string]{}
	if otherSchema {
		aopt.Schema = "v0"
	}
	a, _ := newCache(f, aopt)
	// B subscribes to the key after its L2 read missed and before its
	// claim: A loads and commits the key right then.
	var once sync.Once
	var aerr error
	pb := f.procWith(func(m countdriver.Method) {
		if m == countdriver.Subscribe {
			once.Do(func() { _, aerr = a.Get(ctx, "k", ld.load) })
		}
	})
	b := openProcCache(t, pb, &Options[string]{})
	r := fetchOK(t, b, ctx, "k", ld.load)
	if aerr != nil {
		t.Fatalf("A: %v", aerr)
	}
	var want countdriver.Counts
	want[countdriver.Subscribe] = 1
	switch {
	case otherSchema && slow: // get, subscribe, claim, get, commit, release
		want[countdriver.Get], want[countdriver.TryClaim], want[countdriver.Commit], want[countdriver.Release] = 2, 1, 1, 1
	case otherSchema: // get, subscribe, claim+read, commit+release
		want[countdriver.Get], want[countdriver.ClaimRead], want[countdriver.CommitRelease] = 1, 1, 1
	case slow: // get, subscribe, claim, get, release
		want[countdriver.Get], want[countdriver.TryClaim], want[countdriver.Release] = 2, 1, 1
	default: // get, subscribe, claim+read, release
		want[countdriver.Get], want[countdriver.ClaimRead], want[countdriver.Release] = 1, 1, 1
	}
	if got := pb.counts(); got != want {
		t.Fatalf("B's round trips: %v, want %v", named(got), named(want))
	}
	st := b.Stats()
	if st.Waits != 0 || st.Takeovers != 0 {
		t.Fatalf("B stats %+v: want no wait, no takeover", st)
	}
	if otherSchema {
		wantSource(t, r, SourceLoaded)
		if r.Value != "v2:k" || ld.count("k") != 2 || st.Loads != 1 || pb.commits() != 1 {
			t.Fatalf("B: %q, %d loads in all, %d by B, %d commits; want its own load committed", r.Value, ld.count("k"), st.Loads, pb.commits())
		}
	} else {
		wantSource(t, r, SourceL2)
		if r.Value != "v1:k" || ld.count("k") != 1 || st.Loads != 0 || pb.commits() != 0 {
			t.Fatalf("B: %q, %d loads in all, %d by B, %d commits; want A's value adopted", r.Value, ld.count("k"), st.Loads, pb.commits())
		}
	}
	released(t, f, "default:k")
}

func TestL1HitDoesNotAllocate(t *testing.T) {
	f := newFleet(t)
	c, _ := newCache(f, &Options[string]{})
	load := func(context.Context, string) (string, error) { return "v", nil }
	ctx := context.Background()
	fetchOK(t, c, ctx, "apple inc", load)
	if n := testing.AllocsPerRun(100, func() { c.Get(ctx, "apple inc", load) }); n != 0 {
		t.Fatalf("L1 hit: %v allocations, want 0", n)
	}
}

// TestStarterHandsOff: a Block caller whose context cannot be cancelled
// runs the flight it starts on its own goroutine; when the L2 read finds a
// stale value, it answers with it at once and the rest of the flight (the
// claim and the load) goes on without it, finished on a goroutine of its
// own.
func TestStarterHandsOff(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	opt := func() *Options[string] {
		return &Options[string]{TTL: 100 * time.Millisecond, TTLJitter: -1, StaleTTL: time.Hour}
	}
	a, _ := newCache(f, opt())
	b, _ := newCache(f, opt())
	first := fetchOK(t, a, ctx, "k", ld.load).Value
	time.Sleep(150 * time.Millisecond) // past the TTL: L2's copy is stale
	ld.gate = make(chan struct{})
	r := fetchOK(t, b, ctx, "k", ld.load) // b's L1 is empty: b starts the flight
	if r.Source != SourceStale || r.Value != first {
		t.Fatalf("got %q from %v, want the stale %q at once", r.Value, r.Source, first)
	}
	close(ld.gate)
	idle(t, b)
	if n := ld.count("k"); n != 2 {
		t.Fatalf("%d loads, want 2", n)
	}
	if r := fetchOK(t, b, ctx, "k", ld.load); r.Value == first || r.Source != SourceL1 {
		t.Fatalf("after the refresh: %q from %v, want the new value from L1", r.Value, r.Source)
	}
}
