// Package postgres is the PostgreSQL claim backend: a lease row per key
// claimed with one INSERT … ON CONFLICT statement, fenced by a per-key
// counter, and LISTEN/NOTIFY for wake-ups.
//
// # URLs
//
//	postgres://user:pass@host:5432/db?sslmode=disable
//	postgresql://…                 the same
//
// Query parameters starting with "stampede_" are this package's own and are
// removed before the rest of the URL goes to pgx (pgxpool.ParseConfig), so
// every pgx and libpq parameter (sslmode, pool_max_conns, …) works as
// usual. An unknown "stampede_" parameter is an error. Ours:
//
//	stampede_schema=NAME     Options.Schema (default public)
//	stampede_prefix=PREFIX   Options.TablePrefix (default stampede_)
//	stampede_maxvalue=BYTES  Options.MaxValueLen (default 64 MiB)
//	stampede_migrate=BOOL    false sets Options.SkipMigrate
//	stampede_sweep=DURATION  Options.SweepInterval (default 1m)
//	stampede_async_release=BOOL  Options.AsyncRelease (default false)
//
// To bring your own pool (TLS, auth hooks, tracing), build a *pgxpool.Pool
// and call New (set its Config.ShouldPing to ShouldPing to spare the round
// trip pgxpool spends checking a connection idle for over a second).
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
// expiry in the same statement. Commit writes the value only while the
// lease is current, holding a share lock on the claim row, so a takeover
// cannot interleave (Features.AtomicCommit). Release sends its NOTIFY in
// the same statement, so the wake-up is delivered if and only if the
// release committed (with Options.AsyncRelease, without waiting for the
// WAL flush: a crash may forget a release, never a claim). CommitRelease
// is Commit and Release in one statement (the release's UPDATE locks the
// row, the value is written only if it released, NOTIFY on commit). TryClaimRead is the claim statement with a
// read of the value; if the claim row was released after the statement's
// snapshot (the claim waited for the releasing transaction's row lock), a
// second statement reads the value, so a value committed before the
// release is never missed.
//
// Each Backend opens one dedicated connection (not from the pool, so
// waiting never takes pool connections) that LISTENs on one channel for
// all keys; notifications carry the encoded key and are fanned out
// locally. Subscribe returns once the LISTEN is live. When that connection
// drops, the Backend reconnects with backoff, LISTENs again and wakes every
// subscriber so each re-checks (and SubscribeTopic handlers get a reset).
// Expired values are never returned, and are deleted in bounded batches
// in the background every SweepInterval after a write.
//
// # Errors
//
// ErrHeld (a *claim.HeldError whose Remaining the server computed),
// ErrLost, ErrNotFound, ErrTooLarge, ErrInvalidKey and ErrClosed from
// package claim, wrapped as "postgres: OP KEY: …" with pgx's error
// underneath where there is one. Passwords never appear in errors.
package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
)

// Scheme is the URL scheme this package registers; "postgresql" is
// registered too.
const Scheme = "postgres"

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register("postgresql", &URLOpener{})
}

// Defaults and limits.
const (
	// DefaultMaxValueLen is the default Options.MaxValueLen (64 MiB).
	DefaultMaxValueLen = 64 << 20
	// MaxValueLimit is the largest MaxValueLen accepted: a bytea value and
	// a protocol message are limited to 1 GiB; 1 MiB is left for the rest
	// of the message.
	MaxValueLimit = 1<<30 - 1<<20
	// MinTTL is the shortest lease granted.
	MinTTL = time.Millisecond
	// maxKeyLen bounds encoded keys (btree entries must stay well under
	// PostgreSQL's ~2700-byte limit); longer keys are hashed.
	maxKeyLen = 256
	// maxIdent is PostgreSQL's identifier limit (NAMEDATALEN-1).
	maxIdent = 63
)

