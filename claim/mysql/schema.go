package mysql

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/stampede-go/stampede/claim"
)

// nowUS is the server's clock in microseconds since the Unix epoch, the
// same for the whole statement (UTC_TIMESTAMP(6) is the statement's start
// time, whatever the session's time zone). Lease and value expiries are
// stored and judged in it: only the server's clock decides.
const nowUS = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(6))"

// queries are the SQL statements on the tables of one TablePrefix. ? are
// parameters, interpolated by the client (InterpolateParams): every
// statement is one round trip.
type queries struct {
	claims, values, queue                                       string
	claim, claimRead, extend, release, commit, commitRelease    string
	revoke, revokeDel, notify, poll, get, set, del, sweep, ping string
	pollValue                                                   string
	tables                                                      string
	migrate                                                     []string
	getMany                                                     string // batch.go
	pollMany                                                    string // batch.go
}

// quote quotes a table name (the prefix is checked: letters, digits, _ $).
func quote(name string) string { return "`" + name + "`" }

// The wake-up counter (ev) of a claim row: every Release, Revoke, Notify
// and hand-over moves it to the next even number (evNext), a
// CommitRelease to the next odd one (evCommitted), so a poll can tell
// that the last wake-up was a CommitRelease's and carry the value it
// stored (pollValue). Nothing lowers it.
const (
	evNext      = `ev + 2 - ev % 2`
	evCommitted = `ev + 1 + ev % 2`
)

// maxWakeValue bounds the values a poll carries (driver.ValueNotifier):
// a waiter reads a larger one.
const maxWakeValue = 64 << 10

