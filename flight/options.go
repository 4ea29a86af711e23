package flight

import (
	"context"
	"log/slog"
	"reflect"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// LoadFunc computes the value of a key from the system of record (L3). It
// receives the normalised key. Its context carries the values of the
// caller that started the load, is not cancelled when that caller leaves,
// and is cancelled when Options.LoadTimeout passes, when the claim on the
// key is lost, or when the Cache is closed. A LoadFunc should be
// idempotent (an upsert): after a crash or a lost lease the key may be
// loaded a second time. Return an error wrapping ErrNotFound to report a
// missing value (cached for Options.NegativeTTL).
type LoadFunc[V any] func(ctx context.Context, key string) (V, error)

// Policy says what a caller does when its key has no fresh value and a
// load is under way (in this process or in another one). Stale values are
// those within Options.StaleTTL past their TTL.
type Policy uint8

const (
	// Block (the default) returns a stale value at once if there is one
	// (stale-while-revalidate) and otherwise waits for the load, bounded
	// by the caller's context, Options.WaitTimeout and the holder's lease.
	Block Policy = iota
	// Fresh waits for the load even when a stale value is known.
	Fresh
	// Fallback answers at once, without waiting: with the stale value if
	// there is one, else with the fallback given by WithFallback (the zero
	// value if none), Source Fallback. The load goes on in the background
	// and fills the cache.
	Fallback
)

func (p Policy) String() string {
	switch p {
	case Fresh:
		return "fresh"
	case Fallback:
		return "fallback"
	}
	return "block"
}

// Options configure a Cache. A nil *Options means all defaults; every zero
// field is the documented default.
type Options[V any] struct {
	// Name namespaces the cache in the backend: values and claims are
	// stored under Name + ":" + normalised key, and invalidations go to
	// the topic "flight:" + Name. Caches of different value types on one
	// backend need different names. Default "default".
	Name string
	// Normalize maps a caller's key to the cache key, identically in every
	// process. Default NormalizeKey. Use Identity to keep keys as given.
	Normalize func(string) string
	// Codec encodes values for L2. Default JSON.
	Codec Codec
	// Schema names the value's encoding; an L2 value written under another
	// schema reads as a miss (logged), never as a wrong value. Change it
	// when V's encoding changes incompatibly. Default: V's Go type name.
	Schema string

	// L1Size bounds the in-process cache (entries). Default 10000;
	// negative: no L1 (every Get goes to L2, still coalesced in-process).
	L1Size int
	// L1TTL is the longest an L1 entry lives (never past the value's own
	// TTL). Default 1 minute. It bounds how long another process may keep
	// serving a value after an Invalidate that could not reach it (see
	// Invalidation in the package doc). While the Cache serves more than
	// 500,000 L1 hits a second, L1 reads the time once a millisecond
	// rather than on every hit, so an entry may then end up to a
	// millisecond (or a goroutine's scheduling delay) off its L1TTL.
	L1TTL time.Duration
	// TTL is how long a loaded value stays fresh in L2. Default 10 minutes.
	TTL time.Duration
	// TTLJitter shortens each value's TTL by a random fraction up to
	// TTLJitter, so keys loaded together do not expire together. Default
	// 0.1; negative: none.
	TTLJitter float64
	// StaleTTL keeps values this long past their TTL as stale values:
	// under the Block and Fallback policies a stale value is returned at
	// once (Source Stale) while one refresh runs fleet-wide
	// (stale-while-revalidate). Default 0: values expire at their TTL.
	StaleTTL time.Duration
	// NegativeTTL caches a not-found (the loader returned an error
	// wrapping ErrNotFound) this long, in L1 and L2. Default 0: not-found
	// is not cached.
	NegativeTTL time.Duration
	// ErrorTTL is how long a load error is kept as the key's answer: the
	// holder commits it to L2 in place of a value (fenced by its lease,
	// like a value), which wakes the key's waiters in every process; they
	// and every later caller, in any process, until ErrorTTL passes, get
	// an error matching ErrRemoteLoad (a *RemoteError with the holder's
	// error text) at once, without loading. So a failing loader runs once
	// per ErrorTTL fleet-wide, not once per process in turn. The holder's
	// own coalesced callers get the loader's error itself. Loader panics
	// and timeouts are published too; a not-found is not (NegativeTTL),
	// nor a load ended by Close, nor the failed refresh of a value that
	// can still be served (it stays). The error text (cut to 512 bytes)
	// is stored in the backend and shown in every process: keep secrets
	// out of loader errors. A Cache keeps a published error no longer
	// than its own ErrorTTL after it was written, whatever the writer
	// said. Default 1 second; negative: off (errors are neither published
	// nor read: waiting processes load in turn).
	ErrorTTL time.Duration
	// FailSafeTTL keeps values this long past their stale window (in L1
	// and L2) as fail-safe answers: when refreshing an expired value
	// fails (the loader returns an error, panics or times out; the
	// backend is unavailable; the wait for another process's holder times
	// out; another process published a load error), callers get the
	// expired value (Source FailSafe) instead of the error. The failing
	// loader is then not called again for FailSafeThrottle: the fail-safe
	// answer is kept as fresh that long in L1 and, committed by the holder
	// in place of the error, in L2 for every process. Not-founds,
	// configuration errors and Close are answered as they are. Default 0:
	// off.
	FailSafeTTL time.Duration
	// FailSafeThrottle is how long a fail-safe answer is served before the
	// loader is tried again. Default 5 seconds.
	FailSafeThrottle time.Duration
	// SoftTimeout, with FailSafeTTL, bounds how long a caller waits for a
	// load (or another process's) when an expired value within its
	// fail-safe window is at hand: after SoftTimeout it is answered with
	// that value (Source FailSafe), and the load goes on in the background
	// and fills the cache. Default 0: callers wait for the load (bounded by
	// LoadTimeout and WaitTimeout).
	SoftTimeout time.Duration
	// EarlyRefresh is the β of probabilistic early refresh (XFetch,
	// Vattani et al., VLDB 2015): a fresh hit refreshes the value in the
	// background with a probability that grows as its expiry nears,
	// scaled by the measured load time; 1 is the paper's default. The
	// refresh runs once fleet-wide (through the claim). Default 0: off.
	EarlyRefresh float64

	// LeaseTTL is the claim's lease; the holder renews it while loading
	// (claim.Client.KeepAlive), so it bounds how long a crashed holder delays
	// the others, not how long a load may take. The renewals start once
	// the load has run LeaseTTL/12 (a shorter load starts none), the first
	// at 5/12 of the lease, then every LeaseTTL/3. Default 5 seconds.
	LeaseTTL time.Duration
	// LoadTimeout bounds one loader call. A loader that ignores its
	// context is abandoned at the timeout (its goroutine ends when it
	// returns; its result is dropped). Default 10 seconds.
	LoadTimeout time.Duration
	// WaitTimeout bounds how long a flight waits for another process's
	// holder before giving up with ErrWaitTimeout. Default 30 seconds.
	WaitTimeout time.Duration
	// OpTimeout bounds each backend call. Default 2 seconds.
	OpTimeout time.Duration
	// Wait is the default Policy. Default Block.
	Wait Policy

	// FailClosed makes Get fail with an error wrapping ErrBackend when
	// the backend cannot be reached. Default false (fail open): the
	// loader is called without the claim, still coalesced in-process and
	// capped by MaxFailOpenLoads, and the value goes to L1 only.
	FailClosed bool
	// MaxFailOpenLoads caps concurrent loader calls while failing open.
	// Default 16.
	MaxFailOpenLoads int

	// Logger receives the changes of the Cache's Health (to Degraded at
	// ERROR, once per change, with the cause; back to Healthy at WARN,
	// with how long it lasted), warnings (corrupt L2 values, lost
	// commits) and debug events (each failed backend call). Default
	// slog.Default().
	Logger *slog.Logger
	// OnHealthChange, if set, is called with the new Health on every
	// change of the Cache's Health (Healthy to Degraded and back; not on
	// every failed call): in order, never concurrently with itself, on a
	// goroutine of the Cache, never a caller's. A slow callback delays
	// only the callbacks after it. Close waits for the calls already
	// queued; the callback must not call Close.
	OnHealthChange func(Health)

	// MeterProvider receives the Cache's metrics: answers by tier, loads,
	// waits and the other Stats counters, the wait and load durations,
	// the degraded state, each with the attribute stampede.cache = Name
	// (see "Metrics and traces" in the package doc). Default: the global
	// provider (otel.GetMeterProvider); one installed after New is used
	// from then on. With none installed nothing is recorded, at almost no
	// cost, and the L1 hit path costs nothing either way (the counters are
	// read from Stats when the metrics are collected).
	MeterProvider metric.MeterProvider
	// TracerProvider receives a span per Get or Fetch that misses L1
	// ("flight get"), with the flight's backend calls and its load as
	// children, and links from the processes that answer with a value to
	// the span of the process that loaded it. Default: the global provider
	// (otel.GetTracerProvider), looked up per flight; with none installed
	// no span is started and the values written to L2 are unchanged.
	TracerProvider trace.TracerProvider

	// noKeepAlive is a test hook: the holder does not renew its lease,
	// like a process that stopped.
	noKeepAlive bool
}

// config is Options with defaults applied.
type config[V any] struct {
	Options[V]
	prefix string
	topic  string
	// defaultNorm: Normalize is NormalizeKey (Options.Normalize was nil),
	// so the hit path can call it directly.
	defaultNorm bool
}

func (o *Options[V]) withDefaults() config[V] {
	var c config[V]
	if o != nil {
		c.Options = *o
	}
	if c.Name == "" {
		c.Name = "default"
	}
	if c.Normalize == nil {
		c.Normalize = NormalizeKey
		c.defaultNorm = true
	}
	if c.Codec == nil {
		c.Codec = JSON{}
	}
	if c.Schema == "" {
		c.Schema = reflect.TypeFor[V]().String()
	}
	if c.L1Size == 0 {
		c.L1Size = 10000
	}
	if c.L1TTL <= 0 {
		c.L1TTL = time.Minute
	}
	if c.TTL <= 0 {
		c.TTL = 10 * time.Minute
	}
	if c.TTLJitter == 0 {
		c.TTLJitter = 0.1
	}
	if c.TTLJitter < 0 {
		c.TTLJitter = 0
	}
	if c.TTLJitter > 1 {
		c.TTLJitter = 1
	}
	if c.StaleTTL < 0 {
		c.StaleTTL = 0
	}
	if c.NegativeTTL < 0 {
		c.NegativeTTL = 0
	}
	switch {
	case c.ErrorTTL == 0:
		c.ErrorTTL = time.Second
	case c.ErrorTTL < 0:
		c.ErrorTTL = 0
	}
	if c.FailSafeTTL < 0 {
		c.FailSafeTTL = 0
	}
	if c.FailSafeThrottle <= 0 {
		c.FailSafeThrottle = 5 * time.Second
	}
	if c.SoftTimeout < 0 {
		c.SoftTimeout = 0
	}
	if c.EarlyRefresh < 0 {
		c.EarlyRefresh = 0
	}
	if c.LeaseTTL <= 0 {
		c.LeaseTTL = 5 * time.Second
	}
	if c.LoadTimeout <= 0 {
		c.LoadTimeout = 10 * time.Second
	}
	if c.WaitTimeout <= 0 {
		c.WaitTimeout = 30 * time.Second
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 2 * time.Second
	}
	if c.MaxFailOpenLoads <= 0 {
		c.MaxFailOpenLoads = 16
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.prefix = c.Name + ":"
	c.topic = "flight:" + c.Name
	return c
}

// CallOption tunes one Get, Fetch or GetMany call of a Cache of V. The
// options are typed by the Cache's value type, so a fallback of another
// type does not compile.
type CallOption[V any] interface{ apply(*callConfig[V]) }

type callConfig[V any] struct {
	policy      Policy
	fallback    V
	hasFallback bool
}

func applyOptions[V any](cc callConfig[V], opts []CallOption[V]) callConfig[V] {
	for _, o := range opts {
		o.apply(&cc)
	}
	return cc
}

type policyOption[V any] Policy

func (p policyOption[V]) apply(c *callConfig[V]) { c.policy = Policy(p) }

// WithPolicy sets the Policy for one call of a Cache of V, e.g.
// flight.WithPolicy[Price](flight.Fresh).
func WithPolicy[V any](p Policy) CallOption[V] { return policyOption[V](p) }

type fallbackOption[V any] struct{ v V }

func (f fallbackOption[V]) apply(c *callConfig[V]) {
	c.policy, c.fallback, c.hasFallback = Fallback, f.v, true
}

// WithFallback makes one call use the Fallback policy with v as the
// answer when no value (fresh or stale) is at hand.
func WithFallback[V any](v V) CallOption[V] { return fallbackOption[V]{v} }
