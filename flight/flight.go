package flight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"go.opentelemetry.io/otel/trace"

	"github.com/stampede-go/stampede/claim"
)

// Errors returned by Get and Fetch. Loader errors are returned wrapped
// ("flight: load \"key\": ..."), so errors.Is and errors.As see the
// loader's own error; callers answered with a load error that another
// flight published (Options.ErrorTTL) get a *RemoteError instead
// (ErrRemoteLoad). ErrNotFound, ErrInvalidKey and ErrClosed are package
// claim's sentinels: one errors.Is test covers the cache and the client.
var (
	// ErrNotFound is what a loader returns (wrapped or not) to say the key
	// has no value; Get returns it for a cached not-found too. It is
	// claim.ErrNotFound.
	ErrNotFound = claim.ErrNotFound
	// ErrInvalidKey: the key normalises to "" (claim.ErrInvalidKey).
	ErrInvalidKey = claim.ErrInvalidKey
	// ErrNoLoader: Get, Fetch or GetMany was given a nil loader.
	ErrNoLoader = errors.New("flight: no loader")
	// ErrLoadTimeout: the loader did not return within Options.LoadTimeout.
	ErrLoadTimeout = errors.New("flight: load timed out")
	// ErrWaitTimeout: another process held the key's claim for longer than
	// Options.WaitTimeout without publishing a value.
	ErrWaitTimeout = errors.New("flight: timed out waiting for the holder")
	// ErrBackend: the backend could not be reached and Options.FailClosed
	// is set. The backend's error is wrapped too.
	ErrBackend = errors.New("flight: backend unavailable")
	// ErrClosed: the Cache was closed (claim.ErrClosed).
	ErrClosed = claim.ErrClosed
	// ErrGoexit: the loader called runtime.Goexit.
	ErrGoexit = errors.New("flight: loader called runtime.Goexit")
)

// PanicError is the error every coalesced caller gets when the loader
// panicked. The panic does not crash the process (the loader runs on a
// goroutine of the Cache, where nobody could recover it).
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the loader's stack at the panic
}

func (e *PanicError) Error() string { return fmt.Sprintf("flight: loader panicked: %v", e.Value) }

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

var debugStack = debug.Stack

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }

// Result is an answer with its provenance.
type Result[V any] struct {
	Value  V
	Source Source
	// Key is the normalised key.
	Key string
	// Shared is true if this caller joined a flight (an L2 read, a wait or
	// a load) that another caller in this process had started.
	Shared bool
	// Written is when the value was loaded (zero for a fallback).
	Written time.Time
	// Superseded is true if the value came from a load whose result was
	// not cached: an Invalidate, Set or InvalidateAll ran while it was
	// under way, or its lease was lost. It answers this call only.
	Superseded bool
	// Err is the key's error, in GetMany's results only.
	Err error
}

// Cache is a tiered, stampede-proof cache of V on a *claim.Client: an
// in-process L1, the backend's store as L2, and the loader as L3, with
// one loader call per key across every process sharing the backend. It
// is safe for concurrent use. Close it when done.
type Cache[V any] struct {
	b      *claim.Client
	cfg    config[V]
	log    *slog.Logger
	l1     *otter.Cache[string, *entry[V]]
	clock  *l1Clock    // L1's clock (clock.go); nil without L1
	timed  bool        // entries need a freshness check on L1 hits
	closed atomic.Bool // read by every hit: kept off mu's cache line
	stats  counters
	health health
	tel    telemetry // metrics and traces (otel.go)

	mu      sync.Mutex
	flights map[string]*flight[V]
	// gen is the name's generation (InvalidateAll): the key space of L2.
	// Written under mu.
	gen atomic.Uint64
	// origin tells this Cache's invalidation messages from the others'.
	origin string

	root      context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	sem       chan struct{}
	stopTopic func()
}

