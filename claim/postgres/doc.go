// Package postgres is the PostgreSQL claim driver: a lease row per key
// claimed with one INSERT … ON CONFLICT statement, fenced by a per-key
// counter, and LISTEN/NOTIFY for wake-ups. Running it (server settings,
// PgBouncer, failover, figures): docs/postgres.md.
//
// # URLs
//
//	postgres://user:pass@host:5432/db?sslmode=verify-full&prefix=app_
//	postgresql://…                 the same
//
// A postgres:// URL is a libpq URL plus this package's parameters, which
// are taken out before pgxpool.ParseConfig parses the rest, so every pgx
// and libpq parameter (sslmode, sslrootcert, sslcert, sslkey,
// connect_timeout, pool_max_conns, …) works as usual: TLS and the connect
// timeout use libpq's names, not the cacert, cert, key, servername,
// skip_verify and dial_timeout of the other backends' URLs. Ours:
//
//	schema=NAME          Options.Schema
//	prefix=PREFIX        Options.TablePrefix
//	maxvalue=BYTES       Options.MaxValueLen
//	migrate=BOOL         false sets Options.SkipMigrate
//	sweep=DURATION       Options.SweepInterval (0: never)
//	async_release=BOOL   Options.AsyncRelease
//	value_wake=BOOL      false sets Options.NoValueWake
//
// A malformed or repeated one is an error, and so is a shared parameter
// spelled the other backends' way, or one of ours under its old name
// (stampede_prefix, …): the error names the right one. pgx sends other
// unknown parameters to the server, which refuses them when Open connects.
// The Client's own parameters, op_timeout and lazy, work as on every
// backend (see claim.Open). The Client owns the pool a URL opens.
//
// New takes a *pgxpool.Pool of your own instead. Client.As accepts a
// **pgxpool.Pool, and sets it to the pool in use.
//
// # Opening
//
// Open and New check the server before they return (the driver's Ping,
// within the operation timeout, op_timeout, 5 s by default): a
// connection from the pool (the server kind, TLS, the credentials, the
// database), then one statement that reads whether the tables exist and
// whether the role may use them (SELECT, INSERT and UPDATE on
// PREFIXclaims; SELECT, INSERT, UPDATE and DELETE on PREFIXvalues and
// PREFIXqueue).
// Missing tables are created then, unless migrate=false
// (Options.SkipMigrate), when they fail the check. Client.Ping runs the
// same check.
//
// With lazy=true (Options.Client.Lazy) Open and New do no I/O at all:
// the first call takes the first connection and, unless migrate=false,
// creates the tables; the first Subscribe dials the LISTEN connection. A
// wrong password or a missing table then fails those calls instead.
// (pool_min_conns makes pgxpool dial in the background from the start,
// lazy or not.)
//
// Every connection attempt is bounded by the caller's context, the
// operation timeout and connect_timeout (libpq's name, whole seconds:
// each attempt's TCP connect, TLS handshake and authentication);
// without it, DefaultConnectTimeout (5 s) for the pool a URL opens and
// for the LISTEN connection (pgxpool otherwise goes on connecting in the
// background for up to 2 minutes after the caller gave up). Statements
// end when their context does: pgx interrupts them and closes the
// connection.
//
// # Semantics
//
// Two tables, PREFIXclaims (key, holder, token, expires_at) and
// PREFIXvalues (key, value, expires_at), live in Options.Schema, created
// by Open's check, on first use or by Migrate, with a third for fair
// acquisition (below).
//
// TryClaim is one INSERT … ON CONFLICT DO UPDATE that takes the row only
// if it has no holder or its lease has expired, and bumps the row's token;
// on a held key the same statement returns the lease's remaining time.
// Expiry is judged by the server's clock (clock_timestamp()), so client
// clocks may disagree with each other and with the server (only their
// rates are assumed equal). TTLs have microsecond granularity. Release
// clears the holder but keeps the row, so the token is a per-key counter
// that increases strictly forever and is as durable as any committed row
// (it survives a server restart with the default synchronous_commit=on and
// fsync=on). Claim rows are never deleted: one small row per key ever
// claimed.
//
// Release, Extend and Commit compare the token and holder and check
// expiry in the same statement. Commit writes the value holding a share
// lock on the claim row, so a takeover cannot interleave. Release sends
// its NOTIFY in the same statement, so the wake-up is delivered if and
// only if the release committed (see Options.AsyncRelease). CommitRelease
// is Commit and Release in one statement. TryClaimRead is the claim
// statement with a read of the value; if the claim waited for the row lock
// of a transaction that released the key, the value that transaction
// committed is not in the statement's snapshot, and a second statement
// reads it.
//
// Revoke ends the lease (clears the holder and bumps the token; a key
// never claimed gets its claim row here, token 1, so the row is locked
// and the fence moves at every revocation: a claim racing it is either
// ended by it or reads what it stored, never the value from before with
// a live lease) and replaces or deletes the value in one transaction of
// two statements sent as one pipeline (one round trip); it waits for a
// Commit in progress, whose value it then replaces, and its NOTIFY goes
// out on commit. The batch calls (Client.GetMany, TryClaimMany,
// CommitReleaseMany) are one statement each over arrays of keys, key by
// key the single-key statement, and lock claim rows in key order so
// concurrent batches cannot deadlock; CommitReleaseMany sends values over
// 64 MiB in several statements of one pipeline. Batches of more than
// MaxBatch keys are split by the Client. SubscribeMany, like Subscribe,
// registers the keys in the process and sends nothing once the LISTEN
// connection (below) is up.
//
// Each Client opens one dedicated connection (not from the pool, so
// waiting never takes pool connections) that LISTENs on one channel for
// all keys and topics; notifications carry the encoded key, and a
// CommitRelease's also the value it stored when it fits in the payload
// (SubscribeValue; not with Options.NoValueWake). When the
// connection drops or goes silent (Options.HealthInterval), the driver
// reconnects with backoff, LISTENs again and wakes every subscribed key
// (every topic subscription gets a reset), and wakes them already when
// the first attempt fails (see Errors). Publish sends the message in
// the NOTIFY payload, which must stay under 8000 bytes. Expired values are
// never read, and deleted in the background (Options.SweepInterval, Sweep).
//
// # Fair acquisition (hand-over)
//
// The driver is a driver.Queuer, so Client.AcquireFair works: waiters
// queue in a third table, PREFIXqueue (key, holder, seq, ttl,
// expires_at), in arrival order (seq, an identity column); an entry lives
// for its waiter's TTL from its last Enqueue, and expired entries are
// skipped, and deleted by the key's next queue operation. Enqueue,
// HandOff and Dequeue are two statements sent as one pipeline (one round
// trip, one transaction): the first locks the key's claim row (inserting
// a free one if the key was never claimed), so the second, whose
// snapshot is taken after the lock, sees every queue change committed
// before it (a single statement would read the queue with the snapshot
// it took before waiting for the lock). HandOff's second statement ends
// the lease and grants the key to the first live waiter in one UPDATE of
// the claim row (the token bumped as a claim bumps it, the waiter's TTL
// from now), deletes the waiter's entry and sends the grant in a NOTIFY
// on the driver's channel ("g" + encoded key, token, TTL and holder),
// delivered on commit only; with nobody queued it is Release. Enqueue
// does the contract's five steps in its second statement (takeover of an
// expired lease by the first waiter included, with the grant's NOTIFY),
// and Dequeue hands on a lease granted to the departing waiter in the
// same statement. The LISTEN connection passes each grant to the grant
// subscription of its key (SubscribeGrants), so the granted waiter holds
// the key with no request of its own; plain subscribers of the key are
// not woken by a grant. After the LISTEN connection was lost, every grant
// subscription is told it may have missed one (a zero Lease), with the
// usual wake-ups. HandOff and Dequeue commit synchronously even with
// Options.AsyncRelease (a grant issues a token). A holder ID too long to
// fit in a NOTIFY payload with its key is refused by Enqueue
// (*driver.TooLargeError). Figures: docs/postgres.md.
//
// # Errors
//
// As package claim/driver says, with pgx's error underneath. A held key's
// *claim.HeldError has the remaining lease time as the server reckons it
// (0 if the holder's row committed after the claim statement's snapshot).
//
// Configuration errors wrap claim.ErrConfig, from every method, Open and
// New included: a *pgconn.PgError with SQLSTATE 28P01
// (invalid_password), 28000 (invalid_authorization_specification: no
// such role, no pg_hba.conf entry), 3D000 (invalid_catalog_name: no such
// database), 3F000 (invalid_schema_name), 42P01 (undefined_table: a
// table missing, with migrate=false or dropped since) or 42501
// (insufficient_privilege); the check's own findings (tables missing
// with migrate=false, a privilege missing on them); and a server of
// another kind at the address: on the connections the driver dials
// itself (the pool a URL opens, the LISTEN connection), a server whose
// first answer is not PostgreSQL's fails the connection with an error
// that says so, quoting the answer's first bytes. (pgx alone dials the
// connections of a pool given to New: there such a server is only
// unavailable.) Everything else is unavailability (claim.ErrUnavailable,
// from the Client): a server that does not answer or refuses
// connections, a connection dropped, a statement past its context.
//
// Subscribe fails with the LISTEN connection's own error (a wrong
// password: ErrConfig) rather than waiting for it. When an established
// LISTEN connection is lost, the driver reconnects at once; if that
// fails, every subscribed key is woken then (and every topic reset), so
// waiters re-check (and see the error, or take a key that was released)
// instead of waiting for a wake-up that cannot come; they are woken
// again once the connection is back.
package postgres
