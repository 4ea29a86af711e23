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
// client for blocking queries and another for the rest). consuls:// takes
// cacert (CA certificates to trust instead of the system roots), cert and
// key (client certificate), servername and skip_verify (testing only);
// consul:// refuses them. Anything the URL leaves out comes from Consul's
// CONSUL_* environment variables, as with the consul CLI (with no TLS
// parameter in a consuls:// URL, the TLS ones too); an empty host means
// CONSUL_HTTP_ADDR or localhost:8500.
//
// # Semantics
//
// Key K (mapped by driver.KeyEncoder: readable if short and plain, else
// hashed) owns PREFIX/c/K/lock (the lease record), PREFIX/c/K/notify and
// PREFIX/v/K (the stored value). Consul sessions are not used (their TTL
// is 10 s to 24 h, enforced loosely, and they can be invalidated early):
// the driver enforces leases itself, so leases from 1 ms work.
//
//   - Claim: one transaction creates the lock key only if it is absent
//     (cas with index 0). If it exists and its recorded expiry plus
//     Options.ClockSkew has passed, a second transaction deletes it if it
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
//
// Clocks: Consul KV has no server clock, so expiry is judged on client
// clocks. A holder records expiry = (its clock before sending) + TTL and
// stops at its Deadline, which is no later; another client takes over
// only once its own clock passes expiry + ClockSkew. Exclusion therefore
// holds as long as clients' clocks differ by less than ClockSkew; a
// waiter may wait up to ClockSkew longer than the lease. Stored values
// expire by the reader's clock and are deleted lazily when read; Sweep
// removes leftovers.
//
// Wake-ups: one blocking query (KV list of PREFIX/c/K/) per subscribed key.
// Release and CommitRelease write the notify key in their transaction, as
// Notify does; the query wakes the key's subscribers when the notify key
// moved, or when the lease it saw last is gone or replaced (taken over
// after expiry), but not when a free key is claimed (waiters wait for the
// end of a claim, not its start) nor on Extend. After a failed blocking
// query it backs off, re-reads and wakes the key's subscribers. At most
// Options.MaxWatches blocking queries run at once; keys watched beyond
// that are read by one poll loop, 32 keys per read-only transaction, every
// 2 to 50 ms. Consul has no topic bus (Features.Broadcast is false).
//
// As accepts a **api.Client (github.com/hashicorp/consul/api): the Consul
// client the driver sends its requests with (for a URL-opened Client, the
// one that is not used for blocking queries).
//
// # Errors
//
// A *claim.HeldError's Remaining includes ClockSkew. A 413 from Consul
// (Options.MaxValueLen raised past the server's limits) is ErrTooLarge.
// The ACL token never appears in errors or String output.
package consul
