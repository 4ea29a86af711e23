package postgres

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim"
)

// queries are the SQL statements on the tables of one Schema and
// TablePrefix (the tables themselves: migrate).
type queries struct {
	claim, extend, release, commit, get, set, del, sweep, notify string
	claimRead, commitRelease, revoke                             string
	getMany, claimMany, commitReleaseMany, releaseMany           string // batch.go
	lockKey, enqueue, dequeue, handOff                           string // queue.go
	tables                                                       string
	tableArgs                                                    []any // the names tables looks up: claims, values, queue, indexes
	migrate                                                      []string
}

func buildQueries(o Options) queries {
	id := func(name string) string { return pgx.Identifier{o.Schema, o.TablePrefix + name}.Sanitize() }
	c, v, fq := id("claims"), id("values"), id("queue")
	exp := func(p string) string { return "clock_timestamp() + " + p + "::bigint * interval '1 microsecond'" }
	vexp := "CASE WHEN $3::bigint > 0 THEN " + exp("$3") + " END"
	unexpired := "(expires_at IS NULL OR expires_at > clock_timestamp())"
	upsert := "\nON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
	// current: key $1's claim row, while the lease (token tok, holder h) is current.
	current := func(tok, h string) string {
		return "key = $1 AND token = " + tok + " AND holder = " + h + " AND expires_at > clock_timestamp()"
	}
	release := func(tok, h string) string {
		return `UPDATE ` + c + ` SET holder = NULL, expires_at = clock_timestamp()
  WHERE ` + current(tok, h) + `
  RETURNING key)`
	}
	// claimInto inserts the claim rows src selects (key, holder) or takes
	// over a free or expired lease's row, bumping its token; it returns
	// the key and token of each row claimed.
	claimInto := func(src string) string {
		return `INSERT INTO ` + c + ` AS c (key, holder, token, expires_at) ` + src + `
  ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, token = c.token + 1, expires_at = ` + exp("$3") + `
  WHERE c.holder IS NULL OR c.expires_at <= clock_timestamp()
  RETURNING key, token`
	}
	ins := `ins AS (
  ` + claimInto(`VALUES ($1, $2, 1, `+exp("$3")+`)`) + `)`
	// remaining is the remaining lifetime, in microseconds, of the lease
	// in the claim row whose columns are qualified by q.
	remaining := func(q string) string {
		return `(extract(epoch FROM ` + q + `expires_at - clock_timestamp()) * 1000000)::bigint`
	}
	held := `SELECT false, token, ` + remaining("")
	commit := `INSERT INTO ` + v + ` (key, value, expires_at) SELECT $1, $2, ` + vexp + ` FROM c` + upsert
	// async, with AsyncRelease, turns synchronous_commit off for the
	// statement's transaction (set_config's is_local) as a FROM item, so
	// the commit, and the NOTIFY sent after it, do not wait for the WAL
	// flush.
	async := ""
	if o.AsyncRelease {
		async = `, (SELECT set_config('synchronous_commit', 'off', true)) a`
	}
	// notifyFrom sends the wake-up for each row of the CTE (the released
	// claim row), under async.
	notifyFrom := func(ch, payload, cte string) string {
		return `SELECT pg_notify(` + ch + `, ` + payload + `) FROM ` + cte + async
	}
	// wakePayload is the SQL expression of a CommitRelease's NOTIFY
	// payload for the value val stored under the encoded key key:
	// "v" key " " base64(val) when val is at most maxMessage(key) bytes
	// long (so the payload fits in pg_notify's limit), else the expression
	// otherwise. encode's base64 breaks lines every 76 characters: they are
	// taken out, so the payload is as long as maxMessage reckons. With
	// NoValueWake, always otherwise.
	wakePayload := func(key, val, otherwise string) string {
		if o.NoValueWake {
			return otherwise
		}
		return `CASE WHEN octet_length(` + val + `) <= (` + fmt.Sprint(maxPayload-2) + ` - octet_length(` + key + `)) / 4 * 3
  THEN '` + string(tagValue) + `' || ` + key + ` || ' ' || translate(encode(` + val + `, 'base64'), E'\n', '')
  ELSE ` + otherwise + ` END`
	}
	// qexp is the instant µs microseconds after t.
	qexp := func(t, us string) string { return t + " + " + us + " * interval '1 microsecond'" }
	// grantPayload is a grant's NOTIFY payload (see tagGrant) for the
	// claim row returned by the CTE u (holder, token, ttl) of key $1.
	grantPayload := func(u string) string {
		return `'` + string(tagGrant) + `' || $1::text || ' ' || ` + u + `.token || ' ' || ` + u + `.ttl || ' ' || ` + u + `.holder`
	}
	// pass is the CTEs w (the first live waiter that qualifies by
	// waiter) and u, the UPDATE that passes key $1's lease, current and
	// qualified by lease, on to w (token + 1, w's TTL from now) or, with
	// no such waiter, releases it; u returns the row's new holder (NULL
	// if released), token and TTL.
	pass := func(waiter, lease string) string {
		return `w AS (
  SELECT w.holder, w.ttl FROM ` + fq + ` w, now WHERE w.key = $1::text AND w.expires_at > now.t AND ` + waiter + `
  ORDER BY w.seq LIMIT 1),
u AS (
  UPDATE ` + c + ` c SET holder = w.holder, token = c.token + (w.holder IS NOT NULL)::int,
    expires_at = ` + qexp("now.t", "coalesce(w.ttl, 0)") + `
  FROM now LEFT JOIN w ON true
  WHERE c.key = $1::text AND ` + lease + ` AND c.expires_at > now.t
  RETURNING c.holder, c.token, w.ttl)`
	}
	// releaseReq is the CTEs cur (the rows of the CTE req's (key, token,
	// holder) whose lease is current, locked in key order: see claimMany)
	// and r (those leases released, returning their keys), which
	// commitReleaseMany and releaseMany share.
	releaseReq := `cur AS (
  SELECT c.key FROM ` + c + ` c JOIN req ON req.key = c.key
  WHERE c.token = req.token AND c.holder = req.holder AND c.expires_at > clock_timestamp()
  ORDER BY c.key FOR NO KEY UPDATE OF c),
r AS (
  UPDATE ` + c + ` c SET holder = NULL, expires_at = clock_timestamp() FROM cur WHERE c.key = cur.key
  RETURNING c.key)`
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
FROM ins LEFT JOIN (SELECT value FROM ` + v + ` WHERE key = $1 AND ` + unexpired + `) val ON true
UNION ALL
` + held + `, NULL::bytea, false, true
FROM ` + c + ` WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM ins)`,
		extend: `UPDATE ` + c + ` SET expires_at = ` + exp("$4") + `
