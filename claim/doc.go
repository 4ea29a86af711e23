// Package claim is stampede's portable client: a distributed claim (an
// atomic set-if-absent with a lease and a fencing token), a notifier that
// wakes waiters when a claim is released, and a shared value store, on
// Redis, PostgreSQL, etcd, Consul, ZooKeeper, DynamoDB, memcached or in
// process memory, behind one type, *Client.
//
// Most users never call a Client directly: package flight builds a tiered
// cache on top. Call claim directly to run a job once per key fleet-wide:
//
//	c, err := claim.Open(ctx, "redis://localhost:6379/0")
//	l, err := c.Acquire(ctx, "rebuild:report-42", 10*time.Second)
//	k := c.KeepAlive(ctx, l, nil)
//	err = work(k.Context())
//	err = c.CommitRelease(ctx, k.Stop(), result, time.Hour)
//
// # URLs
//
// Backends register a URL scheme when their package is imported (like
// database/sql drivers); Open picks one by scheme. Every backend package
// also has a New constructor taking the user's own configured client, for
// TLS, auth, clusters and pools; it returns a *Client too. Unknown or
// malformed query parameters are errors. Credentials in URLs never appear
// in errors (see RedactURL).
//
// # Semantics
//
// At most one lease per key is live at any time (TryClaim is one atomic
// check-and-set; a held key answers ErrHeld). Each lease carries a fencing
// token strictly greater than every token issued before for that key,
// across release, expiry and takeover (across a restart of the server only
// where Features.DurableFence says so). A lease expires by itself after its
// TTL; Extend renews it, KeepAlive renews it in the background and reports
// loss. Release and Commit are compare-by-token: a stale holder can never
// release, extend or overwrite a newer holder's claim (ErrLost). A lease's
// local Deadline (taken before the request was sent) is never later than
// the server's expiry, assuming clocks run at the same rate, so a holder
// that stops at its Deadline never overlaps the next holder: the Client
// refuses Commit and Extend past it without I/O.
//
// Subscribing before checking state guarantees no lost wake-up: a release
// that lands after Subscribe returns wakes the subscriber. Every Release
// and Notify wakes every subscriber of that key in every process; a Client
// keeps one substrate subscription per key whatever the number of
// subscribers. Push backends deliver within a round trip; poll backends
// poll once per key per process with jittered backoff bounded by the
// holder's lease. Every wait in this package is bounded by ctx and by the
// holder's lease expiry.
//
// Revoke ends a key's current lease whoever holds it and deletes its
// value (RevokeSet stores a new one), then wakes the key's subscribers:
// the revoked holder's Commit, Extend and Release fail with ErrLost from
// then on, so work started before a revocation can never publish after
// it (flight's Invalidate and Set are built on it), and the fence keeps
// rising.
//
// Two ways to wait for a held key. Acquire (and GetOrAcquire, flight's
// engine) is wake-all: a release wakes every waiter in every process and
// the first claim wins, which is what a herd that wants one answer needs.
// AcquireFair is first come, first served: waiters queue in the backend,
// and a release hands the lease over to the first live waiter in the same
// atomic step, the lease itself (token and all) riding in that waiter's
// wake-up, so it holds the key without a claim of its own and nobody else
// wakes (driver.Queuer; ErrUnsupported on a backend without it). A waiter
// that leaves or dies is skipped; a holder that dies is followed by the
// first waiter once its lease runs out. Use a key with one mode only.
//
// Batches (GetMany, TryClaimMany, CommitReleaseMany, SubscribeMany, and
// the batch waiting engine GetOrAcquireMany) do, key by key, what the
// single-key calls do, in as few round trips as the backend allows
// whatever the number of keys (a pipeline, one statement, one
// transaction: driver.Batcher); on a backend without one the Client runs
// the single-key calls concurrently. Nothing is atomic across keys.
//
// Topics (Publish, SubscribeTopic) carry messages to every process: on a
// backend's native bus where it has one (Features.Broadcast), otherwise
// through a short log kept under a reserved key, on every backend.
//
// # Errors
//
// Every error reads "claim: OP KEY: ..." and wraps one of the sentinels
// ErrHeld, ErrLost, ErrNotFound, ErrTooLarge, ErrInvalidKey and ErrClosed
// (errors.Is), or the context's error, or one of the two classes of
// failure: ErrConfig (wrong credentials, a missing permission, table or
// schema, a server of another kind: waiting will not fix it) and
// ErrUnavailable (the backend did not answer, or not within
// Options.OpTimeout), with the backend's own error underneath.
// *HeldError and *TooLargeError carry details (errors.As).
//
// # Bounds and checks
//
// Every backend call is bounded by Options.OpTimeout (default 5 s, URL
// op_timeout=), even under context.Background(); so are Open and Close.
// No call waits past its ctx, not even for what it must undo when it
// fails or is cancelled (releasing a lease it took and will not use,
// leaving a fair queue): that is done within ctx while ctx lasts, and
// otherwise in the background, bounded by the operation timeout; Close
// waits for it.
// Open, Connect and every backend package's New check the server (Ping)
// before they return, unless Options.Lazy (URL lazy=true).
//
// # Metrics and traces
//
// A Client records through the OpenTelemetry API only, into
// Options.MeterProvider and Options.TracerProvider, or, when those are
// nil, into the global providers (otel.SetMeterProvider,
// otel.SetTracerProvider), looked up at each call so that providers
// installed after Open are used. With no provider installed nothing is
// recorded and no span is started, at no allocation per call.
//
// Each backend call (one per method; two where the Client builds a fast
// path the backend lacks: TryClaimRead as claim then get, CommitRelease
// as commit then release) is recorded as:
//
//   - a point of the histogram stampede.claim.operation.duration
//     (MetricOperationDuration; seconds, buckets from 50 µs to 10 s;
//     stampede_claim_operation_duration_seconds in Prometheus), with the
//     attributes stampede.operation (claim, claim-read, extend, release,
//     commit, commit-release, get, set, delete, subscribe, notify,
//     publish, subscribe-topic, ping, revoke, get-many, claim-many,
//     commit-release-many, subscribe-many, release-many), stampede.backend (Features.Name)
//     and, when the call returned an error, error.type;
//   - a span "claim OP" of kind client, a child of the span in the
//     caller's context, with the same attributes. The backend's context
//     carries it, so spans the backend's own client starts (a traced
//     Redis or PostgreSQL client) are its children.
//
// error.type is the error's class: config (ErrConfig), unavailable
// (ErrUnavailable), timeout (no answer within the operation timeout or
// the caller's deadline), canceled (the caller's context), held
// (ErrHeld), not_found (ErrNotFound), lost (ErrLost), too_large,
// invalid_key, closed. held and not_found are answers, not failures:
// they are recorded, so contention (claims refused) and misses can be
// counted, but they leave a span's status unset, where every other class
// sets it to Error with the error's message. Alert on config (it does
// not pass by itself) and on the rate of unavailable and timeout, never
// on held or not_found. Calls the Client refuses before any I/O (an
// invalid key, a value too large, a closed Client, Commit past the
// lease's Deadline) are not backend calls and are not recorded. Keys are
// not attributes.
//
// A backend that polls (memcached, DynamoDB, MariaDB: Features.Notify is
// Poll, and the driver is a driver.PollCounter) also reports the
// observable counter stampede.claim.poll.requests (MetricPollRequests;
// unit {request}; stampede_claim_poll_requests_total in Prometheus), with
// the attribute stampede.backend: the requests its poll loops have sent
// to read the keys its waiters wait on, a batch of keys read together
// counting once. Its rate is the load that waiting puts on the backend
// (on DynamoDB, what it bills besides the claims). It is read when the
// metrics are collected, registered by NewClient and unregistered by
// Close.
//
// # Backend authors
//
// A backend implements the small interfaces of package
// github.com/stampede-go/stampede/claim/driver and runs the conformance
// suite (package github.com/stampede-go/stampede/conformance) against its
// real server; everything above is done once, here.
package claim
