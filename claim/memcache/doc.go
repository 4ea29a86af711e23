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
//	poll_learn      false: poll on the backoff alone (Options.PollFixed); by
//	                default polls learn how long claims are held and read
//	                around their likely end (driver.PollOptions)
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
// A client that saw the lock written when it was made takes it over
// sooner: the lease's TTL (recorded in the lock, "HOLDER;0;0TTL UNIXMS")
// plus 1 ms and 500 ppm after its first sighting of that write (the
// first reply that showed it, to a claim, an Enqueue or a poll), by its
// own clock, if that comes before the recorded end plus ClockSkew
// (driver.Sightings). That is safe whatever the clocks read: the holder
// counts its Deadline from before it sent the write, so the Deadline
// passes before the sighting plus the TTL on clocks that run at the same
// rate (within 500 ppm: a holder whose clock runs slower reaches its
// Deadline late by the difference, which only KeepAlive's margin, TTL/10,
// absorbs; the clock rule also absorbed up to ClockSkew of it). Every
// later write of the lease (Extend, a grant) is another write, judged
// from its own first sighting. A client that first saw the lock late (it
// started waiting after the claim) learns nothing early and waits for
// the recorded end plus ClockSkew. Waiters that poll from the start of a
// claim thus take a crashed holder's key over within a few milliseconds
// of its Deadline. Locks written by earlier versions record no TTL, or
// no leading 0 before it (the mark that the lease's holder runs this
// rule: set by the holder's own writes, and by a grant from the
// grantee's queue entry, which carries the same mark), and are judged by
// the clock rule alone: a holder of an earlier version may count its
// Deadline past a sighting plus the TTL (its lease from a grant carried
// the granter's clock offset; its Extend could record the grant's end
// again), so a rolling upgrade stays safe.
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
// ClockSkew later, or its TTL after a claimer first saw it, like a dead
// holder's lock), so a Revoke that fails half-way, or whose revoker dies, blocks
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
// cas of the lock read to expired, and incr (Commit then Release; for a
// fair lease, Commit then HandOff).
// SubscribeMany: one multi-get of every lock and notify counter, from
// which each poll loop starts. Each key has its single-key method's
// guarantees; nothing is atomic across keys. Features.MaxBatch is 0:
// memcached takes a multi-get of any length.
//
// Values carry their expiry (client clock, Unix ms) in an 8-byte header and
// are stored with exptime TTL+1s: Get never returns an expired value.
//
// Notification polls (Features.Notify is Poll, see driver.Poller): a poll
// reads the lock and the notify counter in one multi-get; polls of keys
// due at about the same time go together, one multi-get of up to 100
// keys' items, at most two in flight per client (driver.NewBatchPoller),
// so a process waiting on hundreds of keys neither sends a request per
// key nor dials past the connection pool. Release (once
// the lock is gone) and Notify bump the counter; a changed counter, or the
// lock seen at the previous poll gone, replaced or past the moment it
// may be taken over (its end plus ClockSkew, or sooner by the sightings
// above: a dead holder's, which the waiters take over), wakes the key's
// waiters; a claim of a free key does not. The loop reads the key
// at that moment (PollState.Expires), whatever its backoff. Topics use
// the Client's topic log.
//
// # Fair acquisition (hand-over)
//
// The driver is a driver.Queuer (Client.AcquireFair). A key's queue lives
// in its lock item, next to the holder: a fair lock's value is
// "HOLDER;TOKEN;TTL{;WAITER,TTL,END} UNIXMS" (the lease's fencing token
// and TTL, then each waiter's holder ID, the TTL it asked for and when
// its entry lapses, in order; a TryClaim's lock is one with token 0 and
// no queue). The fair fields ride before the first
// space, so readers of the plain format "HOLDER UNIXMS" (earlier
// versions of this package included) read the lease's end as before and
// take the whole head for a holder that is not theirs. Every operation
// is a gets of the lock, a decision on what it read, and a write
// conditional on that read (cas; an add where there was no lock); a
// grant's token comes from the fence counter TryClaim uses (incr). One
// cas replaces the old holder by the first live waiter and removes its
// entry, so a grant is atomic with the end of the lease before it.
// Round trips: Enqueue 1 when holder already holds the key (step 2), 2
// to queue or renew (gets, cas), 3 with a grant (gets, incr, then cas,
// or add on a key without a lock); HandOff 2 with a waiter (gets and
// incr sent at once, then cas), 3 without (gets, cas to expired, incr
// of the notify counter, as Release); Dequeue 1 to 3.
//
// A cas refused because the lock changed since it was read (a waiter
// joined, renewed or left, a rival's grant) wrote nothing; the operation
// reads again, at most 8 times (Enqueue, Dequeue) or 16 (HandOff), each
// time deciding on the new read, so an outcome is applied exactly when
// its write is. After that many conflicts Enqueue answers from one more
// read (holder's lease, or ErrHeld, with a Remaining of a millisecond if
// no lease is live so that the client enqueues again soon; holder's
// entry may then not have been renewed); HandOff fails and the lease
// stays held; Dequeue fails and the entry lapses by its TTL. Extend and
// Release, whose cas can lose to the waiters' renewals as well, read
// again likewise (at most 8 times) and then fail without ErrLost: the
// lease is still held. Two leases
// are never live at once: the lock item is the one record of who holds
// the key, every write is conditional on the read it was decided on,
// and a lease another holder did not end is taken over (Enqueue's step
// 4, TryClaim) only ClockSkew past the end it records, or its TTL after
// the taker first saw its grant written, as any claim here (an Enqueue
// that finds its holder granted, step 2, reports at most the granted TTL,
// so its Deadline, counted from before the grant, holds under both
// rules). What is not atomic, precisely: the token is drawn (incr) before
// the cas that grants it, so a lost cas leaves a gap in the tokens (never
// a repeat, never a decrease: HandOff's is drawn together with its read,
// yet after the lease it ends was granted; the others' after the read);
// the granted lease's end is recorded by the granter's clock (its time
// before the read, plus the waiter's TTL), while the waiter's client
// counts its Deadline from the start of its last Enqueue answered
// ErrHeld, which preceded the granter's read (such an Enqueue wrote the
// lock, so a grant decided on an earlier read fails its cas; or, after
// the conflicts, read it last), so the two agree while clocks differ by
// less than ClockSkew; a write that reaches the server after its call
// gave up (io_timeout, the context) still lands if the lock is unchanged
// since its read: a HandOff's grant (as if in time, though its caller saw
// an error), or an Enqueue's entry or grant for a waiter that has left
// meanwhile (its Dequeue found nothing): that entry lapses by its TTL,
// that grant holds the key until its TTL ends and the next waiter takes
// over (step 4). Eviction of the lock item loses the lease and the
// queue, as it loses any lock here.
//
// Grants reach the waiters by polling (SubscribeGrants): one loop per
// key per process, one get of the lock per poll, with the cadence of the
// notification polls (poll_min after a change, doubling up to
// poll_max). A poll that sees a new holder with a new token delivers
// that lease to the process (the Client picks out its own holders), with
// the TTL it was granted for, or what was left of it when the read was
// sent if less, and none if nothing was; a poll that sees the key freed
// or taken by TryClaim, or fails, delivers a zero Lease (the waiters
// enqueue again). The grant costs the waiter no round trip of its own.
// HandOff returns the lease it granted, which the Client hands to a
// waiter in its own process at once. A waiter in another process sees
// its grant at its next poll: the hand-over takes as long as Acquire's
// wake-up does here (a poll interval, ~20 ms p50 after a 300 ms hold with
// the defaults), one claim round trip less.
//
// Limits: memcached's item size bounds a queue (about 50 bytes a waiter:
// some 20,000 waiters in 1 MiB). Each renewal of an entry (every TTL/3
// per waiter) is a cas on the lock and can make a HandOff's cas lose: at
// thousands of renewals a second on one key (many waiters with short
// TTLs) a HandOff can lose 16 times, fail, and the key then passes when
// the lease runs out (step 4). TryClaim, Release and Revoke do not keep
// the queue (a key is used in one mode): the waiters are told (a zero
// grant) and enqueue again, in whatever order they come. An Enqueue
// finding a Revoke's tombstone answers ErrHeld without queueing.
//
// # Errors
//
// ErrHeld (Remaining until the lock may be taken over: its recorded end
// plus ClockSkew, or sooner by the sightings, see Semantics), ErrLost, ErrNotFound,
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