// Options configure a Backend. nil means defaults; every zero field is a
// documented default.
type Options struct {
	// Schema holds the tables (default "public"). It is created if it
	// does not exist (needs CREATE on the database then).
	Schema string
	// TablePrefix names the tables TablePrefix+"claims" and
	// TablePrefix+"values" (default "stampede_"). Backends with
	// different Schema or TablePrefix share nothing, not even wake-ups.
	TablePrefix string
	// MaxValueLen limits values (default DefaultMaxValueLen, at most
	// MaxValueLimit).
	MaxValueLen int
	// SkipMigrate, if true, never creates the tables on first use: call
	// Migrate yourself, or create them with your migration tool.
	SkipMigrate bool
	// SweepInterval is the least time between two background deletions
	// of expired values by this Backend, started after a Set or Commit
	// (default one minute; negative: never sweep).
	SweepInterval time.Duration
	// SweepLimit is the most expired values one sweep deletes (default 1000).
	SweepLimit int
	// HealthInterval is how long the LISTEN connection may stay silent
	// before it is pinged, so a dead connection is found; a ping
	// unanswered for as long again replaces the connection (default 30s).
	HealthInterval time.Duration
	// ListenConfig, if set, is used for the LISTEN connection instead of
	// the pool's ConnConfig: point it at the server directly when the
	// pool goes through a transaction-pooling proxy (PgBouncer), which
	// cannot hold a LISTEN. The pool's BeforeConnect hook is still run.
	ListenConfig *pgx.ConnConfig
	// AsyncRelease, if true, commits Release and CommitRelease with
	// synchronous_commit=off (for that statement only), so the NOTIFY
	// that wakes the next holder does not wait for the server's WAL flush
	// (on a server with fsync=on, one disk flush less on every handoff).
	// A server crash may then lose releases (and CommitRelease's value)
	// from the last moments (up to 3 × wal_writer_delay, 600 ms by
	// default): such a key stays held until its lease expires. Claims,
	// Extend and Commit stay synchronous, and a claim's commit makes every
	// earlier release durable, so tokens and exclusion are unaffected.
	AsyncRelease bool
}

