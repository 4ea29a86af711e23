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
// path is an error), dial_timeout (dial, authentication and the first
// round trip; default DefaultDialTimeout), minttl (the server's minimum
// lease TTL; default: asked of the server once at open), maxvalue (bytes,
// default DefaultMaxValueLen), and for etcds:// only cacert, cert, key,
// servername and skip_verify. An unknown parameter is an error; the
// password never appears in errors.
//
// New takes the caller's own *clientv3.Client; Client.As accepts a
// **clientv3.Client.
//
// # Semantics
//
// TryClaim grants an etcd lease of its own for the claim, then runs one
// transaction: if the lock key does not exist (CreateRevision == 0), put it
// with the holder's ID, attached to that lease; otherwise read it
// (TryClaimRead also gets the value key in it). The fencing token is the
// lock key's CreateRevision: etcd's revision counter is cluster-wide,
// strictly increasing and persisted in the raft log (DurableFence).
// Release, Commit (AtomicCommit), CommitRelease and Extend's ownership
// check are transactions comparing the lock key's CreateRevision with the
// token and its value with the holder. A crashed holder's lease expires
// and etcd deletes the lock key with it; leases nothing needs any more are
// revoked in the background.
//
// Lease TTLs are whole seconds, at least the server's minimum (1.5 × its
// election timeout rounded up: 2 s by default). etcd revokes expired
// leases every 500 ms, so a lock key may outlive its lease by about half a
// second. Extend with the lease's own TTL is a keep-alive plus an
// ownership check; otherwise, or if the lease is gone, it moves the lock
// key to a new lease in one fenced transaction. HeldError.Remaining comes
// from TimeToLive, rounded up to the second.
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
// subscribers are woken to re-check, so no release is lost. Topics are
// puts of a topic key and watches of it; a broken one delivers a reset.
//
// # Errors
//
// etcd's request-too-large is ErrTooLarge, and so is a Publish message
// over the value limit (refused before any I/O); other errors are etcd's
// and gRPC's own.
package etcd