// flight is the in-process future of one key: every caller of the key in
// this process waits on it, one goroutine resolves it.
type flight[V any] struct {
	key  string
	load LoadFunc[V]
	// after: an L2 value written at or before it is not fresh enough (a
	// refresh of that value was asked for). Zero: any fresh value does.
	after time.Time
	bg    bool
	// gen is the Cache's generation when the flight started: its L2 key
	// space. superseded: an Invalidate, Set or InvalidateAll ran while
	// the flight was under way, so its answer must not fill L1.
	// unpublished: its value was not stored in L2 (the commit was refused
	// or the flight was superseded); its callers' answers say so
	// (Result.Superseded). unpublished is the flight goroutine's, read by
	// callers after done.
	gen         uint64
	superseded  atomic.Bool
	unpublished bool
	// failSafe is the newest expired value within its fail-safe window
	// that the flight's callers or reads came across (offerFailSafe).
	failSafe atomic.Pointer[entry[V]]

	// stale is an old value callers may be given; it is set before
	// pending is closed, which happens when the flight found no fresh
	// value and starts waiting for a holder or loading: Fallback callers
	// wait on it. Block callers wait on blockWake, closed with pending if
	// stale is set then, else after done: they wake once, when there is
	// something for them, and wait on one channel (no select) when their
	// context cannot be cancelled.
	stale         *entry[V]
	pending       chan struct{}
	blockWake     chan struct{}
	pendingDone   bool // only the flight's goroutine touches these two
	blockWakeShut bool

	ctx  flightCtx // the flight's context (run sets it)
	done chan struct{}
	res  *entry[V]
	src  Source
	err  error

	// until is the end of the flight's wait (WaitTimeout from its start),
	// bk its L2 key: set by lookup for acquire, on the flight's goroutine.
	until time.Time
	bk    string

	// waitStart is when the flight began waiting for another process's
	// holder (zero: it did not); tr its trace state, nil if it is not
	// traced. Both belong to the flight's goroutine, except tr itself and
	// tr.sc: set before the goroutine starts, tr under c.mu (the callers
	// that join read tr.sc under c.mu).
	waitStart time.Time
	tr        *flightTrace
}

// flightTrace is a traced flight's spans (otel.go).
type flightTrace struct {
	sc       trace.SpanContext // the starting caller's "flight get", or the refresh's span
	span     trace.Span        // the refresh's span, which the flight ends; nil otherwise
	loadSpan trace.SpanContext // the span of the flight's load, once it ran
	waitSpan trace.Span        // "flight wait", while the flight waits
}

// New returns a Cache of V on b. b is not closed by the Cache. The Cache
// subscribes to its invalidation topic (claim.Client.SubscribeTopic); a
// failure is logged and leaves only L1 TTLs to expire other processes'
// copies.
func New[V any](b *claim.Client, opt *Options[V]) (*Cache[V], error) {
	if b == nil {
		return nil, errors.New("flight: nil backend")
	}
	c := &Cache[V]{b: b, cfg: opt.withDefaults(), flights: map[string]*flight[V]{}, origin: newOrigin()}
	c.health.cur = Health{Since: time.Now()}
	c.log = c.cfg.Logger.With("cache", c.cfg.Name)
	c.timed = c.cfg.StaleTTL > 0 || c.cfg.EarlyRefresh > 0 || c.cfg.FailSafeTTL > 0
	c.sem = make(chan struct{}, c.cfg.MaxFailOpenLoads)
	if c.cfg.L1Size > 0 {
		l1TTL, timed := c.cfg.L1TTL, c.timed
		c.clock = newL1Clock(c.stats.l1.load)
		l1, err := otter.New(&otter.Options[string, *entry[V]]{
			MaximumSize: c.cfg.L1Size,
			Clock:       c.clock,
			ExpiryCalculator: otter.ExpiryWritingFunc(func(en otter.Entry[string, *entry[V]]) time.Duration {
				if t := en.Value.failSafeTil; !t.IsZero() {
					// An L1 copy (l1Entry): L1TTL is in its freshness.
					return max(time.Until(t), 1)
				}
				til := en.Value.staleTil
				if !timed {
					til = en.Value.freshTil
				}
				d := time.Until(til)
				if d > l1TTL {
					d = l1TTL
				}
				if d <= 0 {
					d = 1
				}
				return d
			}),
		})
		if err != nil {
			return nil, fmt.Errorf("flight: L1: %w", err)
		}
		c.l1 = l1
	}
	c.initTelemetry()
	c.root, c.cancel = context.WithCancel(context.Background())
	ctx, cancel := context.WithTimeout(c.root, c.cfg.OpTimeout)
	stop, err := b.SubscribeTopic(ctx, c.cfg.topic, c.onInvalidate)
	cancel()
	c.observe(c.root, err)
	if err != nil {
		c.log.Warn("flight: cannot subscribe to invalidations; other processes' invalidations reach this one only through L1 expiry", "err", err)
	} else {
		c.stopTopic = stop
	}
	// The generation is read after the subscription is live, so an
	// InvalidateAll is either read here or announced.
	c.syncGen(c.root)
	return c, nil
}

