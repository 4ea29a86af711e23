package flight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is a logger for tests that provoke warnings on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// proc is one simulated process: its own backend client of the shared
// Space, with every backend round trip counted, and its own Cache.
type proc struct {
	*memory.Backend
	gets, claims, commits atomic.Int64
	trips                 atomic.Int64 // every round trip
}

func (p *proc) Get(ctx context.Context, key string) ([]byte, error) {
	p.gets.Add(1)
	p.trips.Add(1)
	return p.Backend.Get(ctx, key)
}

func (p *proc) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	p.claims.Add(1)
	p.trips.Add(1)
	return p.Backend.TryClaim(ctx, key, ttl)
}

func (p *proc) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	p.claims.Add(1)
	p.trips.Add(1)
	return p.Backend.TryClaimRead(ctx, key, ttl)
}

func (p *proc) Commit(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	p.trips.Add(1)
	err := p.Backend.Commit(ctx, l, v, ttl)
	if err == nil {
		p.commits.Add(1)
	}
	return err
}

func (p *proc) CommitRelease(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	p.trips.Add(1)
	err := p.Backend.CommitRelease(ctx, l, v, ttl)
	if err == nil {
		p.commits.Add(1)
	}
	return err
}

func (p *proc) Release(ctx context.Context, l claim.Lease) error {
	p.trips.Add(1)
	return p.Backend.Release(ctx, l)
}

func (p *proc) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	p.trips.Add(1)
	return p.Backend.Subscribe(ctx, key)
}

func (p *proc) Notify(ctx context.Context, key string) error {
	p.trips.Add(1)
	return p.Backend.Notify(ctx, key)
}

func (p *proc) calls() int64 { return p.gets.Load() + p.claims.Load() }

// noBroadcast hides the backend's Broadcaster, like a backend without one.
type noBroadcast struct{ claim.Backend }

// slowPath hides the backend's claim.ClaimReader and claim.CommitReleaser
// (not its Broadcaster), like a backend without them.
type slowPath struct {
	claim.Backend
	claim.Broadcaster
}

type fleet struct {
	t     testing.TB
	space *memory.Space
	procs []*proc
	// slow: caches see backends without the one-round-trip paths.
	slow bool
}

func newFleet(t testing.TB) *fleet { return &fleet{t: t, space: memory.NewSpace(nil)} }

// proc opens a new simulated process (backend client), closed at cleanup.
func (f *fleet) proc() *proc {
	b, err := memory.New(f.space, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	p := &proc{Backend: b}
	f.procs = append(f.procs, p)
	f.t.Cleanup(func() { b.Close() })
	return p
}

// cache opens a Cache in a new simulated process.
func newCache[V any](f *fleet, opt *Options[V]) (*Cache[V], *proc) {
	p := f.proc()
	if f.slow {
		return openCache(f.t, claim.Backend(slowPath{p, p}), opt), p
	}
	return openCache(f.t, claim.Backend(p), opt), p
}

func openCache[V any](t testing.TB, b claim.Backend, opt *Options[V]) *Cache[V] {
	if opt == nil {
		opt = &Options[V]{}
	}
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	c, err := New(b, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// loader counts calls per key and answers "v<n>:<key>" after an optional
// gate.
type loader struct {
	mu     sync.Mutex
	calls  map[string]int
	total  atomic.Int64
	gate   chan struct{} // if non-nil, loads wait for it to be closed
	called chan string   // if non-nil, receives each key as its load starts
	delay  time.Duration
}

func newLoader() *loader { return &loader{calls: map[string]int{}} }

func (l *loader) load(ctx context.Context, key string) (string, error) {
	l.mu.Lock()
	l.calls[key]++
	n := l.total.Add(1)
	l.mu.Unlock()
	if l.called != nil {
		l.called <- key
	}
	if l.gate != nil {
		<-l.gate
	}
	if l.delay > 0 {
		time.Sleep(l.delay)
	}
	return fmt.Sprintf("v%d:%s", n, key), nil
}

func (l *loader) count(key string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.calls[key]
}

// idle waits until c has no flight running (background refreshes
// included), failing the test after a generous bound.
func idle[V any](t testing.TB, c *Cache[V]) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		n := len(c.flights)
		c.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flights still running", n)
		}
		time.Sleep(time.Millisecond)
	}
}

// eventually polls cond until it holds, failing after a generous bound.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func fetchOK[V any](t testing.TB, c *Cache[V], ctx context.Context, key string, load LoadFunc[V], opts ...CallOption) Result[V] {
	t.Helper()
	r, err := c.Fetch(ctx, key, load, opts...)
	if err != nil {
		t.Fatalf("Fetch(%q): %v", key, err)
	}
	return r
}

func wantSource[V any](t testing.TB, r Result[V], src Source) {
	t.Helper()
	if r.Source != src {
		t.Fatalf("Fetch(%q): source %v, want %v", r.Key, r.Source, src)
	}
}

var errTest = errors.New("test error")
