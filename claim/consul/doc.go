// Package consul is the claim driver for Consul's KV store: leases are
// compare-and-set writes of a small record (holder, expiry) on a lock key,
// fenced by Consul's raft index, committed with Consul transactions, and
// pushed to waiters by blocking queries.
//
// # URLs
//
//	consul://HOST:PORT?prefix=PREFIX&token=SECRET&dc=DC
//	consuls://HOST:PORT?cacert=CA.pem&cert=CERT.pem&key=KEY.pem    HTTPS
//	consul://USER:PASS@HOST:PORT   HTTP basic auth (behind a proxy)
//
// Parameters: prefix (Options.Prefix; the URL's path must be empty), token
// (ACL token; never printed), dc (datacenter), clock_skew
// (Options.ClockSkew; clock_skew=0: no margin), maxvalue
// (Options.MaxValueLen), wait (Options.WaitTime), maxwatches
// (Options.MaxWatches), maxconns (connections for everything but blocking
// queries, default DefaultMaxConns; a URL-opened Client uses one HTTP
// client for blocking queries and another for the rest), and the Client's
// own op_timeout and lazy (claim.Open). consuls:// takes
// cacert (CA certificates to trust instead of the system roots), cert and
// key (client certificate), servername and skip_verify (testing only);
// consul:// refuses them. Anything the URL leaves out comes from Consul's
// CONSUL_* environment variables, as with the consul CLI (with no TLS
// parameter in a consuls:// URL, the TLS ones too); an empty host means
// CONSUL_HTTP_ADDR or localhost:8500.
//
// Opening does no I/O, but claim.Open then checks the agent (the driver's
// Ping: one KV read of PREFIX/ping, answered by the leader) within ctx and
// the operation timeout (op_timeout, default claim.DefaultOpTimeout, 5 s),
// unless lazy=true; New does the same with the caller's client, unless
// Options.Client.Lazy. Every request carries its call's context, bounded
// by the operation timeout (consul/api has no timeout of its own, and
// hangs for ever on an agent that accepts connections and never answers);
// a URL-opened Client also bounds each connection's dial and TLS
// handshake by DialTimeout. Blocking queries are bounded by their wait
// plus Consul's jitter and 5 s.
//
// # Semantics
//
// Key K (mapped by driver.KeyEncoder: readable if short and plain, else
// hashed) owns PREFIX/c/K/lock (the lease record), PREFIX/c/K/notify,
// PREFIX/v/K (the stored value) and, used fairly, PREFIX/q/K (its queue). Consul sessions are not used (their TTL
// is 10 s to 24 h, enforced loosely, and they can be invalidated early):
// the driver enforces leases itself, so leases from 1 ms work.
//
//   - Claim: one transaction creates the lock key only if it is absent
//     (cas with index 0). If it exists and its lease has ended (its
//     recorded expiry plus Options.ClockSkew has passed, or its TTL since
//     this process first saw that write of the record: see Clocks), a
//     second transaction deletes it if it
//     is unchanged (delete-cas on the ModifyIndex read) and creates it
//     afresh: of two takers only one can win. TryClaimRead adds a
//     get-or-empty of the value key to the claiming transaction.
//   - Fence: the token is the lock key's CreateIndex, the raft index of the
//     claiming write (global and strictly increasing); Extend, a cas
//     rewrite of the record, keeps it. It is durable on a server with
//     persistent storage (not `consul agent -dev`, which keeps everything
//     in memory).
//   - Extend, Release and Commit verify ownership (CreateIndex == token and
//     the recorded holder) and write with a condition on the lock key's
//     ModifyIndex (cas; check-index + delete; check-index + set of the
//     value key; one transaction each; CommitRelease is the last two in
//     one). Lease.Handle carries the ModifyIndex and the expiry of the
//     holder's last write: the common case is one round trip (an index
//     out of date, after a retried Extend, costs one read), and Extend,
//     Commit and CommitRelease of a lease whose record has expired answer
//     ErrLost, whatever its Deadline says.
//   - Revoke: one transaction, with no condition, deletes the lock key
//     (and the fair queue, PREFIX/q/K), sets or deletes the value key and
//     writes the notify key (which wakes the key's subscribers): the lease and the value change atomically,
//     and the revoked holder's calls find no lock key of its token
//     (ErrLost). The next claim's token, a later raft index, is greater.
//   - Batches (driver.Batcher, Features.MaxBatch 64, Consul's documented
//     operations per transaction): GetMany is one read-only transaction;
//     TryClaimMany, CommitReleaseMany and SubscribeMany send transactions
//     of at most 64 operations (and 512 KiB) concurrently, two or four for
//     a full batch. A transaction is all or nothing, and Consul's answer
//     when it rolls back names every condition that failed: the next
//     round sends the others again, with a read-only transaction of the
//     failed keys' lock records. A batch costs one round of requests when
//     every key is free (every lease current), two when some are held
//     (or lost), three with expired leases to take over (or Handles out
//     of date), whatever its size; keys still unsettled after 8 rounds go
//     through the single-key call.
//
// Clocks: Consul KV has no server clock, so expiry is judged on client
// clocks. A holder records expiry = (its clock before sending) + TTL and
// stops at its Deadline, which is no later; another client takes over
// once its own clock passes expiry + ClockSkew, which holds exclusion as
// long as clients' clocks differ by less than ClockSkew. A client that
// saw the write of the record (its ModifyIndex) takes over sooner, once
// the record's TTL (plus 1 ms and 500 ppm) has passed since its first
// sighting of that write (driver.Sightings): the holder's Deadline counts
// from before it sent the write, which Consul applied before the client
// saw it, so this needs clocks that run at the same rate, not clocks that
// agree. A waiter that watched the claim being made thus takes over
// within a round trip of the holder's Deadline; so does a subscribed one
// after an Extend, which ends its blocking query (waking nobody): the
// query's read is a sighting too. One that first saw the lease late
// waits up to ClockSkew longer than the lease, and so does every waiter
// for a record without "v":1 (written by, or granted to, a process of an
// earlier version, whose Deadline may run past a sighting plus the TTL):
// a rolling upgrade is safe. Stored values
// expire by the reader's clock and are deleted lazily when read; Sweep
// removes leftovers.
//
// Wake-ups: one blocking query (KV list of PREFIX/c/K/) per subscribed key,
// from the state Subscribe read (one read-only transaction of the lock and
// notify keys, which, unlike a list, Consul refuses to a token that may
// not read them). Release and CommitRelease write the notify key in their
// transaction, as Notify does; the query wakes the key's subscribers when
// the notify key moved, or when the lease it saw last is gone or replaced
// (taken over after expiry), but not when a free key is claimed (waiters
// wait for the end of a claim, not its start) nor on Extend. A failed
// blocking query (the agent down, the connection cut, a token revoked)
// wakes the key's subscribers at once, so that they re-check (and meet the
// error, or take over) rather than wait for a wake-up that cannot come;
// the driver then backs off, re-reads and wakes them again. A key's
// queries wait a second at first, and after each wake-up, doubling while
// nothing happens up to Options.WaitTime: Consul does not notice a client
// that gives a query up (Unsubscribe, Close), whose connection stays open
// on the agent until the query's wait ends. At most Options.MaxWatches
// blocking queries run at once; keys watched beyond that are read by one
// poll loop, 32 keys per read-only transaction, every 2 to 50 ms. Consul
// has no topic bus (Features.Broadcast is false).
//
// Values in wake-ups (driver.ValueNotifier): CommitRelease and
// CommitReleaseMany of a value of at most 8 KiB also copy it, as the
// value key stores it (its expiry included), into the notify key they
// write, in the same transaction; the blocking query or poll read that
// sees the notify key moved hands the copy to SubscribeValue's wake, so
// a woken waiter answers without reading the value key. Release, Notify
// and Revoke write the notify key without one (their wake-ups carry
// nil), and so does a CommitRelease of a larger value; a read after a
// failed one, or that finds the copy past its TTL, carries nil too. The
// copy doubles the bytes such a commit writes and stays in the notify
// key, read by every answer of the key's blocking queries, until the
// key's next release or notification (or Sweep); at 8 KiB a full
// CommitReleaseMany still takes 4 transactions.
//
// Fair acquisition (driver.Queuer, claim.Client's AcquireFair): key K's
// waiters queue in PREFIX/q/K, one JSON array of entries (holder, expiry
// by the waiter's clock, TTL), outside K's directory so that enqueuing
// does not answer the directory's blocking queries. Enqueue, Dequeue and
// HandOff read the lock and queue keys (one read-only transaction) and
// write one transaction conditioned on both as read (their ModifyIndex,
// or their absence), again from the read if another client wrote either
// in between; entries past their expiry plus ClockSkew are skipped. A
// grant replaces the lock key (delete-cas, create: a new CreateIndex, so
// a token above every earlier one) with the waiter's record, so the old
// lease ends and the new one starts in one transaction. HandOff leaves
// the queue key as it read it (checked, not written): the new record
// names the queue key's index and how many of its entries are served
// (Extend keeps both), and the next write of the queue drops them. The
// process that holds a fair lease keeps a blocking query on the queue key
// (one of its MaxWatches) until the lease ends, so its HandOff writes at
// once, conditioned on what that query last saw and on the ModifyIndex in
// the lease's Handle, without a read; only a waiter that enqueued since
// costs a read and a second write. The grant reaches the waiter's
// process in the answer of its grant subscription's blocking query on
// K's directory (a new lock key: its record names the holder), with no
// request of the waiter's own. A failed query, the first read after one,
// and a lock key gone without a hand-over (released with nobody live
// queued, revoked, swept) deliver a zero Lease: the waiters enqueue
// again. Revoke deletes the queue with the lease (its waiters, told by
// the zero Lease, enqueue again). A key is used fairly or not: Release
// and TryClaim ignore the queue.
//
// As accepts a **api.Client (github.com/hashicorp/consul/api): the Consul
// client the driver sends its requests with (for a URL-opened Client, the
// one that is not used for blocking queries).
//
// # Errors
//
// A *claim.HeldError's Remaining includes ClockSkew, unless the sighting
// rule above ends the lease sooner. A 413 from Consul
// (Options.MaxValueLen raised past the server's limits) is ErrTooLarge.
// Configuration errors wrap claim.ErrConfig, in every call (Open and Ping
// included), consul/api's error underneath (errors.As with
// api.StatusError): HTTP 403 (an ACL token the agent does not know, "ACL
// not found", or without a permission, "Permission denied", also when a
// transaction reports it for one of its operations), HTTP 401 (a proxy's
// basic auth), a read-only transaction whose answer lacks keys (Consul
// leaves out what the token may not read), and a server that is not a
// Consul agent: HTTP 404 from the KV or transaction API, HTTP 400 (the
// driver's requests are well formed), a KV answer without X-Consul-Index,
// a reply that is not Consul's JSON, or not HTTP, bytes sent before any
// request, HTTPS spoken to a plain-HTTP agent, a TLS handshake refused for
// its certificates. Writes go through transactions (consul/api's KV Put and
// Delete take any 200 for success). Other errors, HTTP 429 (too many
// connections from one address) and 5xx included, are reported by the
// Client as claim.ErrUnavailable. The ACL token never appears in errors or
// String output.
package consul