WHERE ` + current("$2", "$3"),
		release: `WITH r AS (
  ` + release("$2", "$3") + `
` + notifyFrom("$4", "$5", "r"),
		commit: `WITH c AS (
  SELECT 1 FROM ` + c + ` WHERE ` + current("$4", "$5") + ` FOR SHARE)
` + commit,
		// commitRelease: the release's UPDATE locks the claim row; the
		// value is written only if it released, and the NOTIFY is sent
		// (on commit) only then, with the value if it fits (else the
		// payload $7, the key's).
		commitRelease: `WITH c AS (
  ` + release("$4", "$5") + `,
w AS (` + commit + `)
` + notifyFrom("$6", wakePayload("$1::text", "$2::bytea", "$7"), "c"),
		// revoke ends whatever lease key $1 has and bumps the token (a
		// key without a claim row gets one, token 1), and sends the
		// wake-up on commit; Revoke runs the value's write (set or del)
		// after it in the same transaction. The upsert takes the row
		// whether or not it is held: a lease granted after the
		// statement's snapshot is ended too (the row is re-read once its
		// lock is free), and a Commit in progress, which holds the row's
		// share lock, finishes first. The token moves (and the row
		// exists) so that a claimRead whose snapshot predates this
		// transaction's commit, and whose claim waited for the row until
		// it, sees that the row changed since its snapshot and reads the
		// value again: with the token left as it was, a free key's claim
		// looked unchanged and read the value from before the
		// revocation, and a key without a row was not locked at all, so
		// the claim went ahead of the revocation, which did not end it
		// (a holder then committed a stale value over RevokeSet's).
		revoke: `WITH r AS (
  INSERT INTO ` + c + ` AS c (key, holder, token, expires_at) VALUES ($1, NULL, 1, clock_timestamp())
  ON CONFLICT (key) DO UPDATE SET holder = NULL, token = c.token + 1, expires_at = clock_timestamp())
SELECT pg_notify($2, $3)`,
		// lockKey, the first statement of every queue operation (Enqueue,
		// Dequeue, HandOff), locks key $1's claim row, inserting a free
		// one (token 0) if the key has none: ON CONFLICT DO UPDATE locks
		// the row even when its WHERE is false, and so changes nothing.
		// The operation's second statement, in the same transaction (one
		// pipeline), then starts with a snapshot taken after the lock was
		// granted, so it sees everything the key's previous queue
		// operation committed; a single statement could not (it would read
		// the queue with the snapshot it took before waiting). Every other
		// writer of the row (TryClaim, Extend, Release, Commit) waits for
		// the lock too.
		lockKey: `INSERT INTO ` + c + ` AS c (key, holder, token, expires_at) VALUES ($1::text, NULL, 0, clock_timestamp())
ON CONFLICT (key) DO UPDATE SET holder = c.holder WHERE false`,
		// enqueue is Queuer.Enqueue's steps 1 to 5 for key $1, holder $2,
		// ttl $3 (µs), once lockKey holds the row. cur is the claim row,
		// first the first live waiter, g whom the key is granted to now
		// (if no lease is live: holder $2 if it is first or the queue is
		// empty, else the first waiter), d drops the expired entries
		// (holder $2's is renewed in place instead, below) and the
		// grantee's, ins adds or renews holder $2's entry (a new seq, so
		// the tail, if its entry had expired). One row: whether $2 holds
		// the key, the token, the lease's remaining µs, and the grant's
		// NOTIFY (step 4), sent on commit.
		enqueue: `WITH now AS (SELECT clock_timestamp() AS t),
cur AS (
  SELECT c.holder, c.token, c.expires_at, c.holder IS NOT NULL AND c.expires_at > now.t AS live
  FROM ` + c + ` c, now WHERE c.key = $1::text),
first AS (
  SELECT w.holder, w.ttl FROM ` + fq + ` w, now WHERE w.key = $1::text AND w.expires_at > now.t ORDER BY w.seq LIMIT 1),
g AS (
  SELECT coalesce(first.holder, $2::text) AS holder,
    CASE WHEN first.holder IS NULL OR first.holder = $2::text THEN $3::bigint ELSE first.ttl END AS ttl
  FROM cur LEFT JOIN first ON true WHERE NOT cur.live),
u AS (
  UPDATE ` + c + ` c SET holder = g.holder, token = c.token + 1, expires_at = ` + qexp("now.t", "g.ttl") + `
  FROM g, now WHERE c.key = $1::text AND (c.holder IS NULL OR c.expires_at <= now.t)
  RETURNING c.holder, c.token, g.ttl),
d AS (
  DELETE FROM ` + fq + ` w USING now WHERE w.key = $1::text
  AND ((w.holder <> $2::text AND w.expires_at <= now.t) OR w.holder IN (SELECT holder FROM g))),
ins AS (
  INSERT INTO ` + fq + ` AS w (key, holder, ttl, expires_at)
  SELECT $1::text, $2::text, $3::bigint, ` + qexp("now.t", "$3::bigint") + ` FROM now
  WHERE NOT EXISTS (SELECT 1 FROM g WHERE g.holder = $2::text)
    AND NOT EXISTS (SELECT 1 FROM cur WHERE cur.live AND cur.holder = $2::text)
  ON CONFLICT (key, holder) DO UPDATE SET ttl = excluded.ttl, expires_at = excluded.expires_at,
    seq = CASE WHEN w.expires_at <= (SELECT t FROM now) THEN excluded.seq ELSE w.seq END)
SELECT coalesce(u.holder = $2::text, cur.live AND cur.holder = $2::text), coalesce(u.token, cur.token),
  coalesce(u.ttl, ` + remaining("cur.") + `),
  CASE WHEN u.holder <> $2::text THEN pg_notify($4::text, ` + grantPayload("u") + `)::text END
FROM cur LEFT JOIN u ON true`,
		// dequeue drops holder $2's entry from key $1's queue (and the
		// expired ones); if $2 holds the key's live lease, it hands it
		// over as handOff does (the NOTIFY: the grant, or the wake-up $4
		// if nobody is queued).
		dequeue: `WITH now AS (SELECT clock_timestamp() AS t),
` + pass("w.holder <> $2::text", "c.holder = $2::text") + `,
d AS (
  DELETE FROM ` + fq + ` w USING now WHERE w.key = $1::text
  AND (w.holder = $2::text OR w.expires_at <= now.t OR w.holder IN (SELECT holder FROM u)))
SELECT pg_notify($3::text, CASE WHEN u.holder IS NULL THEN $4::text ELSE ` + grantPayload("u") + ` END)::text FROM u`,
		// handOff ends the lease of key $1 (token $2, holder $3) if it is
		// current and grants the key, in the same UPDATE, to the first
		// live waiter (its entry is deleted, with the expired ones), or
		// releases it if nobody is queued. One row if the lease was
		// current: the new holder (NULL if released), its token and TTL;
		// the NOTIFY, sent on commit, is the grant or the wake-up $5.
		handOff: `WITH now AS (SELECT clock_timestamp() AS t),
` + pass("true", "c.token = $2::bigint AND c.holder = $3::text") + `,
d AS (
  DELETE FROM ` + fq + ` w USING now, u WHERE w.key = $1::text AND (w.expires_at <= now.t OR w.holder = u.holder))
SELECT u.holder, u.token, coalesce(u.ttl, 0),
  pg_notify($4::text, CASE WHEN u.holder IS NULL THEN $5::text ELSE ` + grantPayload("u") + ` END)::text
FROM u`,
		// getMany: get of every key in the array $1.
		getMany: `SELECT key, value FROM ` + v + ` WHERE key = ANY($1::text[]) AND ` + unexpired,
		// claimMany: claimRead of each (key, holder) of the arrays $1, $2,
		// one row per key in the order given (i). The rows are claimed in
		// key order, as commitReleaseMany locks them, so two batches
		// never wait for each other in a cycle. A held key's remaining
		// time comes from its row in the statement's snapshot, as in
		// claim (0 if the row is not in it); the last column is
		// claimRead's: whether the value read is as of the claim.
		claimMany: `WITH req AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS req (key, holder, i)),
snap AS (SELECT key, token, holder, expires_at FROM ` + c + ` WHERE key = ANY($1::text[])),
ins AS (
  ` + claimInto(`SELECT key, holder, 1, `+exp("$3")+` FROM req ORDER BY key`) + `)
SELECT req.i, ins.token IS NOT NULL, coalesce(ins.token, 0), coalesce(` + remaining("snap.") + `, 0),
  val.value, val.value IS NOT NULL,
  ins.token IS NULL OR coalesce(snap.token + 1 = ins.token AND snap.holder IS NULL, snap.key IS NULL AND ins.token = 1)
FROM req LEFT JOIN ins ON ins.key = req.key LEFT JOIN snap ON snap.key = req.key
LEFT JOIN ` + v + ` val ON val.key = req.key AND ins.token IS NOT NULL
  AND (val.expires_at IS NULL OR val.expires_at > clock_timestamp())`,
		// commitReleaseMany: commitRelease of each (key, token, holder,
		// value, ttl) of the arrays $1…$5, returning the keys released
		// (the others' leases were not current). cur locks the current
		// leases' rows in key order (see claimMany) before any is
		// released, then the values are written in key order, and the
		// NOTIFY of each released key is sent on commit, with its value
		// as commitRelease's.
		commitReleaseMany: `WITH req AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[]) AS req (key, token, holder, value, ttl)),
