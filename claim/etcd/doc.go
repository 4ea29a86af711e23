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
// "h1:2379,h2": give each host its port). Credentials for etcd's
// authentication go in the URL's user info. etcds:// dials with TLS (the
// system roots unless cacert is given; each endpoint verified by its own
// host name unless servername is given). Parameters: prefix (the key
// prefix, default DefaultPrefix; a URL path is an error), dial_timeout
// (dial and authentication, default DefaultDialTimeout), minttl (the
// server's minimum lease TTL; default: asked of the server once at open),
// maxvalue (bytes, default DefaultMaxValueLen), and for etcds:// only
// cacert, cert, key (PEM file paths), servername and skip_verify. An
// unknown parameter is an error. The password never appears in errors.
//
// New takes a *clientv3.Client the caller configured and does no I/O
// (Options.MinTTL defaults to DefaultMinTTL there). Client.As accepts a
// **clientv3.Client, set to the client the driver uses.
//
// # Semantics
//
// TryClaim grants an etcd lease of its own for the claim, then runs one
// transaction: if the lock key does not exist (CreateRevision == 0), put it
// with the holder's ID, attached to that lease; otherwise read it. The
// fencing token is the lock key's CreateRevision: etcd's revision counter
// is cluster-wide, strictly increasing and persisted in the raft log, so
// tokens keep increasing across release, expiry, takeover and restarts of
// the cluster (DurableFence). Release, Commit and the ownership check of
// Extend are transactions comparing the lock key's CreateRevision with the
// token and its value with the holder, so a stale holder can never
// release, extend or overwrite a newer holder's claim; Commit writes the
// value in that same transaction (AtomicCommit); CommitRelease puts the
// value and deletes the lock key in one such transaction, and TryClaimRead
// adds a get of the value key to the claim transaction. A crashed holder's
// lease expires by itself and etcd deletes the lock key with it. Leases a
// claim no longer needs (released, lost races, moved by Extend) are revoked
// in the background.
//
// Lease TTLs are whole seconds (TTLGranularity 1s) and never shorter than
// the server's minimum, 1.5 × its election timeout rounded up (2 s with
// etcd's default 1 s election timeout): shorter requests are granted that
// minimum, and Lease.TTL says what was granted. etcd expires leases on the
// leader's clock and revokes them in a loop that runs every 500 ms, so a
// lock key may outlive its lease by up to about half a second. Extend with
// the lease's own TTL is a lease keep-alive plus an ownership check; with
// another TTL, or if the lease is gone, it moves the lock key to a new
// lease in one transaction fenced by token and holder. HeldError.Remaining
// is read from the holder's lease (TimeToLive), which etcd reports in whole
// seconds: Remaining is the upper end, rounded up.
//
// Values carry their own expiry time (the writer's wall clock plus the TTL;
// readers compare it with theirs, so clock skew between processes shifts
// value expiry by the skew), and are also attached to a lease shared by all
// values of the same TTL class written by this driver, so that etcd deletes
// them some time after they expire (at most about twice their TTL) without
// one lease per write.
//
// Notification is pushed: the driver keeps one watch per subscribed key
// (all multiplexed on the client's one gRPC watch stream), started at the
// current revision so it is served from etcd's synced watcher group. A
// release, a lease expiry and Notify all wake it. If a watch breaks (its
// revision was compacted while the client was disconnected, or the server
// cancelled it), the driver re-watches from the current revision and wakes
// the key's subscribers to re-check state, so no release is lost. Topics
// (Publish, SubscribeTopic) are puts of a topic key and a watch of it; a
// broken topic watch is delivered as a reset.
//
// # Errors
//
// The Client wraps every error as "claim: OP KEY: ..." around ErrHeld (as
// *claim.HeldError), ErrLost, ErrNotFound or ErrTooLarge (etcd's
// request-too-large, and Publish messages over the value limit), or around
// etcd's and gRPC's own errors.
package etcd
