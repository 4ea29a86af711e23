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
// claimed), le (lease expiry, Unix ms, holder's clock), f (fencing
// counter), n (notify counter), v (value, binary), ve (value expiry, Unix
// ms; absent: none), vp (present when the value has no expiry) and exp
// (Unix seconds, the attribute DynamoDB's TTL reaps by). Keys are mapped
// with driver.KeyEncoder: at most 2048 bytes including the prefix, valid
// UTF-8 without control characters, others hashed.
//
// # Semantics
//
// TryClaim is one conditional UpdateItem (no holder, or the holder's lease
// expired) that sets the holder and its expiry and increments the fence.
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
// TTL (millisecond granularity, rounded up); another client takes the lease over only
// ClockSkew after that time by its own clock. Two holders never overlap
// while the clients' clocks differ by less than ClockSkew.
//
// The TTL attribute exp only reclaims space: an item is reaped no earlier
// than Retention after its lease's and its value's expiry (never while it
// holds a value stored without TTL; a value whose TTL exceeds Retention
// may be reaped Retention after a later lease ends), and leases longer
// than Retention are refused.
//
// Notification polls (Features.Notify is Poll, see driver.Poller): a poll
// is one strongly consistent GetItem of the lease attributes. A changed
// notify counter (Release, CommitRelease, Revoke and Notify bump it; a
// missing one starts at the current Unix time in microseconds, so it
// never comes back to a value a poller saw), or the lease seen last
// running out or taken over, wakes the key's waiters; a claim on a free
// key does not. Topics use the Client's topic log.
//
// # Errors
//
// ErrHeld (Remaining from the holder's recorded expiry where DynamoDB
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
