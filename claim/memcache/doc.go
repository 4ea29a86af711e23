// Package memcache is the claim driver on memcached, through
// github.com/bradfitz/gomemcache: leases are items created with add,
// fencing tokens come from incr, and waiters are woken by polling
// (memcached cannot push).
//
// # URLs
//
//	memcache://HOST[:PORT][,HOST:PORT...][?PARAMS]
//
// Parameters (unknown, repeated or malformed ones are errors):
//
//	prefix          key prefix (default "stampede")
//	maxvalue        largest value in bytes, at least 1024 (default 1047552:
//	                memcached's default 1 MiB item size less 1 KiB)
//	io_timeout      gomemcache's Timeout: dialling and each call's I/O (default 500ms)
//	max_idle_conns  idle connections kept per server (default 16)
//	poll_min        first polling interval after a change (default 2ms)
//	poll_max        polling interval cap (default 50ms)
//	clock_skew      Options.ClockSkew: margin for clients' clock differences
//	                (default 100ms; see Semantics)
//	tls             true: connect with TLS (memcached -Z); default false
//	cacert, cert, key, servername, skip_verify
//	                TLS, read by driver.Params.TLS (need tls=true;
//	                servername defaults to each server's HOST)
//
// The port defaults to 11211. User info is an error: memcached's text
// protocol has no authentication. The Client's own parameters, op_timeout
// and lazy, work as on every backend (see claim.Open). gomemcache spreads
// keys over several servers by hash. The Client's As accepts a
// **gomemcache.Client.
//
// # Opening
//
// gomemcache dials nothing until a call needs a server, so Open and New
// check the servers before they return (the driver's Ping, within the
// operation timeout, op_timeout, 5 s by default): a version command to
// each server in turn, which dials it (the TLS handshake included) and
// proves it answers as memcached does. Client.Ping runs the same check.
// With lazy=true (Options.Client.Lazy) Open and New do no I/O; the first
// call finds what the check would have.
//
// A server that requires a client certificate refuses a client without
// one only after the handshake (TLS 1.3), so the refusal could cross the
// first request and show as a reset connection. When the server asks for
// a certificate and the URL gives none (tls=true without cert and key),
// the dialer therefore waits for the server's verdict (at most 100 ms, or
// io_timeout if shorter) before it hands the connection on: a refusal
// fails the dial as the "certificate required" it is, and a server that
// only asks (memcached's ssl_verify_mode=1) costs that wait per new
// connection. A client given to New dials with its own DialContext.
//
// Every gomemcache call is bounded by gomemcache's own Timeout (the URL's
// io_timeout, default 500 ms; dialling, then each read and write), and
// by the caller's context: gomemcache takes no context, so a call that
// could outlast the context runs on a goroutine of its own and the
// driver returns when the context ends, leaving the call to end by its
// Timeout (what it wrote may still reach the server: see Commit). A call
// whose context is done is not made.
//
// # Semantics
//
// Four items per key: the lock (PREFIX:l:KEY), the fence counter (:f:), the
// notify counter (:n:) and the value (:v:), KEY mapped by driver.KeyEncoder
// to memcached's rules (250 bytes with the prefix, no space or control
// byte; other keys are hashed).
//
// Claim is an add of the lock (or the takeover of an ended one, below),
// then an incr of the fence counter, which is
// created when missing at the current Unix time in microseconds: tokens
// keep increasing after the counter was evicted or the server restarted, as
// long as the clients' clocks do not step back. Features.DurableFence is
// false all the same: memcached may evict the lock itself, and then two
// holders can be live at once.
//
// TTLs are whole seconds, rounded up (MinTTL and TTLGranularity are 1s).
// memcached's clock ticks once a second and may run late, so the lock is
// stored with exptime TTL+10s: the server never drops it before its
// holder's Deadline (clocks running at the same rate), and nobody waits
// for it to (below). Lifetimes over 30 days are
// sent as absolute Unix times, which then depend on the server's clock.
//
// Expiry is judged on the clients' clocks, not by memcached dropping the
// item: the lock records the end of its lease (the claimer's clock read
// before the request, plus the TTL), its holder gives up at that end by
// its own clock (Extend, Commit), and a claimer finding the lock still
// stored ClockSkew (100 ms by default) past that end, by its own clock,
// takes it over with a cas on the lock it just read (gets): a late
// Extend or Release of the old holder, or a rival's takeover, changes the
// lock and fails the cas, so one of them wins. Two holders never overlap
// while the clients' clocks differ by less than ClockSkew. A crashed
// holder's key is thus taken over ClockSkew after its lease's end (four
// round trips: add, gets, cas, incr), and pollers look at the key at that
// moment (PollState.Expires), not when memcached drops the item.
//
// Release and Extend get the lock, compare its holder id and swap it with
// CompareAndSwap (Release: for an item already expired, then incr the
// notify counter). The lock records the end of its lease: past it (by the
// local clock) Extend and Commit answer ErrLost, whatever the lease's
// Deadline says, and Release frees the lock if nobody claimed it since,
// and answers ErrLost.
//
// Commit is NOT atomic (Features.AtomicCommit is false; there is no
// TryClaimRead or CommitRelease fast path either): one multi-get reads
// the lock (checked as Extend does) and the value item with its CAS id,
// then the value is written conditionally on that read: a cas of the
// item read, or an add where there was none (written or deleted in
// between: read again, at most three times). A write that reaches the
// server late, after its call gave up (past io_timeout or its context:
// the bytes were on the wire), therefore never replaces a value written
// after its read, such as a newer holder's acknowledged commit: memcached
// refuses it (EXISTS, NOT_STORED). Commit succeeds only if the write's
// reply arrived before the lease's local Deadline, hence while the lease
// was certainly live. A later reply may mean a write after expiry: Commit
// takes the value back (gets, compare the bytes, CAS to expired) and
// answers ErrLost. Windows left: a late write still lands where the value
// item is gone when it arrives (deleted, expired or evicted after the
// write's read) and nobody wrote it since, so a value a holder computed
// under its lease can appear after a Delete (a newer holder's commit
// replaces it); readers may see a value acknowledged after its Deadline
// for about one round trip before it is withdrawn; a newer holder's value
// equal byte for byte to such a value is withdrawn with it (a miss).
// Eviction of the lock, and a Release of the same lease during its
// Commit, are not covered.
//
// Revoke is NOT atomic either: it ends the lease first, then replaces the
// value, and blocks the key in between. One multi-get reads the lock and
// the value item; the lock is swapped (cas) for a tombstone, or one is
// added where there was none: a lock item whose holder, "~NONCE:HOLDER",
// matches no lease, so the revoked lease is lost and TryClaim finds the
// key held, while pollers still see the old holder; the value item is
// written conditionally on the read (cas, or add; read again on a
// conflict): the new value, or for a deletion an item every reader takes
// as absent, kept 60 s, so that a write conditional on an earlier read
// fails even where there was no value; the tombstone, if still this
// call's, is swapped for an expired item (gets, cas), which frees the key
// and wakes pollers that saw the lock; an incr of the notify counter wakes
// the others. Six round trips. The fence counter is untouched. A Commit
// racing Revoke lands before the value is replaced (and is replaced), or
// is refused on the server and then finds the tombstone (ErrLost). Windows
// left: the tombstone records an end 3 × 5 × io_timeout away (taken over
// ClockSkew later, like a dead holder's lock), so a Revoke that fails half-way, or whose revoker dies, blocks
// the key that long at most, and one slower than that lets a claim in
// before the value is replaced; with several servers, a Commit whose
// multi-get reached the lock's server before the tombstone and the value's
// server after the replacement writes over it; eviction of the tombstone
// or of the deleted-value item; a Commit's add held on the network over
// 60 s after the Revoke of a key without a value.
//
// Batches (driver.Batcher): every read of a batch is one multi-get (one
// gets per server, all at once), whatever its size; writes are one key
// each, sent concurrently, at most max_idle_conns at once (gomemcache
// neither pipelines nor multiplexes a connection, and this never dials
// beyond its pool). GetMany: one multi-get. TryClaimMany: each key's
// TryClaim, then one multi-get of the claimed keys' values (TryClaim then
// Get, as the Client's TryClaimRead is here). CommitReleaseMany: one
// multi-get of every lock and value, then each key's conditional write,
// cas of the lock read to expired, and incr (Commit then Release).
// SubscribeMany: one multi-get of every lock and notify counter, from
// which each poll loop starts. Each key has its single-key method's
// guarantees; nothing is atomic across keys. Features.MaxBatch is 0:
// memcached takes a multi-get of any length.
//
// Values carry their expiry (client clock, Unix ms) in an 8-byte header and
// are stored with exptime TTL+1s: Get never returns an expired value.
//
// Notification polls (Features.Notify is Poll, see driver.Poller): a poll
// reads the lock and the notify counter in one multi-get. Release (once
// the lock is gone) and Notify bump the counter; a changed counter, or the
// lock seen at the previous poll gone, replaced or past its end plus
// ClockSkew (a dead holder's, which the waiters take over), wakes the
// key's waiters; a claim of a free key does not. The loop reads the key
// at that moment (PollState.Expires), whatever its backoff. Topics use
// the Client's topic log.
//
// # Errors
//
// ErrHeld (Remaining until the lock may be taken over: its recorded end
// plus ClockSkew), ErrLost, ErrNotFound,
// ErrTooLarge (over maxvalue, refused before any I/O; or from a server
// whose item size limit is smaller), and gomemcache's own errors
// underneath.
//
// Configuration errors wrap claim.ErrConfig, from every method, Open and
// New included: a reply that does not parse as memcached's text protocol
// (another kind of server at the address: gomemcache's "unexpected
// response line", "unexpected line in get response", "corrupt get
// result", or a counter that is not a number; memcached's own
// SERVER_ERROR and CLIENT_ERROR are not), a TLS handshake refused for its
// certificates (*tls.CertificateVerificationError, an alert from the
// server such as "certificate required") or with a server that does not
// speak TLS (tls.RecordHeaderError), and gomemcache.ErrNoServers (no
// server, or none gomemcache.New could resolve: it never resolves again).
// Everything else is unavailability (claim.ErrUnavailable, from the
// Client): a refused or dropped connection, a timeout. A plain-text
// client of a TLS-only memcached sees its connection closed: only
// unavailable.
//
// Subscribe reads the key's state before it returns, so it fails with
// the real cause (ErrConfig above) instead of waiting. A subscription
// whose polls start failing (the server gone) wakes its waiters once, so
// they re-check and meet the error, or take a key that was released.
package memcache
