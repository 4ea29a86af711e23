// Package claim is the portable contract under stampede: a distributed
// claim (an atomic set-if-absent with a lease and a fencing token), a
// notifier that wakes waiters when a claim is released, and a shared value
// store, implemented once per substrate (Redis, etcd, Consul, DynamoDB,
// PostgreSQL, memcached, ZooKeeper, and in-process memory).
//
// Most users never call a Claimer directly: package flight builds a tiered
// cache on top. Call claim directly to run a job once per key fleet-wide:
//
//	b, err := claim.Open(ctx, "redis://localhost:6379/0")
//	l, err := claim.Acquire(ctx, b, "rebuild:report-42", 10*time.Second)
//	k := claim.KeepAlive(ctx, b, l, nil)
//	err = work(k.Context())
//	err = b.Commit(ctx, k.Stop(), result, time.Hour)
//	err = b.Release(ctx, l)
//
// # URLs
//
// Backends register a URL scheme when their package is imported (like
// database/sql drivers); Open picks one by scheme. Every backend also has a
// New constructor taking the user's own configured client, for TLS, auth,
// clusters and pools. Unknown query parameters are errors. Credentials in
// URLs never appear in errors (see Redact).
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
// that stops at its Deadline never overlaps the next holder: backends
// refuse Commit and Extend past it without I/O.
//
// Subscribing before checking state guarantees no lost wake-up: a release
// that lands after Subscribe returns wakes the subscriber. Every Release
// and Notify wakes every subscriber of that key in every process; one
// process keeps one substrate subscription per key whatever the number of
// subscribers. Push backends deliver within a round trip; poll backends
// poll once per key per process with jittered backoff bounded by the
// holder's lease. Every wait in this package is bounded by ctx and by the
// holder's lease expiry.
//
// # Errors
//
// Sentinels ErrHeld, ErrLost, ErrNotFound, ErrTooLarge, ErrInvalidKey and
// ErrClosed match with errors.Is; backends wrap them once with the
// operation and key, and wrap the substrate's own error underneath.
// *HeldError and *TooLargeError carry details (errors.As).
package claim
