// Package zookeeper is the claim driver for Apache ZooKeeper: a claim is a
// pair of ephemeral znodes created in one multi-op, its TTL is judged on
// the ZooKeeper leader's clock, and waiters are woken by watches.
//
// # URLs
//
//	zookeeper://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]...][/CHROOT][?PARAMS]
//
// The default port is 2181. Every znode lives under /CHROOT/PREFIX (PREFIX
// defaults to "stampede"; parameter prefix). USER:PASSWORD adds digest
// authentication to the session, and then nodes are created readable and
// writable only by that user (acl=creator, the default with credentials;
// acl=open gives world access). maxvalue and messagelife set
// Options.MaxValueLen (bytes) and MessageLife; session is the session
// timeout (default 30s, clamped by the server to [2, 20] × its tickTime);
// dial_timeout bounds each connection attempt, TLS handshake included
// (default go-zk's 1s); tls=true, for a TLS port (secureClientPort),
// enables the TLS parameters every driver shares (cacert, cert, key,
// servername: default each HOST, skip_verify; see driver.Params.TLS).
//
// As accepts a **zk.Conn: the connection given to New or opened from the
// URL.
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
// request fails on the missing owner node and changes nothing, even if the
// key was re-claimed since. CommitRelease is multi(delete o/HOLDER, write
// the value, delete l/ENC).
//
// The fencing token is the czxid of the claim's nodes: ZooKeeper's
// transaction id, global, strictly increasing and persisted in its
// transaction log (it moves to a higher epoch on leader election), so
// tokens keep increasing across restarts (DurableFence).
//
// A lease ends at its TTL even while the holder's session is alive: the
// TTL is judged from the owner node's mtime (stamped by the leader when
// the claim or its last Extend was applied) against the leader's clock,
// which a claimer reads by writing a small clock node when its own clock
// says the lease has run out. It then takes the claim over with one
// multi-op that deletes the old owner node at the version it read (an
// Extend that landed in between makes it fail) and the lock node, and
// creates its own. Extend, Commit, CommitRelease and Release judge a lease
// that ran out with nobody taking over the same way, when the copy given
// may have run out: past its Deadline, or past the owner's mtime at its
// grant (kept in Lease.Handle) plus its TTL. So expiry is exact to the
// millisecond (MinTTL and TTLGranularity 1 ms) and needs no synchronized
// clocks; HeldError.Remaining is estimated with the local clock.
//
// A lease also ends when its holder's session expires (ZooKeeper deletes
// the nodes), which may be before its TTL, and, for a holder cut off for
// longer than the session timeout, before its local Deadline; its Extend,
// Commit and Release then fail with ErrLost. Close drops a connection
// opened from a URL without ending the session, so, as for a crashed
// process, its leases stay held until their TTL or the session timeout.
//
// Values are persistent znodes v/ENC(K) holding a 9-byte header (format
// and TTL) and the value; a reader judges expiry from the node's mtime
// against its own clock (clocks should agree to well within the TTLs
// used), and the first Get that finds a value expired deletes it. TTL
// nodes cannot be created inside a multi-op (the fenced Commit needs one),
// so a value never read again after expiring stays, in the server's
// memory, until overwritten or deleted.
//
// Notification is pushed: one existence watch per subscribed key on its
// lock node, which fires on release, takeover, session expiry of the
// holder, claims, and Notify (a setData of the lock node guarded by its
// owner node, or a create+delete in one multi-op if the key is free). A
// watch is one-shot: the driver re-arms it and then wakes the key's
// subscribers, so no event after the wake-up is missed; after a session
// expiry every subscriber is woken. Messages of the topic bus
// (Broadcaster) are ephemeral sequential znodes under t/ENC(TOPIC), with
// one child watch per subscribed topic; a message over MaxValueLen is a
// *claim.TooLargeError before any I/O.
//
// go-zk takes no context: every call checks ctx first and then runs in a
// goroutine of its own, abandoned (left to finish, and waited for by
// Close) when ctx is done.
package zookeeper
