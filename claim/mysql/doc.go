// Package mysql is the MariaDB claim driver (mysql:// and mariadb://
// URLs): a lease row per key claimed with one INSERT … ON DUPLICATE KEY
// UPDATE … RETURNING statement, judged on the server's clock and fenced
// by a per-key counter that survives restarts, with wake-ups by polling
// the key's row once per key per process. It needs MariaDB 10.5 or later
// (INSERT … RETURNING, anonymous compound statements); MySQL has neither
// and is refused at open. Running it (figures, limits): docs/mysql.md.
//
// # URLs
//
//	mysql://user:pass@host:3306/database?prefix=app_
//	mariadb://…                 the same
//	mysql://user:pass@host/database?tls=true&cacert=ca.pem&cert=c.pem&key=k.pem
//
// The path names the database (required; the tables live there). The
// parameters, each at most once (an unknown or malformed one is an
// error that never shows the password):
//
//	prefix=PREFIX        Options.TablePrefix (default stampede_; letters, digits, _ and $)
//	maxvalue=BYTES       Options.MaxValueLen (default 4 MiB)
//	migrate=BOOL         false sets Options.SkipMigrate
//	sweep=DURATION       Options.SweepInterval (0: never)
//	poll_min, poll_max   Options.Poll (defaults 2ms and 50ms)
//	poll_learn=false     Options.Poll.NoHoldEstimate: poll on the backoff alone
//	max_conns=N          the pool's size (default 32)
//	dial_timeout=D       each connection's TCP connect and greeting (default 5s)
//	lock_wait_timeout=D  the server's innodb_lock_wait_timeout for the pool's
//	                     connections, whole seconds (default 5s; the
//	                     server's default is 50s)
//	tls=BOOL             TLS; with cacert, cert, key, servername and
//	                     skip_verify as on every backend (servername
//	                     defaults to the URL's host)
//
// The Client's own parameters, op_timeout and lazy, work as on every
// backend (see claim.Open). The Client owns the pool a URL opens. New
// takes a *sql.DB of go-sql-driver/mysql of your own instead (give it
// InterpolateParams and ClientFoundRows, see New). Client.As accepts a
// **sql.DB, and sets it to the pool in use.
//
// # Opening
//
// Open and New check the server before they return (the driver's Ping,
// within the operation timeout, op_timeout, 5 s by default): a
// connection from the pool (the server kind, TLS, the credentials, the
// database), one statement that reads whether the tables exist, the
// server's version and max_allowed_packet, and one compound statement
// that runs, on each table, a statement of each kind the driver uses
// (INSERT … SELECT, UPDATE, DELETE) matching no row, so that a missing
// privilege fails Open rather than the first release. Missing tables are
// created then, unless migrate=false (Options.SkipMigrate). With
// lazy=true Open does no I/O: the first call runs the same check.
//
// Every statement is one round trip: the pool interpolates parameters
// into the statement's text (go-sql-driver's InterpolateParams, with its
// escaping) instead of preparing it. Every connection attempt is bounded
// by dial_timeout and the call's context, the handshake and every
// statement by the call's context (the operation timeout): go-sql-driver
// closes the connection when it ends.
//
// # Semantics
//
// Three InnoDB tables in the URL's database: PREFIXclaims (k, holder,
// token, expires, ev), PREFIXvalues (k, v, expires) and PREFIXqueue (k,
// holder, seq, ttl, expires). Keys are VARBINARY(255): a key of
// printable ASCII up to 254 bytes is kept readable, any other is hashed
// (SHA-256, see driver.KeyEncoder). Expiries are microseconds since the
// Unix epoch on the server's clock (UTC_TIMESTAMP(6), the statement's
// start: one instant per statement, whatever the session's time zone):
// client clocks may disagree with each other and with the server (only
// their rates are assumed equal). TTLs have microsecond granularity.
//
// TryClaim is one INSERT … ON DUPLICATE KEY UPDATE that takes the row
// only if it has no holder or its lease has expired, and then bumps the
// token; RETURNING reads the row as it is after the statement, so a held
// key's *claim.HeldError has the lease's remaining time. Release clears
// the holder but keeps the row, so the token is a per-key counter that
// increases strictly forever and is as durable as any committed InnoDB
// row (it survives kill -9 of the server; a machine crash too with the
// default innodb_flush_log_at_trx_commit=1). Claim rows are never
// deleted: one small row per key ever claimed (or notified).
//
// Release, Extend and Commit compare the token and holder and check
// expiry in the same statement. Commit is one INSERT … SELECT that reads
// the claim row with a share lock, so a takeover or a Revoke cannot
// interleave (Features.AtomicCommit). CommitRelease and Revoke are one
// compound statement each (BEGIN NOT ATOMIC … END: one round trip, one
// transaction, rolled back on any error): CommitRelease releases the
// lease if it is current (else it signals, and nothing changes) and
// writes the value; Revoke ends whatever lease the key has (the row and
// its token stay) and replaces or deletes the value. TryClaimRead is the
// claim statement whose RETURNING also reads the value, with a locking
// read taken after the claim row was written, so a value committed by
// the transaction that released the key is seen.
//
// Wake-ups are polled (Features.Notify is Poll, driver.Poller): one loop
// per subscribed key per process reads the key's claim row (one primary
// key SELECT), 2 ms after a change doubling up to 50 ms, and never
// sleeping past the holder's lease expiry. Release, CommitRelease,
// Revoke, Notify and a hand-over with nobody queued bump the row's
// wake-up counter (ev), so a release between two polls is never missed:
// a CommitRelease to the next odd number, everything else to the next
// even one, so the poll that sees a CommitRelease's counter reads the
// value it stored in the same SELECT (up to 64 KiB) and the wake-up
// carries it (driver.ValueNotifier): a woken waiter answers without
// reading the key, 3 round trips per waiting process in a herd.
// MariaDB has no LISTEN/NOTIFY; GET_LOCK would only add a connection held
// per waiter. The batch calls: GetMany is one SELECT … IN of up to
// MaxBatch keys; TryClaimMany and CommitReleaseMany run the single-key
// statements, 16 at a time; SubscribeMany reads up to 100 keys' claim
// rows a statement. The poll loops' reads of keys due at about the same
// time go together too (driver.NewBatchPoller: one SELECT of up to 100
// claim rows, at most two in flight per client), so a process waiting on
// hundreds of keys does not take a connection per key. Topics use the Client's
// fallback (a message log in the store, read on wake-up). Expired values
// are never read, and deleted in the background (Options.SweepInterval,
// Sweep).
//
// # Fair acquisition (hand-over)
//
// The driver is a driver.Queuer, so Client.AcquireFair works: waiters
// queue in PREFIXqueue in arrival order (seq); an entry lives for its
// waiter's TTL from its last Enqueue, and expired entries are skipped and
// deleted by the key's next queue operation. Enqueue, HandOff and
// Dequeue are one compound statement each (one round trip, one
// transaction) that first locks the key's claim row (inserting a free one,
// token 0, if the key was never claimed), so the queue operations of a
// key run one after another, each seeing what the previous committed.
// HandOff ends the lease and grants the key to the first live waiter in
// one UPDATE of the claim row (the token bumped as a claim bumps it, the
// waiter's TTL from now) and deletes its entry; with nobody queued it is
// Release. Grants are polled too: SubscribeGrants polls the key's claim
// row (a poller of its own), and a live lease with a new token is
// delivered as a grant, with what was left of it when read; tokens
// skipped between two polls, a lease gone, or a failed poll are reported
// as a possibly missed grant (a zero Lease), and the client enqueues
// again.
//
// # Errors
//
// As package claim/driver says, with go-sql-driver's error underneath.
// Configuration errors wrap claim.ErrConfig, from every method, Open and
// New included: a *mysql.MySQLError numbered 1044 (no access to the
// database), 1045 (wrong password, or a REQUIRE SSL/X509 not met), 1049
// (no such database), 1142 or 1143 (a privilege missing on a table),
// 1146 (a table missing, with migrate=false or dropped since), 1227,
// 1251, 1698, 3159, 1046 (no database) or 1064 (a server that does not
// parse MariaDB's SQL); the check's own findings (tables missing with
// migrate=false, a server that is not MariaDB 10.5+, a max_allowed_packet
// under twice MaxValueLen plus 64 KiB); a TLS handshake refused, or TLS
// asked of a server without it; and a server of another kind at the
// address: on the connections of a pool a URL opens, the dialer reads the
// server's first bytes itself and fails the connection when they are not
// a MySQL greeting, quoting them (a server that waits for its client, as
// HTTP does, says nothing first and is only unavailable). Everything else
// is unavailability (claim.ErrUnavailable, from the Client): a server
// that does not answer or refuses connections, a connection dropped, a
// statement past its context, a lock wait timeout.
package mysql