// Get returns the value of key: from L1, else from L2, else from load
// (a nil load is ErrNoLoader), called once per key across every
// process sharing the backend. See Fetch for where the answer came from.
//
// Get blocks until the value is known, ctx is done, or the policy says to
// answer at once (Policy). Leaving on ctx never cancels the load, which
// goes on for the other callers and fills the cache. Callers of one key in
// one process share one load (the first caller's load function and
// context values, never its cancellation). A not-found is returned as an
// error wrapping ErrNotFound.
func (c *Cache[V]) Get(ctx context.Context, key string, load LoadFunc[V], opts ...CallOption[V]) (V, error) {
	k := c.normalize(key)
	var e *entry[V]
	looked := false
	if len(opts) == 0 {
		var ok bool
		if e, ok, looked = c.quick(k, load); ok {
			if e.notFound {
				var zero V
				return zero, ErrNotFound
			}
			return e.value, nil
		}
	}
	a, err := c.fetch(ctx, key, k, load, opts, e, looked)
	c.tally(a, err)
	switch {
	case a.e != nil && !a.e.notFound:
		return a.e.value, err
	case a.src == SourceFallback:
		return fallbackValue[V](opts), err
	}
	var zero V
	return zero, err
}

// Fetch is Get, also telling where the answer came from (Result.Source)
// and whether this caller shared another caller's flight.
func (c *Cache[V]) Fetch(ctx context.Context, key string, load LoadFunc[V], opts ...CallOption[V]) (Result[V], error) {
	k := c.normalize(key)
	var e *entry[V]
	looked := false
	if len(opts) == 0 {
		var ok bool
		if e, ok, looked = c.quick(k, load); ok {
			a, err := hit(e, SourceL1, false)
			return a.result(k, opts), err
		}
	}
	a, err := c.fetch(ctx, key, k, load, opts, e, looked)
	c.tally(a, err)
	return a.result(k, opts), err
}

// answer is where a call's answer came from; Get makes it a value, Fetch
// a Result. It is small, so the miss path (fetch, join, await) passes it
// in registers rather than copying a Result through every frame.
type answer[V any] struct {
	e      *entry[V] // the entry answered with; nil: none (an error, the fallback)
	src    Source
	shared bool
	noKey  bool // the call failed before its key was checked: Result.Key is ""
	// superseded: the answer came from a flight whose value was not
	// cached (Result.Superseded).
	superseded bool
}

// result is the Result of answer a to a call with normalised key k and
// options opts.
func (a answer[V]) result(k string, opts []CallOption[V]) Result[V] {
	r := Result[V]{Source: a.src, Shared: a.shared, Superseded: a.superseded}
	if !a.noKey {
		r.Key = k
	}
	switch {
	case a.e != nil:
		r.Written = a.e.written
		if !a.e.notFound {
			r.Value = a.e.value
		}
	case a.src == SourceFallback:
		r.Value = fallbackValue[V](opts)
	}
	return r
}

// fallbackValue is the value of the call's WithFallback option, or the
// zero value.
func fallbackValue[V any](opts []CallOption[V]) V {
	return applyOptions(callConfig[V]{}, opts).fallback
}

func (c *Cache[V]) normalize(key string) string {
	if c.cfg.defaultNorm {
		return NormalizeKey(key) // a direct call: no indirect call on the hit path
	}
	return c.cfg.Normalize(key)
}

