// Package dynamo is the claim driver on Amazon DynamoDB, through
// aws-sdk-go-v2: one item per key holds the lease, the fencing counter, a
// notify counter and the value, so every operation is one conditional
// UpdateItem, and waiters are woken by polling (DynamoDB cannot push
// without Streams). The Client's As accepts a **dynamodb.Client.
//
// # URLs
//
//	dynamodb://TABLE[?PARAMS]
//
// Parameters (unknown, repeated or malformed ones are errors):
//
//	region        AWS region (default: the SDK's, e.g. AWS_REGION)
//	endpoint      endpoint URL, e.g. http://127.0.0.1:4567 for dynalite or
//	              DynamoDB Local (default: AWS's)
//	create_table  true: CreateTable when first needed (Open's check); for
//	              development (default false)
//	dial_timeout  bounds each connection attempt, TCP and TLS handshakes
//	              (default DefaultDialTimeout, 5s)
//	prefix        key prefix (default "stampede")
//	clock_skew    Options.ClockSkew (default 100ms)
//	retention     Options.Retention (default 168h; 0s: the default; "off":
//	              no TTL attribute)
//	poll_min      first polling interval after a change (default 2ms)
//	poll_max      polling interval cap (default 50ms)
//	poll_learn    false: poll on the backoff alone (Options.PollFixed); by
//	              default polls learn how long claims are held and read
//	              around their likely end (driver.PollOptions)
//
// The Client's own parameters, op_timeout and lazy, work as on every
// backend (see claim.Open). Credentials come from the SDK's default chain
// (environment, shared files, IAM roles), never from the URL. For an
// endpoint on a loopback address with no AWS_ACCESS_KEY_ID or AWS_PROFILE
// in the environment, fixed dummy credentials are used instead: local
// emulators accept any signature. The URL opener's client makes one
// attempt per call (no SDK retries); a client given to New keeps its own
// retry policy.
//
// # Opening
//
// The SDK dials nothing until a request, so Open and New check the table
// before they return (the driver's Ping, within the operation timeout,
// op_timeout, 5 s by default): one GetItem of an item nobody writes, which
// proves that the endpoint answers as DynamoDB does, accepts the
// credentials and GetItem on the table, and that the table exists with
// the string attribute "k" as its only key. With create_table=true the
// check creates the table first if it is missing (CreateTable: the
// creation and the wait for it must fit in op_timeout; on AWS raise it,
// e.g. op_timeout=60s). Client.Ping runs the same check. With lazy=true
// (Options.Client.Lazy) Open and New send nothing: the first call creates
// the table (create_table=true) or finds what the check would have.
//
// Every request carries its call's context, which the Client bounds by
// op_timeout: the SDK's retries (a client given to New may have some)
// and credential lookups stay within it. A client opened by URL also
// bounds each connection attempt by dial_timeout.
//
// # Table
//
// The table's partition key is the string attribute "k" (no sort key).
// Items have these attributes: k (PREFIX:KEY), h (holder id, present while
// claimed), le (lease expiry, Unix ms, holder's clock), lw (a map: e and
// h, the le and holder it was written with, t, that write's TTL in ms, and
// n, a random id of that write), f (fencing
// counter), n (notify counter), v (value, binary), ve (value expiry, Unix
// ms; absent: none), vp (present when the value has no expiry), exp
// (Unix seconds, the attribute DynamoDB's TTL reaps by), and for fair
// acquisition (below) qs, qt, qe (maps from holder id to the entry's
// place, TTL in ms and expiry in Unix ms), qn (the next place) and lt
// (the TTL of the lease last granted from the queue, ms). Keys are mapped
// with driver.KeyEncoder: at most 2048 bytes including the prefix, valid
// UTF-8 without control characters, others hashed.
//
// # Semantics
//
// TryClaim is one conditional UpdateItem (no holder, or the holder's lease
// expired: see below) that sets the holder and its expiry and increments
// the fence.
// The item outlives releases, and a fence is created at the current Unix
// time in microseconds, so tokens keep increasing even after the item was
// reaped by TTL or the table recreated (Features.DurableFence). Release,
// Extend and Commit are conditional on the holder id and token, Extend and
// Commit also on the lease being unexpired; Commit writes the value into
// the same item in the same write (Features.AtomicCommit). Release learns
// the expiry it removed (UPDATED_OLD), so a lease that expired with nobody
// claiming the key since is freed and answers ErrLost; it judges that
// expiry by its clock read before the request was sent, so a release sent
// in time whose reply is read late (a slow link, a paused process) is a
// success. TryClaimRead is the
// claim's UpdateItem returning the whole new item (ALL_NEW); CommitRelease
// is one UpdateItem, conditional like Commit, that writes the value,
// removes the holder and bumps the notify counter. Revoke is one
// unconditional UpdateItem that removes the holder and its expiry (the
// fence stays), stores or removes the value and bumps the notify counter,
// atomic since all of it is in the key's item.
//
// Batches (driver.Batcher, Features.MaxBatch 100): GetMany and
// SubscribeMany are one strongly consistent BatchGetItem (another only
// for keys DynamoDB leaves unprocessed: a reply over 16 MB, throttling);
// TryClaimMany and CommitReleaseMany send each key's single conditional
// UpdateItem concurrently: one request per key, the latency of one, each
// atomic on its key and nothing across keys (DynamoDB has no conditional
// batch write).
//
// DynamoDB has no server clock in conditions: expiry is judged on the
// clients' clocks. A holder records its lease's expiry as request time +
// TTL (millisecond granularity, rounded up), and the TTL itself (lw);
// another client takes the lease over ClockSkew after that time by its
// own clock (the condition le < now - ClockSkew), or sooner if it watched
// the lease being written: from its first read that showed that write
// (poll, queue read, a claim's own reply, or the old item DynamoDB
// returns on a failed claim; dynalite returns none) plus the TTL recorded
// and driver.TakeoverMargin, whichever comes first. The claim then adds
// to its condition the alternative "the item still holds that very
// write" (the same fence, le and lw.n), and a poll wakes the waiters at that
// time. That is safe whatever the clocks read: the holder counts its
// Deadline from a clock reading taken before it sent the write, and the
// reader saw the write after it was applied (driver.Sightings). Two
// holders never overlap while the clients' clocks differ by less than
// ClockSkew and run at the same rate (500 ppm allowed). A lease whose lw
// is missing or names another le or holder (written by an earlier
// version) is taken over by the clock rule alone.
//
// The TTL attribute exp only reclaims space: an item is reaped no earlier
// than Retention after its lease's and its value's expiry (never while it
// holds a value stored without TTL; a value whose TTL exceeds Retention
// may be reaped Retention after a later lease ends), and leases longer
// than Retention are refused.
//
// Notification polls (Features.Notify is Poll, see driver.Poller): a poll
// is one strongly consistent GetItem of the lease attributes; polls of
// keys due at about the same time go together, one BatchGetItem of up
// to MaxBatch keys, at most two in flight per client
// (driver.NewBatchPoller). A changed
// notify counter (Release, CommitRelease, Revoke and Notify bump it; a
// missing one starts at the current Unix time in microseconds, so it
// never comes back to a value a poller saw), or the lease seen last
// running out (at the time it may be taken over, above) or taken over,
// wakes the key's waiters; a claim on a free
// key does not. Topics use the Client's topic log.
//
// # Fair acquisition (hand-over)
//
// The driver implements driver.Queuer (claim.Client.AcquireFair). A key's
// queue lives in its item, next to its lease: an entry per waiter in the
// maps qs, qt and qe, keyed by holder id, its place a number from the
// counter qn, which only grows. An UpdateItem cannot search a map, so a
// queue operation is one strongly consistent GetItem of the lease and the
// queue, then one UpdateItem whose condition holds exactly when what the
// decision rested on is unchanged:
//
//   - Enqueue: a holder's first Enqueue (this process has not queued it)
//     tries the uncontended case first, one UpdateItem without a read that
//     grants the key if no lease is live and nobody is queued: 1 request,
//     as TryClaim. Otherwise (that claim failed, or a renewal) 2 requests,
//     the GetItem and the write (the GetItem alone when it finds the lease
//     granted to the caller already): the write grants the key to the
//     caller (a free key, the caller first or nobody queued alive), or
//     grants it to the first live waiter (a lease run out: takeover) and
//     queues the caller, or queues the caller behind the live lease, on
//     condition that the lease is still live and not the caller's; it
//     drops expired entries (at most 16 a write). Queueing behind a holder
//     the first time is thus 3 requests.
//   - HandOff: 2 requests. The write, conditional on the lease's holder
//     and token, ends it and grants the key to the first live waiter
//     (token + 1, the waiter's TTL, its entry removed on condition that it
//     was not renewed or replaced since the read), atomically since both
//     are in the one item; with no live waiter it releases the key as
//     Release does, on condition that nobody was queued since the read
//     (qn unchanged).
//   - Dequeue: 2 requests (1 if the caller is neither queued nor holding):
//     the entry removed, or, if the lease had been granted to the caller,
//     the hand-over as HandOff makes it.
//
// Entries are added or renewed only while a live lease is held, and a
// place is never reused, so the conditions stay narrow: a renewal does not
// fail a HandOff unless it is the renewal of the very entry granted. If a
// write's condition fails while the operation still applies (another
// client's write to the key landed between the read and the write), the
// method reads and writes again, at most 8 rounds, each lost only to
// another writer's success; this is the one exception to one attempt per
// method, and a lost race is not an error the client could act on.
//
// Expiry of entries is judged by the clock rule: an entry lives for its
// TTL from its Enqueue by its waiter's clock, and others skip it only
// ClockSkew after that. A waiter renews its entry in place only while it
// is unexpired by its own clock; an expired entry is queued anew at the
// tail, so an entry others skipped never comes back at its old place. A
// grant's lease counts from a clock read after the GetItem, so after
// every Enqueue that queued the waiter: the waiter's Deadline (counted
// from its last Enqueue) is never after the recorded expiry, nor after
// the grant was sent plus its TTL (lw). A dead holder's lease is taken
// over (Enqueue's grant) as TryClaim takes it: by the clock rule, or by
// this process's sightings of its write, on condition that the item
// still holds it (same fence and le).
//
// Grants reach waiters by polling (SubscribeGrants): one loop per key per
// process, the same cadence as Subscribe's (PollMin, doubling to PollMax,
// and a read when the lease may be taken over), each poll one GetItem of the lease
// attributes. A live lease with a new fence is delivered as the grant
// (TTL: lt, the TTL granted). A lease gone with no new one (released with
// no waiter, or run out) and a failed poll are delivered as the zero
// Lease, so the waiters enqueue again; so are fences skipped between two
// polls, unless the polls were closer together than the shortest TTL of
// the process's own waiters for the key (the driver keeps them from
// their Enqueue calls): a grant missed that way went to a waiter that
// never learned of it, so its lease ran out between the polls. Fast
// hand-overs (several between two polls) thus wake nobody but their
// grantees. SubscribeGrants sends nothing before it returns (the loop's
// first poll, within PollMin, delivers the lease live then), so an
// uncontended AcquireFair is 1 request (and the grant poll it leaves,
// sent within PollMin, may complete after it). A hand-over is the
// holder's 2 requests, then the waiter's next poll: no claim of its own
// (TestHandOverRequests counts it), and no other client writes at all
// (TestHandOverWakesOne). Without Streams nothing can push: the waiter
// learns of its grant up to PollMax after it; a waiter in the holder's
// own process gets it from HandOff at once.
//
// # Errors
//
// ErrHeld (Remaining until the lease may be taken over where DynamoDB
// returns the item on a failed condition, 0 on dynalite), ErrLost,
// ErrNotFound, and ErrTooLarge for values over MaxValueLen or an item
// DynamoDB finds too large. A lease longer than Retention is an error of
// its own; the SDK's errors are wrapped underneath.
//
// Configuration errors wrap claim.ErrConfig, from every method, Open and
// New included, with the SDK's error underneath (smithy.APIError): the
// error codes UnrecognizedClientException (an access key DynamoDB does
// not know), InvalidSignatureException (a wrong secret key),
// IncompleteSignatureException, MissingAuthenticationTokenException (no
// credentials), AccessDeniedException (a permission missing),
// ResourceNotFoundException (no such table); a ValidationException saying
// the key does not match the table's schema (a table made for something
// else); and an endpoint that is not DynamoDB: an HTTP answer without
// DynamoDB's request id (other than a 5xx, which a gateway may send while
// DynamoDB is away), an answer that is not HTTP, an https endpoint that
// does not speak TLS or whose certificate does not verify. Everything
// else is unavailability (claim.ErrUnavailable, from the Client): no
// answer in time, refused or dropped connections, throttling, DynamoDB's
// own failures, and credentials the SDK's chain could not find or fetch.
// dynalite accepts any signature: stampede's tests cannot show a wrong
// key refused.
//
// Subscribe reads the key's state before it returns, so it fails with
// the real cause (a missing table: ErrConfig) instead of waiting. A
// subscription whose polls start failing (the endpoint gone) wakes its
// waiters once, so they re-check and meet the error, or take a key that
// was released.
package dynamo
