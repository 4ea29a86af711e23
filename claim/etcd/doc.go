// Package etcd is the claim driver for etcd v3: claims are transactions on
// a lock key's CreateRevision, leases are etcd leases, and waiters are woken
// by watches.
//
// # URLs
//
//	etcd://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][?PARAMS]
//	etcds://USER:PASSWORD@HOST[:PORT]?prefix=app&cacert=ca.pem&cert=c.pem&key=c-key.pem
//
// The default host is 127.0.0.1, the default port 2379 (net/url rejects
// "h1:2379,h2": give each host its port). etcd's user and password go in
// the URL's user info. etcds:// dials with TLS: the system roots unless
// cacert is given, each endpoint verified by its own host name unless
// servername is given. Parameters: prefix (default DefaultPrefix; a URL
// path is an error), dial_timeout (each connection attempt, TCP and
// HTTP/2 handshake, authentication, and the lease round trip at open;
// default DefaultDialTimeout, 5 s), minttl (the server's minimum lease
// TTL; default: asked of the server once at open), maxvalue (bytes,
// default DefaultMaxValueLen), and for etcds:// only cacert, cert, key,
// servername and skip_verify; besides the Client's own op_timeout and
// lazy (claim.Open). An unknown parameter is an error; the password never
// appears in errors.
//
// claim.Open checks the server before it returns, within ctx and the
// operation timeout (op_timeout, default claim.DefaultOpTimeout, 5 s): it
// connects, authenticates (clientv3 does, when the URL has a user), grants
// and revokes a 1-second lease to learn the minimum TTL (unless minttl is
// given), then Pings (one linearizable read under the prefix: a leader,
// a valid token, read access). With lazy=true it does none of that: the
// etcd client is made, and authenticates, on the first call, which waits
// for it within its own bound (a connect that outlives a call goes on for
// the next one), and minttl defaults to DefaultMinTTL instead of asking.
// A URL-opened client pings the server after 10 s without traffic on a
// connection with watches (so a peer gone without a word is noticed
// within the dial timeout after that), and retries a lost connection
// with gRPC's backoff capped at 5 s.
//
// New takes the caller's own *clientv3.Client and checks it the same way
// (Ping), unless Options.Client.Lazy; Client.As accepts a
// **clientv3.Client (none until a lazily opened Client has connected).
//
// # Semantics
//
// TryClaim is one transaction: if the lock key does not exist
// (CreateRevision == 0), put it with the holder's ID, attached to an etcd
// lease of the claim's own; otherwise read it (TryClaimRead also gets the
// value key in it). The fencing token is the lock key's CreateRevision:
// etcd's revision counter is cluster-wide, strictly increasing and
// persisted in the raft log (DurableFence). The etcd lease is granted ahead:
// a released claim's lease (and that of a claim attempt that found the key
// held) is kept by the process, up to 64 per TTL, and carries its next
// claim of the same TTL, renewed by a keep-alive sent alongside the
// transaction on one long-lived LeaseKeepAlive stream (a leader-local
// call, not a raft write), so a claim is one raft write; only a process
// with no idle lease of that TTL left with at least half its TTL grants
// one first. One etcd lease never carries two live claims, so a claim
// nobody extends still ends with its own lease. Release, Commit
// (AtomicCommit), CommitRelease and Extend are transactions comparing the
// lock key's CreateRevision with the token and its value with the holder
// (for a lease the fair queue granted, the grant key's ModRevision: see
// Fair acquisition).
// A crashed holder's lease expires and etcd deletes the lock key with it;
// leases nothing needs any more are revoked in the background.
//
// Takeover does not wait for etcd's lease-expiry loop (every 500 ms): a
// process that finds a key held remembers the lock key's ModRevision and
// when it first learned of it (the claim attempt's answer, or its watch's
// event), and learns the granted TTL of the key's etcd lease (TimeToLive,
// once per lease). Every write of a lock key (the claim, each Extend) is
// made by a request its holder sent after the clock reading its Deadline
// is counted from, for a TTL no longer than that lease's, so once the
// process's own clock shows that TTL (plus 1 ms and 500 ppm) elapsed since
// it learned of the revision, the holder's Deadline has passed, on clocks
// that run at the same rate (the assumption Lease.Deadline already makes;
// no synchronised clocks). The claim attempt then deletes the lock key in
// a transaction on that ModRevision, so not if an Extend landed since, and
// claims again; an Extend or Commit the holder sent in time and that lands
// after the delete compares the CreateRevision, which is gone or the next
// claim's, and fails (ErrLost). A process that first sees the claim late
// waits a whole TTL from then (or for etcd's expiry): waiters that were
// already waiting take over within a few milliseconds of the Deadline.
// Holders of versions before this one renewed by keep-alive alone, which a
// waiter cannot see: every process sharing a prefix must run this version
// before any claims with it.
//
// Revoke is one transaction that always applies: delete the lock key if it
// exists, else put the key's notify key (either wakes the key's watches),
// and put or delete the value key, so the lease ends and the value changes
// in one atomic step; the revoked holder's fenced transactions then fail,
// and the next claim's token, a later CreateRevision, is larger. The
// revoked claim's etcd lease, which no key is on any more, expires by its
// TTL.
//
// Batches (driver.Batcher, at most 126 keys: etcd's default --max-txn-ops
// of 128 less the 2 operations of each nested transaction) are single
// transactions of one nested transaction per key, each the single-key
// method's own, atomic per key only: GetMany one read-only transaction;
// TryClaimMany one lease grant for the batch and one transaction (and a
// TimeToLive per distinct holder lease, concurrently, if keys are held);
// CommitReleaseMany one transaction, or several sent concurrently when the
// values would not fit in one request. The claims of a TryClaimMany share
// its etcd lease: Extend moves a key to a lease of its own, and neither
// Release nor Revoke revokes the shared one. SubscribeMany makes its
// watches concurrently on the one watch stream, where clientv3 has them
// confirmed one at a time.
//
// Lease TTLs are whole seconds, at least the server's minimum (1.5 × its
// election timeout rounded up: 2 s by default). etcd revokes expired
// leases every 500 ms, so a lock key may outlive its lease by about half a
// second (takeover by a waiting process does not wait for that, above).
// Extend with the lease's own TTL is one fenced transaction that puts the
// lock key again on its lease (so waiting processes see it renewed), with
// a keep-alive of the lease alongside; otherwise, or if the lock key is no
// longer on that lease, it moves the lock key to a new lease in one fenced
// transaction. HeldError.Remaining is when this process may take over
// (above), at most the lease's TimeToLive rounded up to the second.
//
// Values carry their own expiry (the writer's wall clock plus the TTL, so
// clock skew between processes shifts it) and share one lease per TTL
// class, so that etcd deletes them at most about twice their TTL later.
//
// Notification is pushed: one watch per subscribed key, all on the
// client's one gRPC watch stream, started at the current revision so it is
// served from etcd's synced watcher group. A release, a lease expiry and
// Notify wake it. A broken watch (compacted while disconnected, cancelled
// by the server) is restarted from the current revision and the key's
// subscribers are woken to re-check, so no release is lost. A connection
// lost and not re-established at once (gRPC's TRANSIENT_FAILURE: the
// server is down, refuses, or is cut off) wakes the subscribers of every
// watched key too, so waiters re-check (and meet ErrUnavailable, or take
// over) rather than wait for a wake-up that cannot come; the etcd client
// resumes the watches by itself once it is back, from the revision each
// had reached. Topics are puts of a topic key and watches of it; a broken
// one delivers a reset.
//
// CommitRelease (and CommitReleaseMany of up to 125 keys) also puts the
// key's notify key with the value (values up to 8 KiB), in the same
// transaction, so the wake-ups of SubscribeValue (driver.ValueNotifier)
// carry the value stored; every other wake-up carries none.
//
// # Fair acquisition (hand-over)
//
// The driver is a driver.Queuer (claim.Client.AcquireFair). A key's
// waiters are keys under PREFIX/q/KEY\x00, one per waiter (its holder ID),
// ordered by CreateRevision (renewing an entry re-puts it and keeps its
// place), each on an etcd lease of its own that only its waiter's Enqueue
// renews: etcd deletes the entry of a waiter that stopped renewing when
// that lease runs out (its TTL in whole seconds, at least the server's
// minimum, plus etcd's 500 ms expiry loop), so the first entry is the
// first live waiter. A grant is one transaction that puts the lock key
// for the waiter on the waiter's own etcd lease, deletes its entry, and
// puts the grant key (the lock key + "\x00g", no lease) with the grant
// record (holder, etcd lease, TTL). A put cannot give the lock key a new
// CreateRevision, so the token of a granted lease is the grant key's
// ModRevision (the grant's revision: above every earlier token of the
// key, TryClaim's included), its Handle is marked "q:", and its Extend,
// Commit, Release and CommitRelease compare the grant key's ModRevision
// with the token and the lock key's value with the holder.
//
// HandOff is one transaction, compared on the lease's token and holder,
// on the first waiter's entry (unchanged, and no entry created before
// it), granting it the key, or, with nobody queued (compared too),
// deleting the lock key as Release does: the end of the lease and the
// grant are one atomic step. The holder's process learns the first
// waiter ahead: from the moment it is granted the key it watches the
// queue (one watch, a read of its first 16 entries, in the background),
// so the hand-off reads nothing on its way; without that cache (not yet
// loaded, or over 1024 keys held in the process) it reads the queue's
// first entry first (a serializable read: no consensus round). If the
// queue changed meanwhile, the transaction's failure branch reads it and
// the transaction is tried again. The grant reaches the waiter's process
// on its watch of the grant key (SubscribeGrants), which etcd pushes at
// the revision of the grant: the waiter makes no request of its own. A
// broken watch or a lost connection calls grant with a zero Lease (the
// client enqueues again, which finds a grant made meanwhile).
//
// Enqueue is one transaction in the common cases (holder's lease
// returned if it holds the key; else its entry put or renewed behind a
// live lease; or the key granted to it when free and nobody else
// queued), with a keep-alive of the entry's etcd lease sent alongside;
// when the key is free and someone else is first it grants the key to
// that waiter in a second transaction and then queues. A holder whose
// deadline has passed (takeoverAfter) has its lock key deleted on its
// ModRevision, and the first waiter is granted the key. Dequeue is one
// transaction; if the key had been granted to the departing waiter,
// HandOff follows (two transactions, the lease fenced and the waiter's in
// between). Limits: a waiter whose etcd lease has run out but which etcd
// has not yet deleted may be granted the key (the grant then ends with
// that lease, and the next waiter is served by the next Enqueue of any
// waiter, within a third of its TTL); Revoke of a fairly held key
// deletes the lock key without a grant (likewise); a grant key whose
// last holder died stays until the key's next fair release.
//
// # Errors
//
// Configuration errors wrap claim.ErrConfig, in every call (Open and Ping
// included), etcd's own error underneath (errors.As with
// rpctypes.EtcdError, or gRPC's status): rpctypes.ErrAuthFailed (a wrong
// user name or password), ErrUserEmpty (no user on a server with
// authentication), ErrInvalidAuthToken (a token the server no longer
// honours, which clientv3 could not renew), ErrPermissionDenied (a user
// without access to the prefix), and any gRPC
// Unauthenticated, PermissionDenied or Unimplemented status (a gRPC server
// that is not etcd v3); so is a failure to reach the server while the
// last connection the client made found a server of another kind at the
// address (its first bytes were not an HTTP/2 SETTINGS frame, or not a TLS
// record over etcds://; not checked when an HTTPS proxy from the
// environment is in the way). Subscribe returns the error a watch is
// refused with (permission denied) the same way. etcd's request-too-large
// is ErrTooLarge, and so is a Publish message over the value limit
// (refused before any I/O); other errors are etcd's and gRPC's own, which
// the Client reports as claim.ErrUnavailable: every call waits for a
// working connection until its deadline (clientv3's WaitForReady), so a
// server that is down or does not answer costs each call its whole
// operation timeout.
package etcd
