package flight

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/countdriver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// quiet is a logger for tests that provoke warnings on purpose.
var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// memDriver is what the memory driver implements: the required driver
// and every optional fast path and its topic bus.
type memDriver interface {
	driver.Driver
	driver.ClaimReader
	driver.CommitReleaser
	driver.Broadcaster
	driver.Batcher
	driver.ValueNotifier
}

// mem is one process's memory driver, telling what countdriver's call
// counts cannot: the commits that landed (Commit or CommitRelease
// answered nil; a refused commit is a call too) and the claims that came
// back held (the process is waiting for another holder then). While a
// fault is set (setFault), Get, TryClaim and TryClaimRead fail with it,
// as a driver does when its server is down or refuses it.
type mem struct {
	memDriver
	commits, held atomic.Int64
	fault         atomic.Pointer[error]
}

// setFault makes Get and the claims fail with err from now on; nil ends
// the fault.
func (d *mem) setFault(err error) {
	if err == nil {
		d.fault.Store(nil)
		return
	}
	d.fault.Store(&err)
}

func (d *mem) failing() error {
	if p := d.fault.Load(); p != nil {
		return *p
	}
	return nil
}

func (d *mem) Get(ctx context.Context, key string) ([]byte, error) {
	if err := d.failing(); err != nil {
		return nil, err
	}
	return d.memDriver.Get(ctx, key)
}

func (d *mem) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := d.failing(); err != nil {
		return driver.Lease{}, err
	}
	l, err := d.memDriver.TryClaim(ctx, key, holder, ttl)
	if errors.Is(err, driver.ErrHeld) {
		d.held.Add(1)
	}
	return l, err
}

func (d *mem) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	if err := d.failing(); err != nil {
		return driver.Lease{}, nil, false, err
	}
	l, v, found, err := d.memDriver.TryClaimRead(ctx, key, holder, ttl)
	if errors.Is(err, driver.ErrHeld) {
		d.held.Add(1)
	}
	return l, v, found, err
}

func (d *mem) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := d.failing(); err != nil {
		return nil, err
	}
	return d.memDriver.GetMany(ctx, keys)
}

func (d *mem) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := d.failing(); err != nil {
		return nil, err
	}
	out, err := d.memDriver.TryClaimMany(ctx, keys, holders, ttl)
	for _, o := range out {
		if errors.Is(o.Err, driver.ErrHeld) {
			d.held.Add(1)
		}
	}
	return out, err
}

func (d *mem) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	errs, err := d.memDriver.CommitReleaseMany(ctx, commits)
	for _, e := range errs {
		if e == nil {
			d.commits.Add(1)
		}
	}
	return errs, err
}

func (d *mem) Commit(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	err := d.memDriver.Commit(ctx, l, v, ttl)
	if err == nil {
		d.commits.Add(1)
	}
	return err
}

func (d *mem) CommitRelease(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	err := d.memDriver.CommitRelease(ctx, l, v, ttl)
	if err == nil {
		d.commits.Add(1)
	}
	return err
}

// proc is one simulated process: its own claim.Client of the shared
// Space, whose driver is wrapped by countdriver so that every backend
// round trip is counted.
type proc struct {
	*claim.Client
	n    *countdriver.Counter
	mem  *mem
	base countdriver.Counts // the counts when its Cache was opened
}

// counts are the round trips since the process's Cache was opened (its
// subscription to the invalidation topic is not a key's round trip), or
// since the process was opened if it has no Cache.
func (p *proc) counts() countdriver.Counts {
	return p.n.Snapshot().Sub(p.base)
}

// mark starts the counts from now; call it from the test's goroutine.
func (p *proc) mark() { p.base = p.n.Snapshot() }

func (p *proc) trips() int64 { return p.counts().Total() }
func (p *proc) gets() int64  { return p.counts()[countdriver.Get] }

// claims counts claims, with or without the value (claim+read).
func (p *proc) claims() int64 {
	c := p.counts()
	return c[countdriver.TryClaim] + c[countdriver.ClaimRead]
}

// commits counts the commits that landed.
func (p *proc) commits() int64 { return p.mem.commits.Load() }

// heldClaims counts the claims that came back held.
func (p *proc) heldClaims() int64 { return p.mem.held.Load() }

func (p *proc) calls() int64 { return p.gets() + p.claims() }

// named lists the non-zero counts of c, e.g. "get=2 subscribe=1".
func named(c countdriver.Counts) string {
	var parts []string
	for m, n := range c {
		if n != 0 {
			parts = append(parts, fmt.Sprintf("%v=%d", countdriver.Method(m), n))
		}
	}
	return strings.Join(parts, " ")
}

type fleet struct {
	t     testing.TB
	space *memory.Space
	procs []*proc
	// slow: caches see drivers without the one-round-trip fast paths
	// (countdriver.Options.NoFastPaths: the Client's fallbacks).
	slow bool
	// noBus: caches see drivers without a native topic bus
	// (countdriver.Options.NoBroadcast: the Client's topic log).
	noBus bool
	// noValue: wake-ups carry no value (countdriver.Options.NoValueWake).
	noValue bool
}

func newFleet(t testing.TB) *fleet { return &fleet{t: t, space: memory.NewSpace(nil)} }

// proc opens a new simulated process (a Client of the fleet's Space,
// its driver counted, with the fast paths and bus the fleet's mode
// shows), closed at cleanup.
func (f *fleet) proc() *proc {
	return f.procWith(nil)
}

// procWith is proc, the counter's OnCall set to onCall (nil: none)
// before the Client is used.
func (f *fleet) procWith(onCall func(countdriver.Method)) *proc {
	m, err := memory.New(f.space, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	// m itself is never used nor closed: the Client that wraps its
	// driver closes the driver. NewClient starts nothing.
	d := &mem{memDriver: m.Driver().(memDriver)}
	n := &countdriver.Counter{OnCall: onCall}
	wd, _ := countdriver.Wrap(d, n, countdriver.Options{NoFastPaths: f.slow, NoBroadcast: f.noBus, NoValueWake: f.noValue})
	p := &proc{Client: claim.NewClient(wd, nil), n: n, mem: d}
	f.procs = append(f.procs, p)
	f.t.Cleanup(func() { p.Close() })
	return p
}

// newCache opens a Cache in a new simulated process; the process's
// counts start once the Cache is open.
func newCache[V any](f *fleet, opt *Options[V]) (*Cache[V], *proc) {
	p := f.proc()
	return openProcCache(f.t, p, opt), p
}

// openProcCache opens a Cache on p and starts p's counts.
func openProcCache[V any](t testing.TB, p *proc, opt *Options[V]) *Cache[V] {
	c := openCache(t, p.Client, opt)
	p.mark()
	return c
}

func openCache[V any](t testing.TB, b *claim.Client, opt *Options[V]) *Cache[V] {
	if opt == nil {
		opt = &Options[V]{}
	}
	if opt.Logger == nil {
		opt.Logger = quiet
	}
	if opt.OpTimeout == 0 {
		// The default bound (2 s) is a timing: on a loaded machine a
		// backend call starved past it makes its flight fail open, which
		// no test here is about (TestFailOpen closes the Client).
		opt.OpTimeout = time.Minute
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

func fetchOK[V any](t testing.TB, c *Cache[V], ctx context.Context, key string, load LoadFunc[V], opts ...CallOption[V]) Result[V] {
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