func buildQueries(prefix string) queries {
	c, v, fq := quote(prefix+"claims"), quote(prefix+"values"), quote(prefix+"queue")
	// current: the claim row of key ? while the lease (token ?, holder ?)
	// is current.
	const current = `k = ? AND token = ? AND holder = ? AND expires > ` + nowUS
	// vexp is a value's expiry for a TTL of ? µs (0: none).
	vexp := func(p string) string { return "IF(" + p + " > 0, " + nowUS + " + " + p + ", NULL)" }
	const upsertValue = ` ON DUPLICATE KEY UPDATE v = VALUES(v), expires = VALUES(expires)`
	// claim: INSERT … ON DUPLICATE KEY UPDATE that takes the row only if
	// it has no holder or its lease expired, and then bumps the token.
	// MySQL evaluates the assignments left to right, each seeing the
	// columns the earlier ones set: token and holder are judged on the
	// old row, expires on the new holder. (The same holder claiming again
	// while its lease is live, a retried TryClaim whose first attempt
	// landed, renews its own lease and keeps the token.) RETURNING gives
	// the row as it is after the statement: ours iff holder is ours and
	// its remaining time is exactly the TTL asked (the statement's clock
	// is one instant).
	claim := `INSERT INTO ` + c + ` (k, holder, token, expires, ev) VALUES (?, ?, 1, ` + nowUS + ` + ?, 0)
ON DUPLICATE KEY UPDATE
  token = IF(holder IS NULL OR expires <= ` + nowUS + `, token + 1, token),
  holder = IF(holder IS NULL OR expires <= ` + nowUS + `, VALUES(holder), holder),
  expires = IF(holder <=> VALUES(holder), VALUES(expires), expires)
RETURNING token, holder, expires - ` + nowUS
	// compound wraps statements in one transaction, one round trip: an
	// anonymous block (MariaDB's BEGIN NOT ATOMIC) that rolls back and
	// re-raises on any error.
	compound := func(body ...string) string {
		return "BEGIN NOT ATOMIC\n  DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END;\n  START TRANSACTION;\n  " +
			strings.Join(body, ";\n  ") + ";\n  COMMIT;\nEND"
	}
	lost := `IF ROW_COUNT() = 0 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '` + lostMessage + `'; END IF`
	// endLease ends key ?'s lease, whoever holds it, bumping the wake-up
	// counter (a row is made, token 0, for a key that has none).
	endLease := `INSERT INTO ` + c + ` (k, holder, token, expires, ev) VALUES (?, NULL, 0, ` + nowUS + `, 2)
  ON DUPLICATE KEY UPDATE holder = NULL, expires = ` + nowUS + `, ev = ` + evNext
	set := `INSERT INTO ` + v + ` (k, v, expires) VALUES (?, ?, ` + vexp("?") + `)` + upsertValue
	return queries{
		claims: c, values: v, queue: fq,
		claim: claim,
		// claimRead: claim, and the key's value in the same statement,
		// read after the claim row was written (and so locked): a
		// CommitRelease that released the row committed its value in the
		// same transaction, before the lock was granted. The subquery
		// names the claim row's k, so it runs per row, after the row is
		// locked; with the key as a constant MariaDB ran it first, taking
		// a share lock on the value's gap before waiting for the claim
		// row, the reverse of CommitRelease's order: InnoDB deadlocks in
		// every herd on a new key (TestClaimReadLockOrder).
		claimRead: strings.Replace(claim, "\nRETURNING token, holder, expires - "+nowUS,
			"\nRETURNING token, holder, expires - "+nowUS+", (SELECT v FROM "+v+" WHERE "+v+".k = "+c+".k AND ("+v+".expires IS NULL OR "+v+".expires > "+nowUS+") LOCK IN SHARE MODE)", 1),
		extend:  `UPDATE ` + c + ` SET expires = ` + nowUS + ` + ? WHERE ` + current,
		release: `UPDATE ` + c + ` SET holder = NULL, expires = ` + nowUS + `, ev = ` + evNext + ` WHERE ` + current,
		// commit writes the value only while the lease is current: the
		// claim row is read with a share lock, so a takeover or a Revoke
		// waits for the commit (and then replaces what it wrote), or the
		// commit waits for it (and finds the lease gone).
		commit: `INSERT INTO ` + v + ` (k, v, expires) SELECT ?, ?, ` + vexp("?") + ` FROM ` + c + ` WHERE ` + current + ` LOCK IN SHARE MODE` + upsertValue,
		// commitRelease: release (or signal lost) and write, one transaction.
		commitRelease: compound(
			`UPDATE `+c+` SET holder = NULL, expires = `+nowUS+`, ev = `+evCommitted+` WHERE `+current,
			lost,
			set),
		revoke:    compound(endLease, set),
		revokeDel: compound(endLease, `DELETE FROM `+v+` WHERE k = ?`),
		notify:    `INSERT INTO ` + c + ` (k, holder, token, expires, ev) VALUES (?, NULL, 0, ` + nowUS + `, 2) ON DUPLICATE KEY UPDATE ev = ` + evNext,
		poll:      `SELECT holder, token, ev, expires - ` + nowUS + ` FROM ` + c + ` WHERE k = ?`,
		// pollValue is poll plus, when asked (the first ?) and the wake-up
		// counter is odd (a CommitRelease set it) and differs from the
		// one the previous poll saw (the second ?), the key's unexpired
		// value if it is at most maxWakeValue bytes long, and whether
		// there is one: one consistent read of both tables, so the value
		// is the one the counter's CommitRelease stored (or a later
		// Set's).
		pollValue: `SELECT c.holder, c.token, c.ev, c.expires - ` + nowUS + `, w.v, w.k IS NOT NULL FROM ` + c + ` c
LEFT JOIN ` + v + ` w ON ? AND c.ev % 2 = 1 AND c.ev <> ? AND w.k = c.k
  AND (w.expires IS NULL OR w.expires > ` + nowUS + `) AND LENGTH(w.v) <= ` + strconv.Itoa(maxWakeValue) + `
WHERE c.k = ?`,
		get:   `SELECT v FROM ` + v + ` WHERE k = ? AND (expires IS NULL OR expires > ` + nowUS + `)`,
		set:   set,
		del:   `DELETE FROM ` + v + ` WHERE k = ?`,
		sweep: `DELETE FROM ` + v + ` WHERE expires <= ` + nowUS + ` LIMIT ?`,
		// ping: statements that change nothing but need every privilege
		// the driver uses, one round trip.
		ping: "BEGIN NOT ATOMIC\n  " + strings.Join([]string{
			`INSERT INTO ` + c + ` SELECT * FROM ` + c + ` WHERE FALSE`,
			`UPDATE ` + c + ` SET ev = ev WHERE k = ''`,
			`INSERT INTO ` + v + ` SELECT * FROM ` + v + ` WHERE FALSE`,
			`UPDATE ` + v + ` SET expires = expires WHERE k = ''`,
			`DELETE FROM ` + v + ` WHERE k = ''`,
			`INSERT INTO ` + fq + ` SELECT * FROM ` + fq + ` WHERE FALSE`,
			`UPDATE ` + fq + ` SET expires = expires WHERE k = ''`,
			`DELETE FROM ` + fq + ` WHERE k = ''`,
		}, ";\n  ") + ";\nEND",
		// tables: how many of the three tables exist (and are visible to
		// the user), the server's version and max_allowed_packet.
		tables: `SELECT (SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name IN (?, ?, ?)),
  VERSION(), @@max_allowed_packet, DATABASE() IS NOT NULL`,
		migrate: []string{
			`CREATE TABLE IF NOT EXISTS ` + c + ` (
  k VARBINARY(255) NOT NULL PRIMARY KEY,
  holder VARBINARY(64) NULL,
  token BIGINT UNSIGNED NOT NULL,
  expires BIGINT NOT NULL,
  ev BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB`,
			`CREATE TABLE IF NOT EXISTS ` + v + ` (
  k VARBINARY(255) NOT NULL PRIMARY KEY,
  v LONGBLOB NOT NULL,
  expires BIGINT NULL,
  KEY expires_idx (expires)
) ENGINE=InnoDB`,
			`CREATE TABLE IF NOT EXISTS ` + fq + ` (
  k VARBINARY(255) NOT NULL,
  holder VARBINARY(64) NOT NULL,
  seq BIGINT UNSIGNED NOT NULL,
  ttl BIGINT NOT NULL,
  expires BIGINT NOT NULL,
  PRIMARY KEY (k, holder),
  KEY seq_idx (k, seq)
) ENGINE=InnoDB`,
		},
		getMany: `SELECT k, v FROM ` + v + ` WHERE k IN (%s) AND (expires IS NULL OR expires > ` + nowUS + `)`,
		// pollMany is pollValue for many keys (the batched poll): the
		// value is joined where the counter is odd and not the one the
		// key's previous poll saw, (k, ev) NOT IN its (key, counter)
		// pairs; the first parameter says whether values are wanted at
		// all. The first %s is the pairs, the second the keys.
		pollMany: `SELECT c.k, c.holder, c.token, c.ev, c.expires - ` + nowUS + `, w.v, w.k IS NOT NULL FROM ` + c + ` c
LEFT JOIN ` + v + ` w ON ? AND c.ev % 2 = 1 AND (c.k, c.ev) NOT IN (%s) AND w.k = c.k
  AND (w.expires IS NULL OR w.expires > ` + nowUS + `) AND LENGTH(w.v) <= ` + strconv.Itoa(maxWakeValue) + `
WHERE c.k IN (%s)`,
	}
}