` + releaseReq + `,
w AS (
  INSERT INTO ` + v + ` (key, value, expires_at)
  SELECT req.key, req.value, CASE WHEN req.ttl > 0 THEN ` + exp("req.ttl") + ` END
  FROM req JOIN r ON r.key = req.key ORDER BY req.key` + upsert + `)
SELECT r.key, pg_notify($6, ` + wakePayload("r.key", "req.value", `'`+string(tagKey)+`' || r.key`) + `)
FROM r JOIN req ON req.key = r.key` + async,
		// releaseMany: release of each (key, token, holder) of the
		// arrays $1…$3, returning the keys released (the others' leases
		// were not current): the current leases' rows locked in key
		// order (see claimMany), then released, and the NOTIFY of each
		// released key sent on commit, as release's.
		releaseMany: `WITH req AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[]) AS req (key, token, holder)),
` + releaseReq + `
SELECT r.key, pg_notify($4, '` + string(tagKey) + `' || r.key) FROM r` + async,
		get: `SELECT value FROM ` + v + ` WHERE key = $1 AND ` + unexpired,
		set: `INSERT INTO ` + v + ` (key, value, expires_at) VALUES ($1, $2, ` + vexp + `)` + upsert,
		del: `DELETE FROM ` + v + ` WHERE key = $1`,
		sweep: `DELETE FROM ` + v + ` WHERE key = ANY(ARRAY(
  SELECT key FROM ` + v + ` WHERE expires_at <= clock_timestamp() LIMIT $1 FOR UPDATE SKIP LOCKED))