func (o *Options) fill() error {
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.TablePrefix == "" {
		o.TablePrefix = "stampede_"
	}
	if o.MaxValueLen == 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.MaxValueLen < 0 || o.MaxValueLen > MaxValueLimit {
		return fmt.Errorf("MaxValueLen %d out of range 1..%d", o.MaxValueLen, MaxValueLimit)
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.SweepLimit <= 0 {
		o.SweepLimit = 1000
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 30 * time.Second
	}
	if len(o.Schema) > maxIdent || strings.ContainsRune(o.Schema, 0) {
		return fmt.Errorf("schema %q: want at most %d bytes, no NUL", o.Schema, maxIdent)
	}
	if l := len(o.TablePrefix) + len("values_expires_idx"); l > maxIdent || strings.ContainsRune(o.TablePrefix, 0) {
		return fmt.Errorf("table prefix %q: want at most %d bytes, no NUL", o.TablePrefix, maxIdent-len("values_expires_idx"))
	}
	return nil
}

// Backend is one client of a PostgreSQL database. It implements
// claim.Backend, claim.Broadcaster, claim.ClaimReader and
// claim.CommitReleaser, and is safe for concurrent use.
type Backend struct {
	pool    *pgxpool.Pool
	ownPool bool
	opt     Options
	keys    claim.KeyEncoder
	q       queries
	channel string
	lockID  int64
	hub     *hub.Hub

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	closed atomic.Bool

	migrated atomic.Bool
	migSem   chan struct{}

	bgMu      sync.Mutex // guards wg.Add against Close
	wg        sync.WaitGroup
	lastSweep atomic.Int64

	l listener // notify.go

	testHookDial func()       // called before each LISTEN dial, in tests
	testHookWake func(string) // called with the encoded key of each wake-up received, in tests
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.Broadcaster    = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

type queries struct {
	claim, extend, release, commit, get, set, del, sweep, notify string
	claimRead, commitRelease                                     string
	exists                                                       string
	migrate                                                      []string
}

// New returns a Backend using pool for claims and values. The pool stays
// the caller's: Close does not close it. The LISTEN connection is made
// separately, from pool.Config(), when the first subscription needs it.
// New does no I/O.
func New(pool *pgxpool.Pool, opt *Options) (*Backend, error) {
	if pool == nil {
		return nil, errors.New("postgres: New: nil pool")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if err := o.fill(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	b := &Backend{
		pool:   pool,
		opt:    o,
		keys:   claim.KeyEncoder{MaxLen: maxKeyLen, Safe: claim.PrintableASCII},
		migSem: make(chan struct{}, 1),
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	ns := o.Schema + "." + o.TablePrefix
	b.channel = ns + "events"
	if len(b.channel) > maxIdent {
		h := fnv.New128a()
		h.Write([]byte(ns))
		b.channel = "stampede_" + hex.EncodeToString(h.Sum(nil))
	}
	h := fnv.New64a()
	h.Write([]byte("stampede-migrate:" + ns))
	b.lockID = int64(h.Sum64())
	b.q = buildQueries(o)
	b.hub = hub.New(substrate{b})
	b.l.init()
	return b, nil
}

func buildQueries(o Options) queries {
	id := func(name string) string { return pgx.Identifier{o.Schema, o.TablePrefix + name}.Sanitize() }
	c, v := id("claims"), id("values")
	exp := func(p string) string { return "clock_timestamp() + " + p + "::bigint * interval '1 microsecond'" }
	vexp := "CASE WHEN $3::bigint > 0 THEN " + exp("$3") + " END"
	ins := `ins AS (
  INSERT INTO ` + c + ` AS c (key, holder, token, expires_at) VALUES ($1, $2, 1, ` + exp("$3") + `)
  ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, token = c.token + 1, expires_at = ` + exp("$3") + `
  WHERE c.holder IS NULL OR c.expires_at <= clock_timestamp()
  RETURNING token)`
	held := `SELECT false, token, (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint`
	commit := `INSERT INTO ` + v + ` (key, value, expires_at) SELECT $1, $2, ` + vexp + ` FROM c
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`
	// notifyFrom sends the wake-up for each row of the CTE (the released
	// claim row); with AsyncRelease it also turns synchronous_commit off
	// for this statement's transaction (set_config's is_local), so the
	// commit, and the NOTIFY sent after it, do not wait for the WAL flush.
	notifyFrom := func(ch, payload, cte string) string {
		if o.AsyncRelease {
			return `SELECT pg_notify(` + ch + `, ` + payload + `) FROM ` + cte + `, (SELECT set_config('synchronous_commit', 'off', true)) a`
		}
		return `SELECT pg_notify(` + ch + `, ` + payload + `) FROM ` + cte
	}
	return queries{
		claim: `WITH ` + ins + `
SELECT true, token, 0::bigint FROM ins
UNION ALL
` + held + `
FROM ` + c + ` WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)`,
		// claimRead also reads the value, with the statement's snapshot.
		// The claim itself sees the latest claim row (ON CONFLICT), which
		// may have been released after that snapshot: then a value
		// committed before the release is invisible to the read, so the
		// last column says whether the claim row's version in the
		// snapshot is the one the claim replaced (no change since).
		claimRead: `WITH snap AS (SELECT token, holder FROM ` + c + ` WHERE key = $1), ` + ins + `
SELECT true, ins.token, 0::bigint, val.value, val.value IS NOT NULL,
  EXISTS (SELECT 1 FROM snap WHERE snap.token + 1 = ins.token AND snap.holder IS NULL)
  OR (ins.token = 1 AND NOT EXISTS (SELECT 1 FROM snap))
FROM ins LEFT JOIN (SELECT value FROM ` + v + ` WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())) val ON true
UNION ALL
` + held + `, NULL::bytea, false, true
FROM ` + c + ` WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)`,
		extend: `UPDATE ` + c + ` SET expires_at = ` + exp("$4") + `
WHERE key = $1 AND token = $2 AND holder = $3 AND expires_at > clock_timestamp()`,
		release: `WITH r AS (
  UPDATE ` + c + ` SET holder = NULL, expires_at = clock_timestamp()
  WHERE key = $1 AND token = $2 AND holder = $3 AND expires_at > clock_timestamp()
  RETURNING key)
` + notifyFrom("$4", "$5", "r"),
		commit: `WITH c AS (
  SELECT 1 FROM ` + c + ` WHERE key = $1 AND token = $4 AND holder = $5 AND expires_at > clock_timestamp() FOR SHARE)
` + commit,
		// commitRelease: the release's UPDATE locks the claim row; the
		// value is written only if it released, and the NOTIFY is sent
		// (on commit) only then.
		commitRelease: `WITH c AS (
  UPDATE ` + c + ` SET holder = NULL, expires_at = clock_timestamp()
  WHERE key = $1 AND token = $4 AND holder = $5 AND expires_at > clock_timestamp()
  RETURNING key),
w AS (` + commit + `)
` + notifyFrom("$6", "$7", "c"),
		get: `SELECT value FROM ` + v + ` WHERE key = $1 AND (expires_at IS NULL OR expires_at > clock_timestamp())`,
		set: `INSERT INTO ` + v + ` (key, value, expires_at) VALUES ($1, $2, ` + vexp + `)
ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at`,
		del: `DELETE FROM ` + v + ` WHERE key = $1`,
		sweep: `DELETE FROM ` + v + ` WHERE key = ANY(ARRAY(
  SELECT key FROM ` + v + ` WHERE expires_at <= clock_timestamp() LIMIT $1 FOR UPDATE SKIP LOCKED))
AND expires_at <= clock_timestamp()`,
		notify: `SELECT pg_notify($1, $2)`,
		exists: `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL`,
		migrate: []string{
			`CREATE TABLE IF NOT EXISTS ` + c + ` (
  key text PRIMARY KEY,
  holder text,
  token bigint NOT NULL,
  expires_at timestamptz NOT NULL) WITH (fillfactor = 70)`,
			`CREATE TABLE IF NOT EXISTS ` + v + ` (
  key text PRIMARY KEY,
  value bytea NOT NULL,
  expires_at timestamptz)`,
			`CREATE INDEX IF NOT EXISTS ` + pgx.Identifier{o.TablePrefix + "values_expires_idx"}.Sanitize() +
				` ON ` + v + ` (expires_at) WHERE expires_at IS NOT NULL`,
		},
	}
}

// Migrate creates the schema (if missing), the tables and the index, if
// they do not exist yet. It is idempotent and safe to run from several
// processes at once (a transaction-scoped advisory lock serialises it).
// Backends run it on first use unless Options.SkipMigrate is set.
func (b *Backend) Migrate(ctx context.Context) error {
	if b.closed.Load() {
		return fmt.Errorf("postgres: migrate: %w", claim.ErrClosed)
	}
	id := func(name string) string { return pgx.Identifier{b.opt.Schema, name}.Sanitize() }
	var ok bool
	err := b.pool.QueryRow(ctx, b.q.exists, id(b.opt.TablePrefix+"claims"), id(b.opt.TablePrefix+"values"),
		id(b.opt.TablePrefix+"values_expires_idx")).Scan(&ok)
	if err == nil && !ok {
		err = pgx.BeginFunc(ctx, b.pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, b.lockID); err != nil {
				return err
			}
			var has bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)`, b.opt.Schema).Scan(&has); err != nil {
				return err
			}
			if !has {
				if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{b.opt.Schema}.Sanitize()); err != nil {
					return err
				}
			}
			for _, s := range b.q.migrate {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("postgres: migrate %s.%s*: %w", b.opt.Schema, b.opt.TablePrefix, err)
	}
	b.migrated.Store(true)
	return nil
}

// ensure runs Migrate once, on first use.
func (b *Backend) ensure(ctx context.Context) error {
	if b.opt.SkipMigrate || b.migrated.Load() {
		return nil
	}
	select {
	case b.migSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.migSem }()
	if b.migrated.Load() {
		return nil
	}
	return b.Migrate(ctx)
}

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         MinTTL,
		TTLGranularity: time.Microsecond,
		MaxValueLen:    b.opt.MaxValueLen,
		Broadcast:      true,
	}
}

// check validates key and the Backend's state, then makes sure the tables
// exist; it returns the encoded key.
func (b *Backend) check(ctx context.Context, op, key string) (string, error) {
	if err := claim.CheckKey(key); err != nil {
		return "", fmt.Errorf("postgres: %s: %w", op, err)
	}
	if b.closed.Load() {
		return "", fmt.Errorf("postgres: %s %q: %w", op, key, claim.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	return b.keys.Encode(key), nil
}

func (b *Backend) checkValue(op, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("postgres: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, b.opt.MaxValueLen); err != nil {
		return fmt.Errorf("postgres: %s %q: %w", op, key, err)
	}
	return nil
}

// micros rounds d up to whole microseconds.
func micros(d time.Duration) int64 { return int64((d + time.Microsecond - 1) / time.Microsecond) }

// leaseTTL rounds a lease TTL up to the granularity and minimum.
func leaseTTL(ttl time.Duration) time.Duration {
	ttl = time.Duration(micros(ttl)) * time.Microsecond
	return max(ttl, MinTTL)
}

func holderID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// TryClaim implements claim.Claimer: one INSERT … ON CONFLICT statement.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: the claim statement also
// reads the value. If the claim row was released after the statement's
// snapshot (a holder released while this claim waited for its row lock),
// a value it committed is not in that snapshot, so the value is read again
// with a second statement: one round trip, two in that race.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	enc, err := b.check(ctx, op, key)
	if err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	if err := b.ensure(ctx); err != nil {
		return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: %w", op, key, err)
	}
	ttl = leaseTTL(ttl)
	holder := holderID()
	start := time.Now()
	var (
		got, found bool
		snapshotOK = true
		token      int64
		remain     int64
		val        []byte
	)
	if read {
		err = b.pool.QueryRow(ctx, b.q.claimRead, enc, holder, micros(ttl)).Scan(&got, &token, &remain, &val, &found, &snapshotOK)
	} else {
		err = b.pool.QueryRow(ctx, b.q.claim, enc, holder, micros(ttl)).Scan(&got, &token, &remain)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// Held by a row committed after this statement's snapshot: the
		// remaining time is not known.
		return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: %w", op, key, &claim.HeldError{Key: key})
	}
	if err != nil {
		return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: %w", op, key, err)
	}
	if !got {
		return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: %w", op, key,
			&claim.HeldError{Key: key, Remaining: max(0, time.Duration(remain)*time.Microsecond)})
	}
	l := claim.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl, Deadline: start.Add(ttl)}
	if !snapshotOK {
		// The lease is ours; only the read was too early.
		val, found = nil, true
		err = b.pool.QueryRow(ctx, b.q.get, enc).Scan(&val)
		if errors.Is(err, pgx.ErrNoRows) {
			found, err = false, nil
		}
		if err != nil {
			// The caller gets no lease, so give it back (best effort: if
			// this fails too, it expires).
			_ = b.Release(ctx, l)
			return claim.Lease{}, nil, false, fmt.Errorf("postgres: %s %q: read after claim: %w", op, key, err)
		}
	}
	if !found {
		return l, nil, false, nil
	}
	return l, nonNil(val), true, nil
}

// Extend implements claim.Claimer.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	enc, err := b.check(ctx, "extend", l.Key)
	if err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("postgres: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("postgres: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	if err := b.ensure(ctx); err != nil {
		return claim.Lease{}, fmt.Errorf("postgres: extend %q: %w", l.Key, err)
	}
	ttl = leaseTTL(ttl)
	tag, err := b.pool.Exec(ctx, b.q.extend, enc, int64(l.Token), l.Holder, micros(ttl))
	if err != nil {
		return claim.Lease{}, fmt.Errorf("postgres: extend %q: %w", l.Key, err)
	}
	if tag.RowsAffected() != 1 {
		return claim.Lease{}, fmt.Errorf("postgres: extend %q: %w", l.Key, claim.ErrLost)
	}
	l.TTL = ttl
	l.Deadline = start.Add(ttl)
	return l, nil
}

// Release implements claim.Claimer: compare-and-clear plus NOTIFY in one
// statement (the token counter stays).
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	enc, err := b.check(ctx, "release", l.Key)
	if err != nil {
		return err
	}
	if err := b.ensure(ctx); err != nil {
		return fmt.Errorf("postgres: release %q: %w", l.Key, err)
	}
	tag, err := b.pool.Exec(ctx, b.q.release, enc, int64(l.Token), l.Holder, b.channel, keyPayload(enc))
	if err != nil {
		return fmt.Errorf("postgres: release %q: %w", l.Key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("postgres: release %q: %w", l.Key, claim.ErrLost)
	}
	return nil
}

// Commit implements claim.Claimer: one statement that writes the value
// only while the lease is current.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	enc, err := b.check(ctx, "commit", l.Key)
	if err != nil {
		return err
	}
	if err := b.checkValue("commit", l.Key, val, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("postgres: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	if err := b.ensure(ctx); err != nil {
		return fmt.Errorf("postgres: commit %q: %w", l.Key, err)
	}
	tag, err := b.pool.Exec(ctx, b.q.commit, enc, nonNil(val), micros(ttl), int64(l.Token), l.Holder)
	if err != nil {
		return fmt.Errorf("postgres: commit %q: %w", l.Key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("postgres: commit %q: %w", l.Key, claim.ErrLost)
	}
	b.maybeSweep()
	return nil
}

// CommitRelease implements claim.CommitReleaser: one statement that
// releases the lease (compare by token and holder), writes the value only
// if it did, and NOTIFYs the key's waiters on commit.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	enc, err := b.check(ctx, "commit-release", l.Key)
	if err != nil {
		return err
	}
	if err := b.checkValue("commit-release", l.Key, val, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("postgres: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	if err := b.ensure(ctx); err != nil {
		return fmt.Errorf("postgres: commit-release %q: %w", l.Key, err)
	}
	tag, err := b.pool.Exec(ctx, b.q.commitRelease, enc, nonNil(val), micros(ttl), int64(l.Token), l.Holder, b.channel, keyPayload(enc))
	if err != nil {
		return fmt.Errorf("postgres: commit-release %q: %w", l.Key, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("postgres: commit-release %q: %w", l.Key, claim.ErrLost)
	}
	b.maybeSweep()
	return nil
}

// Close implements claim.Backend. It closes the LISTEN connection, ends
// every subscription and, for a Backend opened by URL, closes its pool. A
// pool passed to New stays open. Leases are not released.
func (b *Backend) Close() error {
	b.bgMu.Lock()
	if b.closed.Swap(true) {
		b.bgMu.Unlock()
		return nil
	}
	b.bgMu.Unlock()
	b.cancel()
	b.wg.Wait()
	b.hub.Close()
	b.stopTopics()
	if b.ownPool {
		b.pool.Close()
	}
	return nil
}