// lostMessage is the text of the SQLSTATE 45000 a compound statement
// signals when the lease it names is not current.
const lostMessage = "stampede: lease lost"

// ensure runs Ping's check (the server, the tables, created unless
// SkipMigrate, and the user's rights) once per driver, before the first
// statement that needs them, unless Ping has run it: a Client opened
// lazily meets a configuration problem at its first call.
func (b *backend) ensure(ctx context.Context) error {
	if b.migrated.Load() {
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
	if err := b.check(ctx); err != nil {
		return err
	}
	b.migrated.Store(true)
	return nil
}

func (b *backend) migrate(ctx context.Context) error {
	for _, s := range b.q.migrate {
		if _, err := b.db.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("create tables: %w", err)
		}
	}
	return nil
}

// Migrate creates c's tables if they do not exist (needs CREATE on the
// database). c must come from New or claim.Open of a mysql:// URL; it
// works with SkipMigrate too (that is what it is for).
func Migrate(ctx context.Context, c *claim.Client) error {
	b, ok := c.Driver().(*backend)
	if !ok {
		return fmt.Errorf("mysql: migrate: not a mysql Client (%s)", c.Features().Name)
	}
	if err := b.migrate(ctx); err != nil {
		return fmt.Errorf("mysql: %w", b.classify(err))
	}
	b.migrated.Store(true)
	return nil
}
