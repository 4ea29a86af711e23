// Package zookeeper is the claim driver for Apache ZooKeeper: a claim is a
// pair of persistent znodes created in one multi-op, its TTL is judged on
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
// (default go-zk's 1s; see Opening for the session handshake); tls=true, for a TLS port (secureClientPort),
// enables the TLS parameters every driver shares (cacert, cert, key,
// servername: default each HOST, skip_verify; see driver.Params.TLS).
//
// As accepts a **zk.Conn: the connection given to New or opened from the
// URL. The Client's own parameters, op_timeout and lazy, work as on every
// backend (see claim.Open).
//
// # Opening
//
// Open and New check the server before they return (the driver's Ping,
// within the operation timeout, op_timeout, 5 s by default): they wait
// for the session, add the URL's credentials to it (digest), and make one
// multi-op that creates and deletes a node in each directory under the
// root (l, o, v, t, q) and writes its clock node, creating the root first if
// it is missing. ZooKeeper accepts any digest password at connect and
// checks ACLs only when they are used, so this write is what finds a
// wrong password, or a prefix whose ACL refuses this user. It leaves
// nothing behind, but it is a write transaction (the leader, the
// transaction log); Client.Ping makes the same one.
//
// With lazy=true (Options.Client.Lazy) nothing waits for the session at
// Open: go-zk connects in the background (as it always does), and the
// first call waits for the session, authenticates and makes the check
// before it goes on (every call does until one check passed).
//
// Timeouts: dial_timeout bounds each TCP connect and TLS handshake
// (default go-zk's 1 s); ZooKeeper's session handshake that follows is
// bounded by 5 s, or dial_timeout if longer (go-zk allows 20/3 × the
// session timeout, 200 s by default). go-zk's calls take no context and
// wait while the session is (re)connecting: every call here runs in a
// goroutine of its own and is abandoned when its context (bounded by the
// operation timeout) is done; go-zk fails calls waiting for a connection
// (zk.ErrNoServer) after each failed round over the servers, which go-zk
// makes once a second.
//
// # Semantics
//
// Under the root, a claim on key K is two persistent znodes created in one
// multi-op: the lock node l/ENC(K), holding the holder's ID, and the owner
// node o/HOLDER ENC(K) (the holder's ID and the encoded key, one name),
// holding the lease TTL. The lock node gives mutual exclusion
// (create-if-absent); the owner node's path is unique to the claim, and
// every operation that ends a claim deletes both in one multi-op (Release,
// takeover, and ZooKeeper itself when the session ends), so "the owner node
// exists" means "this claim is current". Below, o/HOLDER stands for it.
// Release is multi(delete o/HOLDER, delete l/ENC), Extend is
// setData(o/HOLDER), and Commit is multi(check o/HOLDER, write the value):
// a stale holder's request fails on the missing owner node and changes
// nothing, even if the key was re-claimed since. CommitRelease is
// multi(delete o/HOLDER, write the value, create and delete a child of
// the value node, delete l/ENC). Revoke is multi(delete o/HOLDER, delete l/ENC,
// write or delete the value), HOLDER read from the lock node when the key
// turns out held (for a free key, a create and delete of l/ENC in its
// place): the claim ends and the value changes in one step, and the
// revoked holder's requests fail on its missing owner node.
//
// The batched calls (driver.Batcher: GetMany, TryClaimMany,
// CommitReleaseMany, SubscribeMany) make each key's single-key requests,
// with the same atomicity per key, concurrently on the one connection:
// go-zk sends each request as soon as it is queued and matches replies by
// xid, so a batch costs the round trips of one key, not of all of them.
// Nothing is atomic across keys (a multi-op would be all-or-nothing).
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
// client clocks; HeldError.Remaining is estimated with the local clock.
// The ensemble's members' clocks should agree, though (NTP): an mtime is
// the clock of the leader that applied the write, and after a leader
// change it is judged against the new leader's, so a new leader whose
// clock runs ahead of the old one's takes a lease over that much early.
//
// A lease does not end with its holder's session: a holder cut off for
// longer than the session timeout keeps its lease until its TTL, as on
// every other backend (ephemeral nodes, which earlier versions used, ended
// such a lease at the session's expiry, before the holder's Deadline
// when the TTL was the longer). A crashed holder's key is taken over
// once its TTL has run out; its nodes stay until then (or until the key
// is claimed again). Close drops a connection opened from a URL without
// ending the session.
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
// expiry every subscriber is woken. Wake-ups carry a CommitRelease's value
// (driver.ValueNotifier, which the Client uses): the re-arm reads the
// value node in the same round trip (the two requests pipelined), and the
// wake-up carries it if a CommitRelease wrote it since the value last
// seen, which the value node's stat tells exactly: the CommitRelease's
// multi-op creates and deletes a child of the value node, so its pzxid
// equals its mzxid (and its cversion is positive) exactly when its last
// write was a CommitRelease's. Any other wake-up carries none; a value
// whose TTL ran out is not carried; there is no size bound (the read is
// the one the woken waiter would make). There, a claim's wake-up is held
// back 1 s, and dropped if the release ending the claim wakes first. Messages of the topic bus
// (Broadcaster) are ephemeral sequential znodes under t/ENC(TOPIC), with
// one child watch per subscribed topic; a message over MaxValueLen is a
// *claim.TooLargeError before any I/O.
//
// A connection lost with the session alive (a network blip, a server
// restart) keeps its watches: go-zk re-arms them on reconnection and
// ZooKeeper fires those whose nodes changed meanwhile. But nothing fires
// while the connection is down, so when it cannot be re-established at
// once (go-zk pauses a second before its next attempt, which with a
// single server it does at once; or its immediate attempt on another
// server fails), every key subscriber is woken then, to re-check (and see
// the outage, or take over a released key) rather than wait for a wake-up
// that cannot come. The driver sees that from go-zk's session events on a
// connection opened from a URL, and from the state of New's connection,
// looked at every 250 ms once a key is subscribed (two looks without a
// session).
//
// go-zk takes no context: every call checks ctx first and then runs in a
// goroutine of its own, abandoned (left to finish) when ctx is done.
// Close waits for them on a connection opened from a URL (go-zk answers
// every call once closed); on New's, they end when that connection
// answers or is closed.
//
// # Fair acquisition (hand-over)
//
// The driver implements driver.Queuer (claim.Client's AcquireFair). A
// key's queue is the node q/ENC(K), whose children are the waiters'
// entries: ephemeral sequential nodes HOLDER-SEQUENCE, created by the
// waiter's own session (so a dead process's entries go with its session),
// holding the waiter's TTL; an entry expires at its mtime (its last
// Enqueue, the leader's clock) plus that TTL, judged as leases are (the
// local clock, and the leader's when that says it ran out), so a waiter
// that stops renewing is skipped within its TTL even while its session
// lives. Queue order is the sequence order. Each entry added also bumps
// the queue node's data version.
//
// A grant is one multi-op that ends the previous claim (or proves the key
// free), deletes the waiter's entry, drops the expired entries ahead of
// it (each at the version read, so a renewal in between fails the whole),
// and creates the waiter's lock and owner nodes: the token is that
// transaction's zxid, above every earlier one. The end of the old lease
// and the grant are one transaction. The granted nodes are persistent,
// not ephemeral (the granting process's session did not take the lease,
// and must not end it): a granted lease ends by its TTL, by its holder's
// release, or by a takeover, never with a session, and its lock node
// holds "HOLDER/TTL". A release that grants nobody deletes the queue node
// at the version it read (or proves it absent), so a waiter queued in
// between fails it, and it reads again.
//
// HandOff is that multi-op, guarded by the deletion of the releasing
// lease's owner node (ErrLost if it is gone). Its process learns the head
// of the queue from a listing it keeps while it holds the key (a child
// watch on q/ENC, re-read when it fires, in the background, from the
// moment the lease was granted to one of its own waiters or Enqueue
// returned it, until the lease's TTL): then HandOff is one round trip. A
// listing out of date only fails the multi-op (each part is guarded);
// without one, or after a failure, it lists the queue and reads the
// entries (two round trips, the reads pipelined) first. Enqueue tries to
// claim a free key with no queue in one multi-op, and otherwise reads the
// claim and the queue (two round trips) and makes the step the contract
// says (grant to itself, grant to the first waiter and queue, or queue
// behind a live lease guarded by its owner node) in one multi-op. Dequeue
// reads the same way and deletes the entry, handing a lease granted
// meanwhile on in the same multi-op. Multi-ops that fail on a change in
// between read again, up to six times.
//
// The grant reaches the waiter through a watch on the lock node
// (SubscribeGrants: a data watch, an existence watch while it is absent):
// the grant's multi-op deletes and re-creates the lock node, the watch
// fires, and its re-arm (a getData) reads the new lock node, whose data
// names the holder and TTL and whose stat gives the token (czxid) and the
// handle (mtime): one round trip for the waiter, no claim of its own. A
// lock found absent after the watch fired, a session whose watches were
// lost, and a connection lost for longer than a moment are delivered as a
// zero Lease, and the waiters enqueue again.
//
// # Errors
//
// As package claim/driver says, with go-zk's error underneath.
// Configuration errors wrap claim.ErrConfig, from every method, Open and
// New included: zk.ErrNoAuth (an ACL refuses the session: no credentials,
// a wrong digest password, another user's prefix), zk.ErrAuthFailed,
// zk.ErrInvalidACL (an auth ACL on a session without credentials), and a
// server of another kind: on a connection opened from a URL, a server
// whose answer to the session handshake cannot be ZooKeeper's (the length
// it announces is not a ZooKeeper handshake's) fails the connection, and
// once every server of the URL answered so in a row, calls fail at once
// with an error that names the address and quotes the answer's first
// bytes. (go-zk alone dials New's connection: there such a server is only
// unavailable.) Everything else is unavailability (claim.ErrUnavailable,
// from the Client): no server reachable (zk.ErrNoServer), a connection
// closed, no answer within the operation timeout.
package zookeeper
