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
	claimRead, commitRelease                                     string
	tables                                                       string
	tableArgs                                                    []any // the names tables looks up: claims, values, index
	migrate                                                      []string
}

func buildQueries(o Options) queries {
	id := func(name string) string { return pgx.Identifier{o.Schema, o.TablePrefix + name}.Sanitize() }
	c, v := id("claims"), id("values")
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
	ins := `ins AS (
  INSERT INTO ` + c + ` AS c (key, holder, token, expires_at) VALUES ($1, $2, 1, ` + exp("$3") + `)
  ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, token = c.token + 1, expires_at = ` + exp("$3") + `
  WHERE c.holder IS NULL OR c.expires_at <= clock_timestamp()
  RETURNING token)`
	held := `SELECT false, token, (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::bigint`
	commit := `INSERT INTO ` + v + ` (key, value, expires_at) SELECT $1, $2, ` + vexp + ` FROM c` + upsert
	// notifyFrom sends the wake-up for each row of the CTE (the released
	// claim row); with AsyncRelease it also turns synchronous_commit off
	// for this statement's transaction (set_config's is_local), so the
	// commit, and the NOTIFY sent after it, do not wait for the WAL flush.
	notifyFrom := func(ch, payload, cte string) string {
		s := `SELECT pg_notify(` + ch + `, ` + payload + `) FROM ` + cte
		if o.AsyncRelease {
			s += `, (SELECT set_config('synchronous_commit', 'off', true)) a`
		}
		return s
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
		// (on commit) only then.
		commitRelease: `WITH c AS (
  ` + release("$4", "$5") + `,
w AS (` + commit + `)
` + notifyFrom("$6", "$7", "c"),
		get: `SELECT value FROM ` + v + ` WHERE key = $1 AND ` + unexpired,
		set: `INSERT INTO ` + v + ` (key, value, expires_at) VALUES ($1, $2, ` + vexp + `)` + upsert,
		del: `DELETE FROM ` + v + ` WHERE key = $1`,
		sweep: `DELETE FROM ` + v + ` WHERE key = ANY(ARRAY(
  SELECT key FROM ` + v + ` WHERE expires_at <= clock_timestamp() LIMIT $1 FOR UPDATE SKIP LOCKED))
AND expires_at <= clock_timestamp()`,
		notify: `SELECT pg_notify($1, $2)`,
		// tables: whether the tables and the index exist, whether this
		// role has the privileges the driver uses on them (NULL, so
		// false, if they do not exist), and the role.
		tables: `WITH t (c, v, i) AS (SELECT to_regclass($1), to_regclass($2), to_regclass($3))
SELECT c IS NOT NULL AND v IS NOT NULL AND i IS NOT NULL,
  coalesce((SELECT bool_and(has_table_privilege(r, p)) FROM (VALUES
    (c, 'SELECT'), (c, 'INSERT'), (c, 'UPDATE'), (v, 'SELECT'), (v, 'INSERT'), (v, 'UPDATE'), (v, 'DELETE')) x (r, p)), false),
  current_user::text
FROM t`,
		tableArgs: []any{c, v, id("values_expires_idx")},
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
