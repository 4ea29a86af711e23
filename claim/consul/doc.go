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
// Parameters: prefix (Options.Prefix: the KV prefix every key lives
// under, default "stampede"; it may contain slashes; the URL's path must
// be empty), token (ACL token; never printed), dc (datacenter),
// clock_skew (Options.ClockSkew; clock_skew=0: no margin), maxvalue
// (Options.MaxValueLen), wait (Options.WaitTime), maxwatches
// (Options.MaxWatches), maxconns (connections for everything but
// blocking queries, default DefaultMaxConns). consuls:// takes the TLS
// parameters cacert (CA certificates to trust instead of the system
// roots), cert and key (client certificate), servername and skip_verify
// (testing only); consul:// refuses them. Anything the URL leaves out
// comes from Consul's usual CONSUL_* environment variables, as with the
// consul CLI (with no TLS parameter in a consuls:// URL, the TLS ones
// too); an empty host means CONSUL_HTTP_ADDR or localhost:8500. Unknown
// parameters are errors.
//
// # Semantics
//
// Key K (mapped by driver.KeyEncoder: readable if short and plain, else
// hashed) owns PREFIX/c/K/lock (the lease record), PREFIX/c/K/notify and
// PREFIX/v/K (the stored value). Consul sessions are not used: their TTL
// is 10 s to 24 h, enforced loosely (up to 2 × TTL), and a session can be
// invalidated early (agent restart, failed node check), which would delete
// a lock its holder still believes it holds. Instead the lease is enforced
// by the driver, so leases of any length from 1 ms work:
//
//   - TryClaim is one transaction that creates the lock key only if it is
//     absent (cas with index 0). If it exists and its recorded expiry plus
//     Options.ClockSkew has passed, a second transaction deletes it if it
//     is unchanged (delete-cas on the ModifyIndex read) and creates it
//     afresh: of two takers only one can win.
//   - The fencing token is the lock key's CreateIndex: the raft index of the
//     claiming write. Raft indexes are global and strictly increasing, so
//     every new lease has a larger token than any earlier one, and Extend
//     (a cas rewrite of the record) keeps it. The index is durable on a
//     server with persistent storage (not `consul agent -dev`, which keeps
//     everything in memory).
//   - Extend, Release and Commit verify ownership (CreateIndex == token and
//     the recorded holder) and write with a condition on the lock key's
//     ModifyIndex (cas, delete-cas, check-index + set in one transaction),
//     so a stale holder changes nothing (ErrLost). Lease.Handle carries the
//     ModifyIndex of the holder's last write, which makes the common case
//     one round trip; if it is out of date (a retried or concurrent Extend
//     of the same lease), one read re-establishes it. The Handle also
//     carries the expiry that write recorded: Extend, Commit and
//     CommitRelease of a lease whose record has expired answer ErrLost,
//     whatever its Deadline says.
//   - Commit is atomic: check-index on the lock key and set of the value
//     key in one Consul transaction. CommitRelease adds the delete of the
//     lock key to that transaction; TryClaimRead adds a get-or-empty of
//     the value key to the claiming transaction.
//
// Clocks: Consul KV has no server clock, so expiry is judged on client
// clocks. A holder records expiry = (its clock before sending) + TTL and
// stops at its Deadline, which is no later; another client takes over
// only once its own clock passes expiry + ClockSkew (default 50 ms).
// Exclusion therefore holds as long as clients' clocks differ by less
// than ClockSkew (NTP keeps hosts within a few ms); a waiter may wait up
// to ClockSkew longer than the lease. Stored values expire by the
// reader's clock.
//
// Notify is pushed: one blocking query (KV list of PREFIX/c/K/) per key per
// Client, holding one HTTP connection while any subscriber of that key is
// open. Release and CommitRelease write the notify key in their
// transaction, as Notify does; the query wakes the key's subscribers when
// the notify key moved, or when the lease it saw last is gone or replaced
// (taken over after expiry), but not when a free key is claimed (waiters
// wait for the end of a claim, not its start) nor on Extend. After a
// failed blocking query it backs off, re-reads and wakes the key's
// subscribers. A Client holds at most Options.MaxWatches (default 10)
// blocking queries at once, since Consul limits each client address to
// http_max_conns_per_client connections (200 by default, shared by every
// process on a host); keys watched beyond that are polled together by one
// loop, 32 keys per read-only transaction, every 2 to 50 ms. Stored values
// are deleted lazily when read after their expiry; Sweep removes leftovers
// (expired values, crashed holders' lock records). Consul has no topic
// bus: the Client carries topics (Publish, SubscribeTopic) on the claims,
// the store and the wake-ups.
//
// As accepts a **api.Client (github.com/hashicorp/consul/api): the Consul
// client the driver sends its requests with.
//
// # Errors
//
// ErrHeld (a *claim.HeldError with the remaining lease time, ClockSkew
// included), ErrLost, ErrNotFound and ErrTooLarge (values over
// Options.MaxValueLen, refused by the Client before any I/O; also a 413
// from Consul), wrapped by the Client as "claim: OP KEY: ...", with
// Consul's own error underneath. The ACL token never appears in errors or
// String output.
package consul