// quick is the L1 hit path of a call without options, k normalised:
// when it can answer from L1 (a fresh entry, or any entry when L1
// entries have no stale phase, and no early refresh to consider; never
// a published load error, which counts as an error), it counts the hit
// and returns the entry and ok. Otherwise fetch decides;
// looked says that e is what L1 holds for k (nil: a miss), so fetch
// need not look again. It checks what fetch checks before L1, so the
// answer is the same.
func (c *Cache[V]) quick(k string, load LoadFunc[V]) (e *entry[V], ok, looked bool) {
	if c.l1 == nil || k == "" || load == nil || c.closed.Load() {
		return nil, false, false
	}
	e, _ = c.l1.GetIfPresent(k)
	if e == nil {
		return nil, false, true
	}
	if e.failed != nil || e.failSafe || (c.timed && (c.cfg.EarlyRefresh > 0 || e.state(time.Now()) != fresh)) {
		return e, false, true
	}
	c.stats.l1.add()
	return e, true, true
}

// fetch is the full path of Get and Fetch; k is the normalised key. If
// looked, e is L1's entry for k (nil: none), already looked up by quick.
func (c *Cache[V]) fetch(ctx context.Context, key, k string, load LoadFunc[V], opts []CallOption[V], e *entry[V], looked bool) (answer[V], error) {
	if c.closed.Load() {
		return answer[V]{noKey: true}, ErrClosed
	}
	if k == "" {
		return answer[V]{noKey: true}, fmt.Errorf("flight: key %q: %w", key, ErrInvalidKey)
	}
	policy := c.cfg.Wait
	if len(opts) > 0 {
		policy = applyOptions(callConfig[V]{policy: policy}, opts).policy // out of line: the config escapes
	}
	if load == nil {
		return answer[V]{}, ErrNoLoader
	}
	var old, fs *entry[V]
	if c.l1 != nil {
		if !looked {
			e, _ = c.l1.GetIfPresent(k)
		}
		if e != nil {
			var (
				a   answer[V]
				err error
				ok  bool
			)
			if a, ok, old, fs, err = c.fromL1(ctx, k, e, policy, load); ok {
				return a, err
			}
		}
	}
	if fs == nil {
		fs = old
	}
	return c.join(ctx, k, load, policy, old, fs)
}

// fromL1 judges e, L1's entry for k, for a caller with policy p: ok if
// it answers the call (fresh; stale under Block or Fallback, with a
// refresh started); otherwise old is a stale value a Fresh caller's flight
// keeps, fs a value past its stale window kept only as a fail-safe
// answer.
func (c *Cache[V]) fromL1(ctx context.Context, k string, e *entry[V], p Policy, load LoadFunc[V]) (a answer[V], ok bool, old, fs *entry[V], err error) {
	if !c.timed {
		// L1 entries expire at the end of their TTL.
		a, err = hit(e, SourceL1, false)
		return a, true, nil, nil, err
	}
	now := time.Now()
	switch e.state(now) {
	case fresh:
		if c.cfg.EarlyRefresh > 0 && c.earlyRefreshDue(e, now) {
			c.refresh(ctx, k, e, load)
		}
		a, err = hit(e, SourceL1, false)
		return a, true, nil, nil, err
	case stale:
		if p != Fresh {
			c.refresh(ctx, k, e, load)
			a, err = hit(e, SourceStale, false)
			return a, true, nil, nil, err
		}
		return a, false, e, e, nil
	}
	// Past its stale window: kept only as a fail-safe answer.
	return a, false, nil, e, nil
}

// hit is the answer from entry e.
func hit[V any](e *entry[V], src Source, shared bool) (answer[V], error) {
	if e.failSafe && src != SourceStale {
		src = SourceFailSafe
	}
	a := answer[V]{e: e, src: src, shared: shared}
	switch {
	case e.notFound:
		return a, ErrNotFound
	case e.failed != nil:
		return a, e.failed
	}
	return a, nil
}

