// Package redis is the claim driver for Redis (standalone, Sentinel or
// Cluster) on go-redis v9: leases by a Lua SET-if-absent with PX, fencing
// tokens from a per-key INCR counter, wake-ups by pub/sub. Running it
// (persistence, eviction, failover, figures) is in docs/redis.md.
//
// # URLs
//
//	redis://[USER[:PASSWORD]@]HOST[:PORT][/DB][?PARAMS]
//	rediss://...   the same over TLS (server name checked against HOST)
//
//	redis://[USER[:PASSWORD]@]SENTINEL[:PORT][/DB]?master=NAME[&addrs=SENTINEL2:PORT,...][&PARAMS]
//	                 through Redis Sentinel (go-redis's failover client)
//
// PORT defaults to 6379 and DB to 0. Parameters: prefix, maxvalue (bytes)
// and health_check set the Options fields Prefix, MaxValueLen and
// HealthCheckInterval; wait_replicas and wait_timeout set WaitReplicas
// and WaitTimeout (the WAIT mode, below); go-redis settings client_name,
// pool_size, min_idle_conns, max_retries (default 0: one attempt per
// call), protocol (2 or 3, default 3), dial_timeout (default
// DefaultDialTimeout, 5s), read_timeout, write_timeout; cluster (true: a
// Redis Cluster client seeded with HOST and addrs) and addrs (more
// HOST:PORT seeds, comma-separated); master (the name the Sentinels
// monitor: HOST:PORT, whose PORT then defaults to Sentinel's 26379, and
// addrs are Sentinels, and the client follows the primary they name
// through failovers), with sentinel_user and sentinel_password for
// Sentinels that want their own credentials (USER and PASSWORD are the
// data nodes'); for rediss only, the TLS parameters every driver shares
// (cacert, cert, key, servername, skip_verify: see Params.TLS in package
// claim/driver), which apply to the Sentinels too; and the Client's own,
// op_timeout and lazy (see claim.Open). An unknown, repeated or
// malformed parameter is an error, and so are master with cluster=true,
// an empty master, addrs without cluster or master, sentinel_user or
// sentinel_password without master, wait_timeout without wait_replicas,
// wait_replicas with cluster=true, and a wait_timeout not below
// read_timeout (go-redis's default 5s). The opener does not dial;
// claim.Open then checks the server (see Errors) unless lazy=true. For
// custom dialers or anything else, build the client yourself and call
// New, which checks it the same way unless Options.Client.Lazy.
//
// # WAIT mode
//
// Replication in Redis is asynchronous: a claim or a fence increment the
// primary acknowledged can be lost by a failover, and then two holders
// coexist and tokens repeat (docs/redis.md has the measured figures).
// With wait_replicas=N (Options.WaitReplicas) every write but Release and
// the publishes (TryClaim, TryClaimRead, Extend, Commit, CommitRelease,
// Revoke, Set, Delete, and the batches' claims and commits) is followed
// by WAIT N TIMEOUT in the same pipeline, so on the same connection and
// in the same round trip. When fewer than N replicas acknowledged within
// wait_timeout (default DefaultWaitTimeout, 1s), the call fails with a
// *ReplicationError (claim.ErrUnavailable to the client), never silently:
// a claim is not reported as held (the driver releases it, best effort,
// and a lease it could not release expires by its TTL), a renewal leaves
// the lease's local deadline where it was (not ErrLost: the lease may
// still be held), and a commit or revoke is ambiguous (the primary has
// it; a failover may drop it), like any commit whose reply was lost.
// Release does not wait: a release a failover loses brings the lease back
// until its TTL, which delays the next holder and overlaps no one, and
// the next claim's WAIT covers it (replication keeps order). The WAIT
// mode has no fair queue (driver.Queuer, so AcquireFair fails with
// claim.ErrUnsupported): a grant is published from inside its script,
// before a WAIT could confirm it. It is refused on a cluster client
// (WAIT has no key to route it by). WAIT is not consensus: with more
// replicas than wait_replicas, Sentinel may promote one that had not
// acknowledged; reads (Get, the value a wake-up carries) may see a write
// that a failover then loses; and a replica that restarts without
// persistence forgets what it acknowledged.
//
// # Semantics
//
// For key K the driver uses PREFIX:{E}:lock, PREFIX:{E}:fence,
// PREFIX:{E}:val and the channel PREFIX:{E}:ch, where E is "=" + K when K
// is at most 255 bytes without braces, else "#" + base64url(SHA-256(K)); a
// topic T uses PREFIX:{E(T)}:topic. The hash tag {E} keeps every name of a
// key in one cluster slot, so every lease operation is one Lua script on
// one slot: atomic, on Redis Cluster too.
//
// TryClaim: if the lock key is absent, the script INCRs the key's fence
// counter and sets the lock to "TOKEN:HOLDER" with PX TTL; otherwise it
// returns the lock's PTTL (HeldError.Remaining). The fence counter has no
// expiry (one small key per key ever claimed) and survives release and
// expiry, so tokens strictly increase for as long as the server keeps its
// data (exact up to 2^53: scripts see numbers as doubles). A restart
// without persistence, or a failover to a replica that had not received
// the last INCR, loses counters and tokens can repeat:
// Features.DurableFence is false.
//
// Extend (PEXPIRE), Release (DEL then PUBLISH) and Commit (SET of the
// value key, PX when ttl > 0) each compare the lock's "TOKEN:HOLDER"
// first, in the same script, so Commit is atomic with the lease check.
// TryClaimRead is the claim script with a GET of the value key;
// CommitRelease is Commit and Release in one script. Leases and values
// have millisecond granularity and a 1 ms minimum; expiry is judged by
// the server's clock.
//
// Revoke is one script too: DEL of the lock whoever holds it (never of
// the fence counter, so the next token is higher), DEL or SET of the
// value key, then the publish. A revoked holder's compare scripts find
// the lock gone or another holder's (ErrLost), and nothing can see the
// lock gone with the old value still there.
//
// Batches (driver.Batcher) are go-redis pipelines: GetMany is one GET per
// key, TryClaimMany the claim-and-read script per key, CommitReleaseMany
// the commit-and-release script per key, all written before any reply is
// read. A batch costs one round trip, or one per master it touches on a
// cluster (go-redis runs the masters' parts concurrently), plus one the
// first time a server lacks the script (NOSCRIPT: those commands go again
// as EVAL). Each key is exactly its single-key call, atomic as that is;
// nothing is atomic across keys. SubscribeMany writes one SUBSCRIBE
// naming every channel (one SSUBSCRIBE per channel on a cluster) and one
// barrier per pub/sub connection, and returns when every barrier is
// answered. Features.MaxBatch is 0: Redis bounds neither.
//
// Wake-ups: Release and Notify publish on the key's channel (SPUBLISH on a
// *ClusterClient, so a release reaches only the key's shard; PUBLISH
// otherwise). Each Client keeps one dedicated pub/sub connection (one per
// master on a cluster) for all its keys and topics. Subscribe returns when
// a PING written after the SUBSCRIBE is answered (replies come in order),
// or fails with the server's refusal if it answers the SUBSCRIBE with an
// error (NOAUTH, NOPERM: go-redis alone would reconnect and retry that
// silently for ever). When the pub/sub connection drops or a health-check
// PING goes unanswered for a whole interval, the driver wakes every key's
// subscribers and resets every topic's at once, so that waiters re-check
// instead of waiting for a push that cannot come (with the server down,
// their re-check fails at once; a flight can fail open then), and once
// per outage however many reconnects fail. It reconnects with backoff
// (25 ms to 2 s), subscribes again and, once that is confirmed, wakes
// and resets them all again: anything published in between is lost. When
// a cluster slot moves away, it subscribes on the new master and wakes
// them once that is confirmed (or at once if it fails).
//
// # Fair acquisition (hand-over)
//
// The driver implements driver.Queuer (claim.Client's AcquireFair). A
// key's queue lives next to its lock, under the same hash tag (one
// cluster slot): PREFIX:{E}:queue, a list of holder IDs in arrival
// order, and PREFIX:{E}:waiters, a hash from holder ID to
// "DEADLINE:TTL" (DEADLINE in Unix milliseconds of the server's clock,
// TIME; TTL in ms); a holder is in the list once, exactly when it is in
// the hash. Both keys expire with their latest entry, and vanish when
// the queue empties. Grants are published on PREFIX:{E}:grant as
// "TOKEN:TTL:HOLDER".
//
// Enqueue, Dequeue and HandOff are one Lua script each, one round trip
// (plus an EVAL after NOSCRIPT, as for every script), atomic on the
// server. A grant (HandOff, Dequeue of a waiter holding the lease, or
// Enqueue's step 4) pops the first live waiter, INCRs the key's fence
// counter (the one TryClaim uses, so its token is above every earlier
// one), SETs the lock to "TOKEN:HOLDER" with PX of the waiter's TTL
// (overwriting the previous holder's: the old lease ends in the same
// step) and publishes the grant (PUBLISH, SPUBLISH on a cluster), all in
// one script. HandOff with nobody live queued deletes the lock and
// publishes "release" on the key's channel, as Release does.
// Expired entries are skipped and dropped when they reach the front,
// when their holder enqueues again (to the tail: a lapsed entry loses
// its place) or with the keys; an entry behind a live one changes
// nothing any step looks at. Scripts read the clock with TIME, so they
// need effects replication (the only mode from Redis 7, the default
// from 5).
//
// SubscribeGrants subscribes to the grant channel on the driver's
// pub/sub connection, as Subscribe does (confirmed by a barrier); every
// process subscribed sees every grant of the key and the client picks
// out its own holders. A gap of the connection (drop, silence, rebuild,
// slot migration) calls grant with a zero Lease, at the gap and again
// once resubscribed, so waiters enqueue again and find a grant they
// missed (Enqueue's step 2). UnsubscribeGrants returns at once: the
// UNSUBSCRIBE is written in the background, skipped if the key was
// subscribed again meanwhile.
//
// Client.As sets a *goredis.UniversalClient, and a **goredis.Client or
// **goredis.ClusterClient when the client is one.
//
// # Errors
//
// A held key is a *HeldError with the lock's PTTL; I/O failures are
// go-redis's errors, wrapped; in the WAIT mode, a write too few replicas
// acknowledged is a *ReplicationError. Passwords never appear in errors.
//
// Opening checks the server (the driver's Ping, which claim.Open, New and
// Client.Ping call): go-redis connects (dial, TLS handshake, HELLO with
// the credentials, or AUTH, then SELECT of the database), then one EVAL
// of a script that reads and deletes a key nobody writes and publishes on
// a channel nobody reads, under the prefix. Errors that waiting will not
// fix wrap claim.ErrConfig (driver.Misconfigured), in Ping and in every
// other call, go-redis's error underneath for errors.As (goredis.Error;
// goredis.IsAuthError and IsPermissionError): NOAUTH and WRONGPASS (no or
// a wrong password, a disabled user); NOPERM, and the ACL refusals Lua
// reports inside a script ("ERR The user executing the script can't ..."
// on Redis 7.0, "ERR ACL failure in script" on 7.2 and later): a user
// without the commands, the prefix's keys or its channels; ERR unknown
// command (a server too old for a command the driver uses, such as
// SPUBLISH before Redis 7 on a cluster, or one renamed away), from a
// script too; ERR DB index is out of range; a cluster URL at a standalone
// server (ERR This instance has cluster support disabled); a server of
// another kind at the address (memcached, an HTTP server: a reply that is
// not RESP, which go-redis cannot parse); and a TLS handshake refused for
// its certificates (an unknown CA, a certificate that does not name the
// host, an alert such as "certificate required", which, on TLS 1.3,
// arrives after the handshake and may be read as a dropped connection
// instead). READONLY (the address is a read-only replica) is ErrConfig
// in Ping only: in other calls it is a failover under way, which passes,
// and go-redis drops the connection for another. Everything else is
// taken as unavailability by the Client (claim.ErrUnavailable): refused,
// dropped or silent connections, timeouts, LOADING, MASTERDOWN,
// CLUSTERDOWN, NOREPLICAS, OOM, MISCONF, and a server that just closes
// the connection (as a TLS-only Redis does to a plain-text client).
//
// Timeouts: every call ends at its context's deadline, which the Client
// bounds by its operation timeout (op_timeout, claim.DefaultOpTimeout);
// a client opened by URL has ContextTimeoutEnabled for that, and dials
// once per attempt (go-redis's DialerRetries 1), each dial and TLS
// handshake bounded by dial_timeout and the context. On a client given
// to New without ContextTimeoutEnabled, each call runs on a goroutine of
// its own so that it returns at the deadline (the go-redis call ends in
// the background, at its ReadTimeout); Subscribe excepted, whose
// connection set-up go-redis then bounds by ReadTimeout alone. go-redis's
// read_timeout and write_timeout (default 5s) bound the socket operations
// under that, and the pub/sub connection's reconnects; health_check
// (default 3s) finds a silent pub/sub connection within two intervals.
package redis