AND expires_at <= clock_timestamp()`,
		notify: `SELECT pg_notify($1, $2)`,
		// tables: whether the tables and the indexes exist, whether this
		// role has the privileges the driver uses on them (NULL, so
		// false, if they do not exist), and the role.
		tables: `WITH t (c, v, i, q, qi) AS (SELECT to_regclass($1), to_regclass($2), to_regclass($3), to_regclass($4), to_regclass($5))
SELECT c IS NOT NULL AND v IS NOT NULL AND i IS NOT NULL AND q IS NOT NULL AND qi IS NOT NULL,
  coalesce((SELECT bool_and(has_table_privilege(r, p)) FROM (VALUES
    (c, 'SELECT'), (c, 'INSERT'), (c, 'UPDATE'), (v, 'SELECT'), (v, 'INSERT'), (v, 'UPDATE'), (v, 'DELETE'),
    (q, 'SELECT'), (q, 'INSERT'), (q, 'UPDATE'), (q, 'DELETE')) x (r, p)), false),
  current_user::text
FROM t`,
		tableArgs: []any{c, v, id("values_expires_idx"), fq, id("queue_seq_idx")},
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
			// The fair queue (queue.go): one row per waiter, in arrival
			// order (seq; an identity, so INSERT alone is needed, no
			// privilege on a sequence); ttl in µs. Renewals change
			// expires_at only, which no index holds (HOT updates).
			`CREATE TABLE IF NOT EXISTS ` + fq + ` (
  key text NOT NULL,
  holder text NOT NULL,
  seq bigint GENERATED BY DEFAULT AS IDENTITY,
  ttl bigint NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (key, holder)) WITH (fillfactor = 70)`,
			`CREATE INDEX IF NOT EXISTS ` + pgx.Identifier{o.TablePrefix + "queue_seq_idx"}.Sanitize() +
				` ON ` + fq + ` (key, seq)`,
		},
	}
}

// Migrate creates the schema (if missing), the tables and the index of
// c's Schema and TablePrefix, if they do not exist yet. It is idempotent
// and safe to run from several processes at once (a transaction-scoped
// advisory lock serialises it). Unless Options.SkipMigrate is set, a
// Client runs it when New or Open checks the server, or on first use when
// made lazily; with SkipMigrate, New and Open fail on missing tables, so
// run Migrate from a Client made with Options.Client.Lazy (lazy=true). c
// must come from New or claim.Open of a postgres:// URL.
func Migrate(ctx context.Context, c *claim.Client) error {
	b, err := of("migrate", c)
	if err != nil {
		return err
	}
	if err := b.migrate(ctx); err != nil {
		return fmt.Errorf("postgres: %w", b.classify(err))
	}
	return nil
}

// tables reads whether the tables exist, and whether this role (named
// role) may use them: one statement.
func (b *backend) tables(ctx context.Context) (exist, usable bool, role string, err error) {
	err = b.pool.QueryRow(ctx, b.q.tables, b.q.tableArgs...).Scan(&exist, &usable, &role)
	return exist, usable, role, err
}

func (b *backend) migrate(ctx context.Context) error {
	ok, _, _, err := b.tables(ctx)
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
		return fmt.Errorf("migrate %s.%s*: %w", b.opt.Schema, b.opt.TablePrefix, err)
	}
	b.migrated.Store(true)
	return nil
}

// ensure runs migrate once, on first use.
func (b *backend) ensure(ctx context.Context) error {
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
	return b.migrate(ctx)
}
