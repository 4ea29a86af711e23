// Package redis is the claim driver for Redis (standalone, Sentinel or
// Cluster) on go-redis v9: leases by a Lua SET-if-absent with PX, fencing
// tokens from a per-key INCR counter, wake-ups by pub/sub.
//
// # URLs
//
//	redis://[USER[:PASSWORD]@]HOST[:PORT][/DB][?PARAMS]
//	rediss://...   the same over TLS (server name checked against HOST)
//
// PORT defaults to 6379 and DB to 0. Parameters: prefix (key prefix,
// default "stampede"), maxvalue (bytes, default 512 MiB), health_check
// (pub/sub ping interval, default 3s); go-redis settings client_name,
// pool_size, min_idle_conns, max_retries (default 0: one attempt per
// call), protocol (2 or 3), dial_timeout, read_timeout, write_timeout;
// cluster (true: a Redis Cluster client seeded with HOST and addrs) and
// addrs (more HOST:PORT seeds, comma-separated); for rediss only: cacert
// (PEM file of the CAs to trust instead of the system roots), cert and key
// (PEM files of a client certificate and its key), servername (default
// HOST) and skip_verify (testing only). An unknown, repeated or malformed
// parameter is an error. Opening does not dial. For Sentinel, custom
// dialers or anything else, build the client yourself and call New.
//
// # Semantics
//
// Every lease operation is one Lua script on keys sharing one hash slot,
// so it is atomic and works on Redis Cluster: for key K the driver uses
// PREFIX:{E}:lock, PREFIX:{E}:fence and PREFIX:{E}:val, and the channel
// PREFIX:{E}:ch, where E is K itself ("=" + K) when it is at most 255
// bytes without braces, else "#" + base64url(SHA-256(K)).
//
// TryClaim runs one script: if the lock key is absent it INCRs the key's
// fence counter and sets the lock to "TOKEN:HOLDER" with PX TTL; otherwise
// it returns the lock's PTTL (HeldError.Remaining). The fence counter has
// no expiry and survives release and expiry, so tokens strictly increase
// for as long as the server keeps its data (exact up to 2^53: scripts see
// numbers as doubles). Without persistence a restart of Redis (or a
// failover to a replica that had not yet received the last INCR) loses
// counters and tokens can repeat: Features.DurableFence is false. With
// appendonly yes and appendfsync always, counters and locks survive a
// restart. The fence counters are small keys without TTL, one per key
// ever claimed.
//
// Extend (PEXPIRE), Release (DEL then PUBLISH) and Commit (SET of the
// value key, PX when ttl > 0) each compare the lock's "TOKEN:HOLDER"
// first, in the same script: a stale holder, or a lease the server
// expired, changes nothing and gets ErrLost. Commit is therefore atomic
// with the lease check. TryClaimRead is the claim script with a GET of the
// value key; CommitRelease is Commit and Release in one script. Leases and
// values have millisecond granularity and a 1 ms minimum; expiry is judged
// by the server's clock, and the local Deadline (taken before the request
// was sent) is never later than the server's expiry if clocks run at the
// same rate.
//
// Notify: Release and Notify publish on the key's channel after the change
// (SPUBLISH on a *ClusterClient, so a release reaches only the key's
// shard; PUBLISH otherwise); topics are PREFIX:{E(TOPIC)}:topic. Each
// Client keeps one dedicated pub/sub connection (one per master on a
// cluster) for all its keys and topics. Subscribe returns once the server
// has confirmed the SUBSCRIBE. When the pub/sub connection drops, or a
// health-check PING goes unanswered, the driver reconnects, subscribes
// again and then wakes every key's subscribers to re-check, so a release
// published during the outage is never lost; topic subscribers get a reset.
//
// Clients: New takes the user's own *Client (standalone or Sentinel
// failover) or *ClusterClient; *Ring is refused (its pub/sub cannot follow
// keys across shards). Every script is safe under go-redis's retries, but
// one attempt per call (MaxRetries: -1) gives the clearest errors. Set
// ContextTimeoutEnabled too (the URL opener does), or calls outlive their
// context's deadline until ReadTimeout (3 s by default). Client.As sets a
// *goredis.UniversalClient, and a **goredis.Client or
// **goredis.ClusterClient when the client is one:
//
//	var rdb goredis.UniversalClient
//	if c.As(&rdb) { ... }
//
// # Errors
//
// ErrHeld (a *HeldError with the lock's PTTL), ErrLost and ErrNotFound, or
// go-redis's error for I/O failures, wrapped by the Client as
// "claim: OP KEY: ...". Passwords never appear in errors.
package redis
