// Package postgres is the PostgreSQL claim backend: a lease row per key
// claimed with one INSERT … ON CONFLICT statement, fenced by a per-key
// counter, and LISTEN/NOTIFY for wake-ups.
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
//	schema=NAME          Options.Schema (default public)
//	prefix=PREFIX        Options.TablePrefix (default stampede_)
//	maxvalue=BYTES       Options.MaxValueLen (default 64 MiB)
//	migrate=BOOL         false sets Options.SkipMigrate
//	sweep=DURATION       Options.SweepInterval (default 1m; 0: never)
//	async_release=BOOL   Options.AsyncRelease (default false)
//
// A malformed or repeated one is an error, and so is a shared parameter
// spelled the other backends' way, or one of ours under its old name
// (stampede_prefix, …): the error names the right one. pgx sends other
// unknown parameters to the server, which refuses them when Open connects.
// Opening by URL connects once (creating the tables, or pinging with
// migrate=false); the Client owns that pool.
//
// To bring your own pool (TLS, auth hooks, tracing), build a *pgxpool.Pool
// and call New (set its Config.ShouldPing to ShouldPing to spare the round
// trip pgxpool spends checking a connection idle for over a second).
// Client.As accepts a **pgxpool.Pool, and sets it to the pool in use.
//
// # Semantics
//
// Two tables, PREFIXclaims (key, holder, token, expires_at) and
// PREFIXvalues (key, value, expires_at), live in Options.Schema. They are
// created on first use (CREATE … IF NOT EXISTS under a transaction-scoped
// advisory lock, so processes starting together do not race), or by
// Migrate.
//
// TryClaim is one statement: an INSERT … ON CONFLICT DO UPDATE that takes
// the row only if it has no holder or its lease has expired, and bumps the
// row's token. Expiry is judged by the server's clock (clock_timestamp()),
// so client clocks may disagree with each other and with the server; only
// their rates are assumed equal (Lease.Deadline is taken from the local
// clock before the request is sent, so it is never later than the server's
// expiry). Release clears the holder but keeps the row, so the token is a
// per-key counter that increases strictly forever and is as durable as any
// committed row (it survives a server restart with the default
// synchronous_commit=on and fsync=on). Claim rows are never deleted: one
// small row per key ever claimed. TTLs have microsecond granularity.
//
// Release, Extend and Commit compare the token and holder and check
// expiry in the same statement; Release of an expired lease is ErrLost and
// leaves the row to the next claim. Commit writes the value only while the
// lease is current, holding a share lock on the claim row, so a takeover
// cannot interleave (Features.AtomicCommit). Release sends its NOTIFY in
// the same statement, so the wake-up is delivered if and only if the
// release committed (with Options.AsyncRelease, without waiting for the
// WAL flush: a crash may forget a release, never a claim). CommitRelease
// is Commit and Release in one statement (the release's UPDATE locks the
// row, the value is written only if it released, NOTIFY on commit).
// TryClaimRead is the claim statement with a read of the value; if the
// claim row was released after the statement's snapshot (the claim waited
// for the releasing transaction's row lock), a second statement reads the
// value, so a value committed before the release is never missed.
//
// Each Client opens one dedicated connection (not from the pool, so
// waiting never takes pool connections) that LISTENs on one channel for
// all keys and topics; notifications carry the encoded key. Subscribe
// returns once that LISTEN is live. When the connection drops, the driver
// reconnects with backoff, LISTENs again and wakes every subscribed key so
// each re-checks (and every topic subscription gets a reset). Publish
// sends the message in the NOTIFY payload, which must stay under 8000
// bytes. Expired values are never returned, and are deleted in bounded
// batches in the background every SweepInterval after a write (or by
// Sweep).
//
// # Errors
//
// The Client's errors wrap the sentinels of package claim: ErrHeld (a
// *claim.HeldError whose Remaining the server computed), ErrLost,
// ErrNotFound, and ErrTooLarge (a message too long for a NOTIFY payload),
// with pgx's error underneath where there is one. Passwords never appear
// in errors.
package postgres