// earlyRefreshDue is XFetch: refresh when now − δ·β·ln(rand) ≥ expiry,
// with δ the measured load time.
func (c *Cache[V]) earlyRefreshDue(e *entry[V], now time.Time) bool {
	if e.load <= 0 || e.notFound || e.failed != nil {
		return false
	}
	gap := -float64(e.load) * c.cfg.EarlyRefresh * math.Log(rand.Float64())
	return gap >= float64(e.freshTil.Sub(now))
}

// join makes the caller wait on the key's flight, starting it if there is
// none. With a tracer provider installed, the call is a "flight get"
// span: the flight this caller starts runs under it (its backend calls
// and its load are its children); a caller that joins a running flight
// links to the span that started it.
func (c *Cache[V]) join(ctx context.Context, k string, load LoadFunc[V], p Policy, old, fs *entry[V]) (answer[V], error) {
	ctx, span := c.startSpan(ctx, spanGet)
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return joined(span, answer[V]{}, ErrClosed)
	}
	f, shared := c.flights[k]
	var tr *flightTrace // set before the flight was published, or under c.mu
	// inline: the caller cannot leave before the flight is done, bar the
	// stale answer of a Block caller (run hands the rest of the flight to
	// a goroutine then): if it starts the flight, it runs it itself, as
	// singleflight does, which saves a goroutine, its stack growth and a
	// wake-up per flight.
	inline := ctx.Done() == nil && p != Fallback && !c.softTimed(p)
	if shared {
		c.stats.coalesced.Add(1)
		tr = f.tr
	} else {
		if inline {
			// Before the L1 look below, which would grow a new
			// goroutine's stack first.
			growStack(len(k))
		}
		// A flight for k may have finished between our L1 miss and now:
		// it filled L1 before leaving the map, so look again.
		if c.l1 != nil {
			if e, ok := c.l1.GetIfPresent(k); ok && e.state(time.Now()) == fresh {
				c.mu.Unlock()
				a, err := hit(e, SourceL1, false)
				return joined(span, a, err)
			}
		}
		f = c.newFlightLocked(k, load, old)
		if span != nil {
			f.tr = traceFlight(span)
		}
	}
	if fs != nil {
		c.offerFailSafe(f, fs)
	}
	c.mu.Unlock()
	if !shared {
		if inline {
			c.run(context.WithoutCancel(ctx), f, p == Block)
		} else {
			go c.run(context.WithoutCancel(ctx), f, false)
		}
	} else if span != nil && tr != nil {
		linkFlight(span, tr)
	}
	a, err := c.await(ctx, f, p, shared)
	return joined(span, a, err)
}

// flightCtx is a flight's context: the values of the caller that started
// it (vals, from context.WithoutCancel), the cancellation of the Cache's
// root context (cancelled by Close), no deadline. Contexts derived from it
// are children of the root directly, so a flight costs no context of its
// own beyond this one value.
type flightCtx struct {
	context.Context                 // the Cache's root
	vals            context.Context // the first caller's, without its cancellation
}

// Value looks in the root first: it has no values of its own, but it is
// what the context package finds as the parent to cancel derived contexts
// (and Cause reads); every other key goes to the caller's values.
func (f *flightCtx) Value(key any) any {
	if v := f.Context.Value(key); v != nil {
		return v
	}
	return f.vals.Value(key)
}

// detached returns ctx's values without the root's cancellation: for the
// calls that must run after Close cancelled the flight (Commit, Release).
// The values include the span the flight runs under (the starting
// caller's "flight get", or the refresh's), so those calls' spans are
// its children like the flight's other backend calls.
func detached(ctx context.Context) context.Context {
	if f, ok := ctx.(*flightCtx); ok {
		return f.vals
	}
	return context.WithoutCancel(ctx)
}

// newFlightLocked registers a flight; c.mu must be held and the Cache
// open. The caller starts c.run.
func (c *Cache[V]) newFlightLocked(k string, load LoadFunc[V], old *entry[V]) *flight[V] {
	f := &flight[V]{key: k, load: load, stale: old, gen: c.gen.Load(), pending: make(chan struct{}), blockWake: make(chan struct{}), done: make(chan struct{})}
	c.flights[k] = f
	c.wg.Add(1)
	return f
}

