// Package flight is a tiered, stampede-proof cache on a *claim.Client,
// whatever the backend behind it: when many callers in many processes
// miss the same key at once, the loader runs once and everyone else gets
// its answer.
//
//	b, _ := claim.Open(ctx, "redis://localhost:6379/0") // or memory.New(nil, nil): a *claim.Client too
//	c, _ := flight.New[Company](b, &flight.Options[Company]{Name: "companies"})
//	defer c.Close()
//	co, err := c.Get(ctx, "Apple Inc.", func(ctx context.Context, key string) (Company, error) {
//		return db.UpsertCompany(ctx, key) // called once per key, fleet-wide
//	})
//
// # Tiers
//
// A Get goes down the tiers until one answers, and the answer fills the
// tiers above it:
//
//  1. the key is normalised (Options.Normalize, default NormalizeKey:
//     "Apple Inc.", "APPLE INC" and "apple  inc" are one key);
//  2. L1, this process's bounded in-memory cache (otter), with a TTL;
//  3. the key's in-process flight: the first caller of a key starts it,
//     later callers in the process join it (Result.Shared); the flight
//     runs on its own goroutine, so a caller leaving on its context
//     cancels nothing;
//  4. L2, the backend's store: a hit fills L1;
//  5. on an L2 miss the flight waits through the Client's one waiting
//     engine (claim.Client.GetOrAcquire): it subscribes to the key's
//     wake-ups, then claims the key and reads its value in one step
//     (claim.Client.TryClaimRead). A value published between the flight's
//     read and its claim is adopted (SourceL2) and the claim released at
//     once, without a load. Otherwise the holder runs the loader while
//     claim.Client.KeepAlive renews its lease, then commits the value
//     fenced by the lease and releases the claim in one step
//     (claim.Client.CommitRelease), which wakes every waiting process;
//     they read the value from L2 (SourceRemote). A holder that dies is
//     taken over when its lease expires; a holder whose lease was lost
//     has its commit refused and keeps its value to its own callers.
//
// # Round trips
//
// Backend round trips per process per key do not depend on the number of
// callers in the process: an L2 hit costs 1; a waiting process 4 (get,
// subscribe, claim, get after the wake-up), 3 when the holder's wake-up
// carries its value (driver.ValueNotifier); the holder 4 (get, subscribe,
// claim+read, commit+release) when the backend's driver has both
// one-round-trip fast paths, else 6 (get, subscribe, claim, get, commit,
// release: the Client's fallbacks), or 5 with one of the two. A holder
// that adopts a value published before its claim costs 4 (get, subscribe,
// claim+read, release), 5 without the fast path.
//
// Result.Source tells each caller which tier answered: SourceL1,
// SourceL2, SourceLoaded (this process called the loader), SourceRemote
// (another process did), SourceStale, SourceFallback, SourceFailSafe.
// Stats counts them.
//
// The loader is passed per call: Get and Fetch take a LoadFunc, GetMany a
// BatchFunc. Options of one call are typed by the Cache's value type
// (CallOption[V]): WithPolicy[V](p) sets the Policy (Block, Fresh,
// Fallback), WithFallback(v) the Fallback policy with v as the answer
// when no value is at hand; a fallback of another type does not compile.
//
// # What is guaranteed, and what is not
//
// One loader call per key per fleet while the value is absent, as long as
// holders live: a holder that crashes, or loses its lease (a pause longer
// than Options.LeaseTTL), lets another process load again, so loaders
// should be idempotent. A not-found (ErrNotFound) is cached only with
// Options.NegativeTTL. Every wait is bounded by the caller's context,
// Options.WaitTimeout and the holder's lease; every load by
// Options.LoadTimeout. A panic or runtime.Goexit in the loader reaches
// every coalesced caller as an error (*PanicError, ErrGoexit); the claim
// is released on every path.
//
// Freshness is judged with the writer's wall clock (the L2 envelope
// records when the value was written), so processes whose clocks differ
// by Δ disagree about expiry by Δ.
//
// # Loader errors
//
// A loader error travels like a value: the holder commits it in place
// of the value (fenced by its lease, released in the same step, which
// wakes the waiting processes), and it stays the key's answer for
// Options.ErrorTTL (default 1 s), in L2 and in L1. The holder's
// coalesced callers get the loader's error itself; the callers in every
// other process, and every caller that asks within ErrorTTL, get an
// error matching ErrRemoteLoad at once, a *RemoteError with the holder's
// error text (cut to 512 bytes) and whether its load timed out (it then
// matches ErrLoadTimeout too). So a failing loader runs once per
// ErrorTTL fleet-wide, and every waiter has its error about one load
// time after the herd began, not one load time per process. Panics,
// Goexit and timeouts are published; a not-found is not (NegativeTTL
// decides), nor a load that Close ended, nor the failed refresh of a
// value that can still be served (the value stays, see below); with
// Options.FailSafeTTL, an expired value within its fail-safe window is
// published in place of the error (see Fail-safe). Invalidate drops a
// published error like a value. With ErrorTTL
// negative, errors are not kept: waiting processes then try the claim
// when the holder releases it, so the next one loads, one at a time.
// Error entries are marked by an envelope flag that earlier releases do
// not know: a process running one reads them as misses, and loads.
//
// # Stale values and early refresh
//
// With Options.StaleTTL, a value past its TTL is kept that much longer
// and returned at once (SourceStale) while one refresh runs fleet-wide
// (stale-while-revalidate). With Options.EarlyRefresh, fresh hits refresh
// the value in the background shortly before it expires, with the XFetch
// probability (Vattani, Chierichetti, Lowenstein, VLDB 2015) computed
// from the measured load time. Both refreshes go through the claim, so
// one process refreshes and the others adopt its value.
//
// # Invalidation
//
// Invalidate is fenced. It drops the key from this process's L1, revokes
// the key's lease (claim.Client.Revoke: the lease ends whoever holds it,
// the value is deleted from L2 and the key's waiters in every process are
// woken, in one step where the backend allows), then publishes the key
// on the topic "flight:" + Name (claim.Client.Publish), so every process
// drops it from its L1. A load of the key under way anywhere when
// Invalidate runs can no longer store its value: its commit is refused
// (claim.ErrLost, counted in Stats.LostCommits) and it fills no L1. Its
// callers in its own process still get its value, marked
// Result.Superseded (Fetch shows it, Get cannot); a caller that comes
// after Invalidate starts a flight of its own. Nobody else gets the
// superseded value. The processes that were waiting for it are woken,
// find no value and claim the key: one loads anew, the others wait for
// it. Superseded is conservative in the other processes: a flight under
// way there when the invalidation message arrives is marked too, and
// does not fill that process's L1, even if it loaded after the
// revocation (its value is in L2). A process skips its own messages.
//
// Set is a write-through Invalidate: the value replaces L2's in the same
// revocation (claim.Client.RevokeSet), fresh for Options.TTL (no jitter),
// and the other processes drop their L1 copy and read the new value from
// L2 on their next call, without a load. A load under way is superseded
// as by Invalidate, so a value computed from older data cannot replace
// the one set. Set also fills this process's L1.
//
// InvalidateAll invalidates every key of the Cache's Name at once: it
// moves the name to a new generation, a key space of its own in the
// backend (stored under a reserved key, announced on the topic). Every
// process drops its whole L1 on the announcement and uses the new key
// space from then on. Nothing is deleted: the old generation's values
// are never read again and expire by their TTL, using the backend's
// memory until then. Loads under way store their values in the old key
// space, where nobody reads them, and no L1 keeps them past the
// announcement. It costs a claim, a read and a commit of the generation
// key and one publication, whatever the number of keys; New reads the
// generation once.
//
// Topics work on every backend: over the backend's native bus where it
// has one (Features.Broadcast), otherwise through the Client's topic log,
// which costs the publication three or four round trips instead of one
// and reaches the other processes later (within the poll interval on a
// polled backend). Invalidate and Set cost the revocation (one round trip
// on most backends; see each backend's page) and the publication. Other
// processes drop their copies when the message arrives, milliseconds
// later (the README has the figures per backend): until then they may
// serve the old value from L1. A process whose Cache could not subscribe
// to the topic when it was opened (logged) hears of no invalidation: it
// serves its L1 copies until they expire (Options.L1TTL) and keeps the
// generation it read at New. A process that may have missed messages (a
// reconnect) drops its whole L1 and reads the generation again. If the
// publication fails, Invalidate and Set return the error, L2 being
// already changed.
//
// # Batches
//
// GetMany answers many keys in one call, with a BatchFunc: one call of
// the loader (one query) for the keys this process has to load, returning
// the values it found (a key left out is not found). Each key gets its
// own Result, its error in Result.Err; GetMany's own error is for the
// call as a whole (ErrClosed). Keys are normalised; a key given twice is
// answered once, with the same Result at each place. A batch costs one
// L1 pass; one batched L2 read of the misses; one batched subscription
// and claim (with the values read) of those still missing; one call of
// the loader for the keys this process won, committed and released
// together (claim.Client.CommitReleaseMany); and for keys other processes
// hold, a pushed wait, the keys woken together read together. Keys under
// way in this process (a Get, another GetMany) are joined, not loaded
// again, and a Get of a key a GetMany is loading joins it.
//
// On a backend with driver.Batcher each batched call is about one round
// trip whatever the number of keys: a batch this process loads costs 4
// (get, subscribe, claim+read, commit+release) and one release per key it
// does not commit (an uncached not-found); a batch other processes load,
// about 4 as well (more when their holders finish at different times).
// Without it the Client runs the single-key calls, 16 at a time; batches
// over the driver's Features.MaxBatch are split. Keys won at different
// steps (a takeover, a holder that left without a value) are loaded by
// separate calls. A failing batch load fails every key of the
// call (each published for Options.ErrorTTL, or answered fail-safe).
// Keys whose backend calls fail go their own way (fail open or closed),
// each loaded alone, by the BatchFunc with that one key, as is a stale
// key's background refresh. Nothing is atomic across keys. GetMany's
// answers are counted in Stats (one per distinct key); its flights are
// not traced.
//
// # Lifetimes set by the loader
//
// A loader may set the lifetime of what it loaded, from what it loaded,
// with SetExpiry(ctx, Expiry{TTL, StaleTTL}, keys...) called with its
// context: a quote fresh for a second, a profile for a day, a value with
// an expiry date of its own. TTL is used as given (no jitter), zero
// meaning Options.TTL; StaleTTL zero means Options.StaleTTL, negative
// none. For a not-found, TTL is how long it is cached, even with
// Options.NegativeTTL off. Without keys it applies to every key of the
// load; a BatchFunc names keys (normalised, as it got them) to set some
// apart, over a call without keys; the last call wins. A published load
// error ignores it, and SetExpiry reports false outside a load. The
// lifetime travels with the value in the L2 envelope, so every process
// serves it the same way; L1 keeps its Options.L1TTL bound. A stale
// window other than the writer's Options.StaleTTL is a new envelope
// flag: a process running an earlier release reads such a value as a
// miss, and loads.
//
// # Fail-safe
//
// With Options.FailSafeTTL, values are kept that much longer past their
// stale window, in L1 and L2, as fail-safe answers: when refreshing an
// expired value fails, callers get the expired value (SourceFailSafe,
// Stats.FailSafe) instead of the error. It answers for a loader error,
// panic or timeout; the backend unavailable, failing open (and the
// loader failing too) or closed (the loader is not called); a wait for
// another process's holder that timed out (ErrWaitTimeout); a load error
// another process published (ErrRemoteLoad). A not-found, a configuration
// error (claim.ErrConfig) and Close are answered as they are. The failing
// loader is then not called again for Options.FailSafeThrottle (default
// 5 s): the fail-safe answer is kept as fresh that long in L1 and, when
// the holder's own load failed, committed to L2 in place of the error
// entry, so that every process answers with it without loading. It is
// never served past its fail-safe window, and Invalidate removes it like
// any value. The cost is storage: every value stays FailSafeTTL longer
// in L2, and L1 keeps expired values (within Options.L1Size).
//
// With Options.SoftTimeout too, a caller that has such an expired value
// at hand and has waited SoftTimeout for a load (this process's or
// another's) is answered with it (SourceFailSafe); the load goes on in
// the background and fills the cache. Fallback callers answer at once
// anyway.
//
// # Backend failures
//
// Backend errors come in two classes (package claim): an outage
// (claim.ErrUnavailable: unreachable, no answer within the operation
// timeout, a closed Client) and a configuration error (claim.ErrConfig:
// wrong credentials, missing permission or table, another kind of
// server). On an outage a Cache fails open by default: the loader is
// called without the claim (still once per key per process, with at most
// Options.MaxFailOpenLoads loads at a time) and the value is kept in L1
// only. With Options.FailClosed, Get returns an error wrapping ErrBackend
// instead. A configuration error never fails open: waiting will not fix
// it, and loading without the claim would silently run the loader once
// per process; Get returns it (errors.Is(err, claim.ErrConfig)) and loads
// nothing. L2 values that do not decode, or were written under another
// schema (Options.Schema), are misses, logged.
//
// # Health
//
// A Cache knows whether its backend works (Stats.Health): Healthy, or
// Degraded since the first backend call that failed, with the last
// error, its class (claim.ErrConfig or claim.ErrUnavailable) and the
// number of failed calls. The next backend call that succeeds (an answer
// such as "not found" or "held" is a success) makes it Healthy again;
// calls that a caller's context or Close ended, and waits that
// WaitTimeout ended, count neither way. Each change is logged once, to
// Degraded at ERROR with the cause, back to Healthy at WARN with how long
// it lasted, never per request (each failed call is at DEBUG); and
// Options.OnHealthChange is called with it, in order, on a goroutine of
// the Cache. Recovery is noticed by the next backend call, so by the next
// L1 miss: a Cache serving only L1 hits stays Degraded until one.
//
// # Metrics and traces
//
// A Cache records through the OpenTelemetry API only, under the
// instrumentation scope InstrumentationScope, into Options.MeterProvider
// and Options.TracerProvider, else the global providers (otel.SetMeterProvider,
// otel.SetTracerProvider; one installed after New is used from then on).
// With none installed nothing is recorded and nothing is traced. Every
// instrument and span has the attribute stampede.cache (Options.Name);
// keys are not recorded (they may be personal data), but an error span's
// status message is the error's text, which names the key.
//
// The counters are observable: the provider reads them from Stats when it
// collects, through a callback that New registers and Close unregisters,
// so the paths that count pay nothing for the metrics, and the L1 hit
// path (which records nothing else) stays as fast and allocation-free
// with an SDK installed. Caches sharing a provider and a Name add up. In
// Prometheus the counters get the suffix _total, the histograms
// _seconds; dots become underscores.
//
//	instrument                       kind       unit      what (attributes besides stampede.cache)
//	stampede.flight.answers          counter    {answer}  Get and Fetch callers, by stampede.source: the tier
//	                                                      that answered (l1, l2, loaded, remote, stale,
//	                                                      fallback, fail_safe) or error (Stats.L1Hits ...
//	                                                      Stats.Errors)
//	stampede.flight.coalesced        counter    {call}    Stats.Coalesced
//	stampede.flight.misses           counter    {flight}  Stats.Misses
//	stampede.flight.loads            counter    {load}    Stats.Loads
//	stampede.flight.load_errors      counter    {load}    Stats.LoadErrors
//	stampede.flight.waits            counter    {flight}  Stats.Waits
//	stampede.flight.takeovers        counter    {claim}   Stats.Takeovers
//	stampede.flight.commits          counter    {commit}  Stats.Commits
//	stampede.flight.error_commits    counter    {commit}  Stats.ErrorCommits
//	stampede.flight.error_hits       counter    {answer}  Stats.ErrorHits
//	stampede.flight.lost_commits     counter    {commit}  Stats.LostCommits (lease losses, revocations)
//	stampede.flight.refreshes        counter    {flight}  Stats.Refreshes
//	stampede.flight.fail_open        counter    {flight}  Stats.FailOpen
//	stampede.flight.decode_errors    counter    {value}   Stats.DecodeErrors
//	stampede.flight.invalidations    counter    {drop}    Stats.Invalidated
//	stampede.flight.degraded         gauge      {state}   two series, error.type config and unavailable:
//	                                                      1 in the one of Health.Class while Degraded, else 0
//	stampede.flight.wait.duration    histogram  s         a flight's wait for another process's holder, from
//	                                                      its first claim found held to the value, the
//	                                                      takeover or the error; error.type on failure
//	stampede.flight.load.duration    histogram  s         each loader call; error.type on failure
//
// The histograms use the buckets of the claim Client's operation
// histogram (50 µs to 10 s). error.type is one of the claim Client's
// classes (config, unavailable, timeout, canceled, closed ...) or flight's
// own: load (the loader returned an error), panic (it panicked or called
// runtime.Goexit), timeout (Options.LoadTimeout), remote_load (a load
// error another flight published, ErrRemoteLoad), wait_timeout
// (ErrWaitTimeout). A not-found is an answer: not_found, no Error status.
//
// Traces: a Get or Fetch that misses L1 is a span "flight get", a child
// of the span in the caller's context, with stampede.source (the tier that
// answered), stampede.shared (it joined another caller's flight), and
// error.type and an Error status on failure. The flight that a caller
// starts runs under its span: the claim Client's spans for the flight's
// backend calls (when the Client traces too), "flight wait" (the wait
// for another process's holder) and "flight load" (the loader call, the
// parent of the loader's own spans) are its children. A caller that joins
// a flight links to the span that started it (link attribute
// stampede.link = "flight"). A background refresh is a span "flight
// refresh". A GetMany is a span "flight get-many" with stampede.keys (the
// keys asked) and stampede.failed_keys (how many Results have an Err);
// its backend calls are its children. L1 hits are not traced: a span
// costs more than the hit.
//
// The holder writes the span context of its "flight load" (trace id, span
// id, trace flags: 25 bytes, only when the span is sampled) into the
// value's L2 envelope. A process that answers with that value from L2 (a
// waiter, SourceRemote, or a reader, SourceL2) links its "flight get" and
// "flight wait" spans to the holder's load (stampede.link = "holder"), so
// a trace of a waiter leads to the load, in another process, whose value
// it got. Without a tracer provider, or with the load not sampled, the
// envelope is the one earlier releases write. A process running a
// release from before the span context reads a traced value as a miss
// (it loads, and commits an untraced value): in a rolling upgrade,
// install the tracer provider once every process runs this release.
package flight
