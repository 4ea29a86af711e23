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
// PORT defaults to 6379 and DB to 0. Parameters: prefix, maxvalue (bytes)
// and health_check set the Options fields Prefix, MaxValueLen and
// HealthCheckInterval; go-redis settings client_name, pool_size,
// min_idle_conns, max_retries (default 0: one attempt per call), protocol
// (2 or 3, default 3), dial_timeout, read_timeout, write_timeout; cluster
// (true: a Redis Cluster client seeded with HOST and addrs) and addrs
// (more HOST:PORT seeds, comma-separated); for rediss only, the TLS
// parameters every driver shares (cacert, cert, key, servername,
// skip_verify: see Params.TLS in package claim/driver). An unknown,
// repeated or malformed parameter is an error. Opening does not dial. For
// Sentinel, custom dialers or anything else, build the client yourself and
// call New.
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
// Wake-ups: Release and Notify publish on the key's channel (SPUBLISH on a
// *ClusterClient, so a release reaches only the key's shard; PUBLISH
// otherwise). Each Client keeps one dedicated pub/sub connection (one per
// master on a cluster) for all its keys and topics. Subscribe returns when
// a PING written after the SUBSCRIBE is answered (replies come in order).
// When the pub/sub connection drops, a health-check PING goes unanswered
// or a cluster slot moves away, the driver reconnects, subscribes again
// and, once that is confirmed, wakes every key's subscribers and resets
// every topic's.
//
// Client.As sets a *goredis.UniversalClient, and a **goredis.Client or
// **goredis.ClusterClient when the client is one.
//
// # Errors
//
// A held key is a *HeldError with the lock's PTTL; I/O failures are
// go-redis's errors, wrapped. Passwords never appear in errors.
package redis