// refresh starts a background flight for k unless one is running: the
// stale-while-revalidate and early refresh path. Its result replaces e
// in L1; it runs once fleet-wide through the claim, with ctx's values but
// not its cancellation.
func (c *Cache[V]) refresh(ctx context.Context, k string, e *entry[V], load LoadFunc[V]) {
	c.mu.Lock()
	if _, running := c.flights[k]; running || c.closed.Load() {
		c.mu.Unlock()
		return
	}
	f := c.newFlightLocked(k, load, e)
	f.after, f.bg = e.written, true
	c.mu.Unlock()
	c.stats.refreshes.Add(1)
	// The refresh's span, ended by the flight: started only once the
	// flight is known to start (the hit that triggers it is not traced).
	ctx, span := c.startSpan(ctx, spanRefresh)
	if span != nil {
		c.mu.Lock()
		f.tr = &flightTrace{sc: span.SpanContext(), span: span}
		c.mu.Unlock()
	}
	go c.run(context.WithoutCancel(ctx), f, false)
}

func (c *Cache[V]) await(ctx context.Context, f *flight[V], p Policy, shared bool) (answer[V], error) {
	var wake <-chan struct{}
	switch p {
	case Block:
		wake = f.blockWake // closed after done, or at pending with a stale value
	case Fallback:
		wake = f.pending // closed at pending, or before done
	default:
		wake = f.done
	}
	cancel := ctx.Done()
	soft, softC := c.softTimer(p)
	if soft != nil {
		defer soft.Stop()
	}
	for {
		switch {
		case cancel == nil && softC == nil:
			<-wake
		default:
			select {
			case <-wake:
			case <-cancel:
				return answer[V]{shared: shared}, ctx.Err()
			case <-softC:
				softC = nil
				if a, ok := c.softAnswer(f, shared); ok {
					return a, nil
				}
				continue
			}
		}
		select {
		case <-f.done:
			return c.result(f, p, shared)
		default:
		}
		// Pending, not done: a stale value, or the fallback.
		if s := f.stale; s != nil && !s.notFound && s.state(time.Now()) != expired {
			return hit(s, SourceStale, shared)
		}
		if p == Fallback {
			return answer[V]{src: SourceFallback, shared: shared}, nil
		}
		wake = f.done
	}
}

// result is the answer of a caller with policy p from finished flight f.
// A caller that may take a stale value (Block, Fallback) gets the one f
// knew of rather than f's error (unless the Cache closed): whether it
// woke before or after the flight failed must not decide, and the stale
// value stays servable after a failed refresh.
func (c *Cache[V]) result(f *flight[V], p Policy, shared bool) (answer[V], error) {
	if f.err != nil {
		if s := f.stale; p != Fresh && !isNotFound(f.err) && !errors.Is(f.err, ErrClosed) &&
			s != nil && !s.notFound && s.state(time.Now()) != expired {
			return hit(s, SourceStale, shared)
		}
		a := answer[V]{shared: shared}
		if isNotFound(f.err) {
			a.src = f.src
		}
		return a, f.err
	}
	a, err := hit(f.res, f.src, shared)
	a.superseded = f.unpublished
	return a, err
}

// growStack makes the calling goroutine's stack big enough for a
// flight's resolution (about 8 KiB) in one step, while it is shallow: a
// caller that runs its own flight (join) is often a new goroutine on a
// 2 KiB stack, which the claim and the load would otherwise outgrow
// twice, deep down, each time walking and copying every frame (in the
// profile of a coalesced miss, more than a tenth of its time). On a stack
// that is big enough already, it costs clearing the array.
//
//go:noinline
func growStack(i int) byte {
	var b [4 << 10]byte
	b[i%len(b)] = byte(i)
	return b[(i+1)%len(b)]
}

// run resolves flight f, detached from every caller: ctx keeps the first
// caller's values, not its cancellation, and is cancelled by Close.
// Whatever happens (a panic or Goexit in our code or the codec included),
// f is finished and every caller released.
//
// run is a goroutine of its own, or the starting caller's goroutine when
// that caller cannot leave before f is done (join); then handoff (a Block
// caller) moves the rest of f to a goroutine of its own once the L2 read
// found a stale value, which the caller answers with at once. A Goexit in
// our code or the codec then ends the caller's goroutine too.
func (c *Cache[V]) run(vals context.Context, f *flight[V], handoff bool) {
	f.ctx = flightCtx{Context: c.root, vals: vals}
	c.drive(f, true, handoff)
}

