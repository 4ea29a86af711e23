// Package nats is the claim driver for NATS JetStream KV: a key's lease,
// fair queue and stored value live in one KV entry (a record), claimed and
// committed by compare-and-set on the entry's revision, fenced by the
// stream's sequence, and pushed to waiters by KV watches; topics are core
// NATS subjects.
//
// # URLs
//
//	nats://HOST:PORT[,HOST:PORT...]?bucket=BUCKET&prefix=PREFIX
//	nats://USER:PASS@HOST:PORT                  user and password
//	nats://HOST:PORT?token=SECRET                token (never printed)
//	nats://HOST:PORT?tls=true&cacert=CA.pem&cert=CERT.pem&key=KEY.pem
//
// Parameters: bucket (Options.Bucket, default "stampede"), prefix
// (Options.Prefix, default "stampede"), create (create=false:
// Options.NoCreate), replicas (Options.Replicas), clock_skew
// (Options.ClockSkew; clock_skew=0: no margin), maxvalue
// (Options.MaxValueLen), token, dial_timeout (each connection attempt and
// the server's INFO, default DefaultDialTimeout, 5 s), ping_interval
// (default DefaultPingInterval, 5 s) and max_pings_out (pings left
// unanswered before the connection is dropped and made again, default
// DefaultMaxPingsOut, 2), tls=true with
// cacert (CA certificates to trust instead of the system roots), cert and
// key (client certificate), servername and skip_verify (testing only),
// and the Client's own op_timeout and lazy (claim.Open). NATS's own
// convention of a token as the URL's user name is refused (errors print a
// URL's user name): give it as token=. The URL's path must be empty. A
// URL-opened Client reconnects for ever (every 250 ms) and pings the
// server every ping_interval, so a server gone without a word is noticed
// in about (max_pings_out+1) × ping_interval, 15 s by default.
//
// Connection loss: while the connection is down (reconnecting), every
// call fails at once (the Client reports claim.ErrUnavailable) rather
// than waiting in nats.go's reconnect buffer until its timeout, and
// Publish sends nothing (a URL-opened Client's connection keeps no
// reconnect buffer: nothing is sent later, after its call has given up).
// A URL-opened Client also ends every request in
// flight when its connection drops (a request written to a connection
// that drops is never answered; its outcome is unknown, as a timeout's)
// and wakes every subscriber, so that waiters re-check at once and learn
// that the server is gone.
//
// Opening connects (unless lazy=true) within ctx and dial_timeout, and
// claim.Open then checks the server (the driver's Ping): JetStream
// answers, the bucket exists (it is created if missing, with file
// storage, history 1 and Replicas, unless create=false) and is a bucket
// the driver can use (file storage, no TTL and no size limits: the server
// must never drop a live lease). New does the same with the caller's
// connection, unless Options.Client.Lazy. Every request carries its
// call's context, bounded by the operation timeout (op_timeout, default
// claim.DefaultOpTimeout, 5 s).
//
// # Semantics
//
// Key K (mapped to one subject token: "=" and K if it is made of
// letters, digits, '-', '_', '/' and '=' and fits in 255 bytes, else "_"
// and the base64url SHA-256 of K) owns two KV keys: PREFIX.TOKEN.r, its
// record (lease, fair queue and stored value, in the binary layout
// claim.go documents), and PREFIX.TOKEN.n, its notifications.
//
//   - Claim: one read of the record (a direct get of the subject's last
//     message; on a bucket of more than one replica, a get answered by
//     the stream's leader, which has everything a watch delivered) and, if
//     it holds no lease, or one this client may take over (see Clocks),
//     one write of the record with the new lease
//     and the stored value as it was, conditioned on the revision read
//     (JetStream's expected last subject sequence): of two claimants only
//     one can win. Two round trips; TryClaimRead returns the value read
//     with the claim, in the same two.
//   - Fence: the token is the revision of the claiming write, a sequence
//     of the bucket's stream: global and strictly increasing, kept across
//     restarts by the stream's file storage (Features.DurableFence).
//     Extend, Commit and Set keep it (the record names it).
//   - Extend, Release, Commit and CommitRelease rewrite the record
//     conditioned on its revision, after checking that it still names the
//     lease's holder and token; the process remembers the revision of
//     its own last write of a lease it holds, so each is one round trip
//     (one more after another client wrote the record meanwhile: a Set, an
//     Enqueue). Commit writes the value into the record that holds the
//     lease: the check and the write are one atomic step
//     (Features.AtomicCommit), and a commit of a lease taken over or
//     revoked finds another revision (ErrLost), however late it arrives.
//   - Revoke: one unconditional write of a record with no lease and no
//     queue, and the new value or none: atomic, and the revoked holder's
//     next write fails (ErrLost). The next claim's token, a later
//     revision, is greater.
//   - Store: Get is one read; Set and Delete read the record and write it
//     back with the new value (a live lease is kept), conditioned on the
//     revision read (two round trips, again if another write landed in
//     between). Every write of a record carries its value: claiming,
//     extending or releasing a key whose value is large rewrites it.
//   - Fair acquisition (driver.Queuer): the queue is in the record, so
//     Enqueue, Dequeue and HandOff are one conditioned write each (after
//     a read, except HandOff's, as Release's). A hand-over writes the
//     record with the next live waiter's lease (a new revision: a greater
//     token), which every watch of the key delivers to SubscribeGrants.
//   - Batches: no driver.Batcher (NATS 2.9 has no multi-key read or
//     write): the client runs single-key calls concurrently, pipelined on
//     the one connection.
//
// Clocks: leases are judged on client clocks, as JetStream KV (before
// per-message TTLs in nats-server 2.11) has no server-side expiry per
// key. A holder records expiry = (its clock before sending) + TTL, and
// the TTL, and stops at its Deadline, which is no later. Another client
// takes over at the earlier of two times: once its own clock passes
// expiry + ClockSkew (safe while clients' clocks differ by less than
// ClockSkew, default 50 ms), or a TTL (and 1 ms + 500 ppm) after it first
// saw the write that made or renewed the lease (a read or its watch of
// the key delivered it), whatever the clocks read: the holder counted its
// Deadline from before it sent that write, which the server applied
// before anyone saw it (clocks assumed to run at the same rate;
// driver.Sightings). A write that leaves the lease as it was (a Commit,
// a Set, an Enqueue) does not start that count again. A lease written by
// or granted to an earlier version, whose Extend could repeat the write's
// identity, is judged by the clock rule alone (the record marks holders
// that run the new rule: a rolling upgrade stays safe). So a waiter that
// watched a lease being made or renewed takes it over within about a
// round trip of the holder's Deadline; one that first saw it late (after
// it was written) waits up to ClockSkew past the lease's end. Stored values
// expire by the reader's clock; an expired value stays in the record
// until the key's next write, and records stay in the bucket (Sweep
// removes the idle ones).
//
// Wake-ups: one KV watch (a JetStream ordered consumer on
// PREFIX.TOKEN.*) per subscribed key per process; Subscribe returns once
// the watch has delivered the key's current record. A record written by
// Release, CommitRelease or Revoke, or that ends or replaces the lease
// the watch saw last (a takeover), wakes the key's subscribers; so does
// a write of the notify key (Notify). A claim of a free key, an Extend,
// a Commit or a Set does not. The watch delivers what the stream stored,
// so a wake-up comes after the change is visible to every read. A
// reconnection of a URL-opened connection, and a watch that ends (its
// consumer lost for good, then made again), wake every subscriber.
//
// Values in wake-ups (driver.ValueNotifier): the record a CommitRelease
// writes holds the value, and the watch delivers the record: a woken
// waiter answers without reading (unless the value expired meanwhile),
// whatever the value's size. The price: every watching process receives
// every write of the record, value included.
//
// Topics (driver.Broadcaster): a core NATS subject per topic,
// _stampede.BUCKET.PREFIX.t.TOKEN; Publish flushes (one round trip).
// Delivery is at most once, to subscriptions live on the server; after a
// reconnection each topic subscriber is told of the gap (reset).
//
// As accepts a **nats.Conn (github.com/nats-io/nats.go) and a
// *jetstream.KeyValue (the bucket, once found).
//
// # Errors
//
// A *claim.HeldError's Remaining is the time until this client may take
// the lease over (see Clocks): it includes ClockSkew unless the client
// saw the lease's write as it was made. Open refuses
// (ErrConfig) a MaxValueLen that leaves less than 1 KiB under the
// server's max_payload; a record that still exceeds it (a long fair queue
// beside a value near the limit) is ErrTooLarge. Configuration errors wrap claim.ErrConfig, in every call
// (Open and Ping included): an authorization violation (wrong user,
// password or token), an expired or revoked credential, a TLS handshake
// refused for its certificates, TLS wanted by one side only, JetStream
// not enabled (for the server or the account), a request the server
// refused to pass on for the user's permissions (it times out: a timeout
// within 30 s of the server reporting a permissions violation is taken
// for it), a JetStream API error 400, 401 or 403, a bucket missing with
// create=false or of the wrong kind, and a server that is not a NATS
// server (no INFO first, or a connection closed before it). Other
// errors are reported by the Client as claim.ErrUnavailable. Tokens and
// passwords never appear in errors or String output.
package nats
