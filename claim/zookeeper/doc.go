// Package zookeeper is the claim driver for Apache ZooKeeper: a claim is a
// pair of ephemeral znodes created in one multi-op, its TTL is judged on
// ZooKeeper's own clock, and waiters are woken by watches.
//
// # URLs
//
//	zookeeper://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/CHROOT][?PARAMS]
//
// The default port is 2181. Every znode lives under /CHROOT/PREFIX (PREFIX
// defaults to "stampede"; parameter prefix). USER:PASSWORD adds digest
// authentication to the session, and then nodes are created readable and
// writable only by that user (acl=creator, the default with credentials;
// acl=open gives world access). Other parameters: session (session
// timeout, default 30s, clamped by the server to [2, 20] × its tickTime),
// maxvalue (bytes, default DefaultMaxValueLen), messagelife (how long a
// Publish'd message stays readable, default 30s), dial_timeout (bounds
// each connection attempt, TLS handshake included; default go-zk's 1s),
// and for a TLS port (secureClientPort): tls=true, with the TLS
// parameters every driver shares: cacert (PEM file of the CA to trust
// instead of the system roots), cert and key (PEM files of a client
// certificate and its key), servername (default: each HOST) and
// skip_verify (testing only). An unknown, repeated or malformed parameter
// is an error. The password never appears in errors.
//
// New takes a *zk.Conn the caller configured (servers, session timeout,
// dialer, auth) and returns a *claim.Client; its As method accepts a
// **zk.Conn and sets it to that connection (the one opened from the URL,
// for claim.Open).
//
// # Semantics
//
// Under the root, a claim on key K is two ephemeral znodes created in one
// multi-op: the lock node l/ENC(K), holding the holder's ID, and the owner
// node o/HOLDER, holding the lease TTL. The lock node gives mutual
// exclusion (create-if-absent); the owner node's path is unique to the
// claim, and every operation that ends a claim deletes both in one
// multi-op (Release, takeover, and ZooKeeper itself when the session ends),
// so "o/HOLDER exists" means "this claim is current". Release is
// multi(delete o/HOLDER, delete l/ENC), Extend is setData(o/HOLDER), and
// Commit is multi(check o/HOLDER, write the value): a stale holder's
// request fails on the missing owner node and changes nothing (ErrLost),
// even if the key was re-claimed since. (The lock node's version cannot
// serve: a re-created node starts again at version 0.) CommitRelease is
// multi(delete o/HOLDER, write the value, delete l/ENC). A multi-op cannot
// read, so TryClaimRead adds create+delete of the value node to the claim's
// multi-op: one round trip that also proves the key has no value; when it
// has one, the key is claimed without that probe and the value read after.
//
// The fencing token is the czxid of the claim's nodes: ZooKeeper's
// transaction id, global, strictly increasing and persisted in its
// transaction log (it moves to a higher epoch on leader election), so
// tokens keep increasing across release, expiry, takeover and restarts
// (DurableFence).
//
// A lease ends at its TTL even while the holder's session is alive: the
// TTL is judged from the owner node's mtime (stamped by the ZooKeeper
// leader when the claim or its last Extend was applied) against the
// leader's clock, which a claimer reads by writing a small clock node
// when its own clock says the lease has run out. A claimer then takes an
// expired claim over with one multi-op that deletes the old owner node at
// the version it read (an Extend that landed in between makes it fail)
// and the lock node, and creates its own. A lease that ran out with
// nobody taking over is judged the same way by its holder's Extend,
// Commit, CommitRelease and Release (ErrLost), whenever the lease copy
// given says it may have: past its Deadline, or past the owner's mtime
// at its grant (kept in Lease.Handle) plus its TTL. So expiry is exact to
// the millisecond (MinTTL and TTLGranularity 1 ms) and needs no
// synchronized clocks; HeldError.Remaining is estimated with the local
// clock. A crashed
// holder's nodes also vanish when its session expires, which may free the
// key before the TTL. The flip side, as with every ZooKeeper lock: a
// holder cut off from ZooKeeper for longer than its session timeout loses
// its leases at the server (session expiry deletes the nodes) while its
// local Deadline may still be ahead if the TTL is longer than the session
// timeout; its Extend, Commit and Release then fail with ErrLost and its
// Commit never lands. Keep lease TTLs within the session timeout, or fence
// outside writes by the token. Close drops the connection without ending
// the session (when the driver opened it from a URL), so, as for a
// crashed process, the leases it held stay held until their TTL or the
// session timeout; New's caller keeps their own connection open.
//
// Values are persistent znodes v/ENC(K) holding a 9-byte header (format
// and TTL) and the value; a reader judges expiry from the node's mtime
// against its own clock (clocks should agree to well within the TTLs
// used), and the first Get that finds a value expired deletes it.
// TTL nodes cannot be created inside a multi-op (go-zk's Multi has no TTL
// create, and the fenced Commit needs one), so values never read again
// after expiring stay until overwritten or deleted: ZooKeeper keeps every
// node in memory; keep its L2 to small, bounded key sets.
//
// Notification is pushed: the driver keeps one existence watch per
// subscribed key on its lock node, which fires on release, takeover,
// session expiry of the holder, claims, and Notify (a setData of the lock
// node guarded by its owner node, or a create+delete in one multi-op if
// the key is free). A watch is one-shot: the driver re-arms it first and
// then wakes the key's subscribers, so no event after the wake-up can be
// missed. If the session expires the watches are re-armed on the new
// session and every subscriber is woken to re-check. Messages of the
// topic bus (Broadcaster) are ephemeral sequential znodes under
// t/ENC(TOPIC), with one child watch per subscribed topic.
//
// go-zk takes no context: every call checks ctx first and then runs in a
// goroutine of its own, abandoned (left to finish, and waited for by
// Close) when ctx is done. Every operation is safe to abandon: an
// abandoned claim is a lease nobody uses, which expires by its TTL.
//
// # Errors
//
// ErrHeld (as *claim.HeldError), ErrLost and ErrNotFound from package
// claim, a *claim.TooLargeError for a Publish'd message over MaxValueLen,
// and the zk package's errors otherwise; the Client wraps each once as
// "claim: OP KEY: ...".
package zookeeper