// drive runs f (see run) from its L2 read (first) or from its claim
// (acquire), then finishes it. handoff: see run.
func (c *Cache[V]) drive(f *flight[V], first, handoff bool) {
	moved := false // the rest of f went to another goroutine, which finishes it
	defer func() {
		if !moved {
			c.wg.Done()
		}
	}()
	ctx := &f.ctx
	var (
		e   *entry[V]
		src Source
		err error
	)
	normal := false
	defer func() {
		if moved {
			return
		}
		if !normal {
			if p := recover(); p != nil {
				err = &PanicError{Value: p, Stack: debug.Stack()}
			} else {
				err = ErrGoexit
			}
			e, src = nil, SourceNone
			c.log.Error("flight: resolving a key failed abnormally", "key", f.key, "err", err)
		}
		c.finish(f, e, src, err)
		if f.tr != nil && f.tr.span != nil {
			endSpan(f.tr.span, e, src, false, err)
		}
	}()
	ok := false
	if first {
		e, src, ok, err = c.lookup(ctx, f)
		if !ok && handoff && f.stale != nil {
			moved = true
			go c.drive(f, false, false)
			return
		}
	}
	if !ok {
		e, src, err = c.acquire(ctx, f)
	}
	e, src, err = c.failSafeAnswer(ctx, f, e, src, err)
	normal = true
}

// finish publishes f's outcome: L1 first, then out of the map, then the
// callers, so a caller that misses L1 either finds the flight or finds
// its value in L1 (see join). e is the entry for L1 (a value, a
// not-found, a published load error); err, if set, is the callers'
// answer instead of e's (the holder's callers get the loader's own
// error). A load error does not replace a value L1 may still serve.
func (c *Cache[V]) finish(f *flight[V], e *entry[V], src Source, err error) {
	now := time.Now()
	if f.superseded.Load() || f.gen != c.gen.Load() {
		f.unpublished = true
	}
	if e != nil && c.l1 != nil && now.Before(e.staleTil) && !c.closed.Load() && !f.unpublished &&
		(e.failed == nil || f.stale == nil || f.stale.state(now) == expired) {
		c.l1.Set(f.key, c.l1Entry(e))
		// An Invalidate that marked f after the check above dropped L1
		// before or after this Set: if before, drop again.
		if f.superseded.Load() || f.gen != c.gen.Load() {
			c.l1.Invalidate(f.key)
			f.unpublished = true
		}
	}
	f.res, f.src, f.err = e, src, err
	c.mu.Lock()
	if c.flights[f.key] == f {
		delete(c.flights, f.key)
	}
	c.mu.Unlock()
	c.markPending(f)
	close(f.done)
	if !f.blockWakeShut {
		f.blockWakeShut = true
		close(f.blockWake)
	}
}

func (c *Cache[V]) markPending(f *flight[V]) {
	if !f.pendingDone {
		f.pendingDone = true
		if f.stale != nil {
			f.blockWakeShut = true
			close(f.blockWake)
		}
		close(f.pending)
	}
}

// Close stops the Cache: flights under way end (their callers get
// ErrClosed or the context error), background refreshes stop, the
// invalidation subscription ends and L1 is dropped. It waits for the
// Cache's goroutines, except loaders that ignore their context, which are
// abandoned, and for the Options.OnHealthChange calls already queued.
// Later calls return ErrClosed. The backend is not closed. Idempotent.
func (c *Cache[V]) Close() error {
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return nil
	}
	c.closed.Store(true)
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.health.close()
	c.closeTelemetry()
	if c.stopTopic != nil {
		c.stopTopic()
	}
	if c.l1 != nil {
		c.l1.InvalidateAll()
		c.l1.StopAllGoroutines()
		c.clock.Close()
	}
	return nil
}
