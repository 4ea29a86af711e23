package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// The fair queue of a key is rows of PREFIXqueue (k, holder, seq, ttl,
// expires): a waiter's place (seq), the TTL it asks for and when its
// entry expires (server clock, µs). Every queue operation is one compound
// statement (one round trip, one transaction) that first locks the key's
// claim row (creating a free one, token 0, if the key has none), so the
// operations of one key run one after the other, each seeing everything
// the previous one committed, and every other writer of the claim row
// (TryClaim, Extend, Release, Commit) waits for them too.

// queueSQL builds the statements of queue.go for the tables c (claims)
// and fq (queue).
type queueSQL struct{ enqueue, dequeue, handOff string }

func buildQueueSQL(c, fq string) queueSQL {
	head := func(decls ...string) string {
		return "BEGIN NOT ATOMIC\n  " + strings.Join(append(decls,
			"DECLARE v_now BIGINT DEFAULT "+nowUS,
			"DECLARE v_holder VARBINARY(64)",
			"DECLARE v_token BIGINT UNSIGNED",
			"DECLARE v_exp BIGINT",
			"DECLARE f_holder VARBINARY(64)",
			"DECLARE f_ttl BIGINT",
			"DECLARE EXIT HANDLER FOR SQLEXCEPTION BEGIN ROLLBACK; RESIGNAL; END",
			// READ COMMITTED: under REPEATABLE READ, a scan of p_k's
			// entries gap-locks the gap up to the next key's first
			// entry, which a queue operation on that neighbouring key
			// inserts into too: two Enqueues of different keys
			// deadlocked (found by review). Every queue operation on
			// p_k locks p_k's claim row first (lock, below), which
			// orders them; no gap lock is needed.
			"SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
			"START TRANSACTION"), ";\n  ") + ";\n  "
	}
	// lock locks (or makes) the claim row of p_k and reads it.
	lock := `INSERT INTO ` + c + ` (k, holder, token, expires, ev) VALUES (p_k, NULL, 0, v_now, 0) ON DUPLICATE KEY UPDATE k = k;
  SELECT holder, token, expires INTO v_holder, v_token, v_exp FROM ` + c + ` WHERE k = p_k FOR UPDATE;
  `
	// first sets f_holder and f_ttl to the first live waiter (other than
	// the holder named by except, if not empty).
	first := func(except string) string {
		cond := ""
		if except != "" {
			cond = " AND holder <> " + except
		}
		return `SET f_holder = (SELECT holder FROM ` + fq + ` WHERE k = p_k AND expires > v_now` + cond + ` ORDER BY seq LIMIT 1);
  SET f_ttl = (SELECT ttl FROM ` + fq + ` WHERE k = p_k AND holder <=> f_holder);
  `
	}
	// grantTo grants the key to holder h for ttl µs (the next token) and
	// takes h's entry out of the queue.
	grantTo := func(h, ttl string) string {
		return `UPDATE ` + c + ` SET holder = ` + h + `, token = token + 1, expires = v_now + ` + ttl + ` WHERE k = p_k;
  DELETE FROM ` + fq + ` WHERE k = p_k AND holder = ` + h + `;
  `
	}
	// release ends the lease with nobody to grant it to, waking the key's
	// subscribers.
	release := `UPDATE ` + c + ` SET holder = NULL, expires = v_now, ev = ` + evNext + ` WHERE k = p_k;
  `
	// queue puts p_h at the tail (a new seq), or renews its entry, which
	// keeps its place while it is alive. MySQL assigns left to right: seq
	// is judged on the old expires.
	queue := `INSERT INTO ` + fq + ` (k, holder, seq, ttl, expires)
    VALUES (p_k, p_h, (SELECT COALESCE(MAX(seq), 0) + 1 FROM ` + fq + ` q WHERE q.k = p_k), p_ttl, v_now + p_ttl)
    ON DUPLICATE KEY UPDATE seq = IF(expires <= v_now, VALUES(seq), seq), ttl = VALUES(ttl), expires = VALUES(expires);
  `
	const live = "v_holder IS NOT NULL AND v_exp > v_now"
	return queueSQL{
		// enqueue: Queuer.Enqueue's steps 1 to 5. One row: whether p_h
		// holds the key, the token, and the TTL granted (remaining
		// lifetime if held by another).
		enqueue: head("DECLARE p_k VARBINARY(255) DEFAULT ?", "DECLARE p_h VARBINARY(64) DEFAULT ?", "DECLARE p_ttl BIGINT DEFAULT ?") +
			lock + `DELETE FROM ` + fq + ` WHERE k = p_k AND expires <= v_now AND holder <> p_h;
  IF ` + live + ` THEN
    IF v_holder = p_h THEN
      SELECT 1, v_token, v_exp - v_now;
    ELSE
      ` + queue + `SELECT 0, v_token, v_exp - v_now;
    END IF;
  ELSE
    ` + first("") + `IF f_holder IS NULL OR f_holder = p_h THEN
      ` + grantTo("p_h", "p_ttl") + `SELECT 1, v_token + 1, p_ttl;
    ELSE
      ` + grantTo("f_holder", "f_ttl") + queue + `SELECT 0, v_token + 1, f_ttl;
    END IF;
  END IF;
  COMMIT;
END`,
		// dequeue: p_h leaves the queue (expired entries go too); a live
		// lease already granted to p_h is handed on.
		dequeue: head("DECLARE p_k VARBINARY(255) DEFAULT ?", "DECLARE p_h VARBINARY(64) DEFAULT ?") +
			lock + `DELETE FROM ` + fq + ` WHERE k = p_k AND (holder = p_h OR expires <= v_now);
  IF ` + live + ` AND v_holder = p_h THEN
    ` + first("") + `IF f_holder IS NULL THEN
      ` + release + `ELSE
      ` + grantTo("f_holder", "f_ttl") + `END IF;
  END IF;
  COMMIT;
END`,
		// handOff: if the lease (p_tok, p_h) is current, grant the key to
		// the first live waiter, or release it. One row: the new holder
		// (NULL if released), its token and TTL; or the lost signal.
		handOff: head("DECLARE p_k VARBINARY(255) DEFAULT ?", "DECLARE p_tok BIGINT UNSIGNED DEFAULT ?", "DECLARE p_h VARBINARY(64) DEFAULT ?") +
			lock + `IF NOT (` + live + ` AND v_holder = p_h AND v_token = p_tok) THEN
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '` + lostMessage + `';
  END IF;
  DELETE FROM ` + fq + ` WHERE k = p_k AND expires <= v_now;
  ` + first("p_h") + `IF f_holder IS NULL THEN
    ` + release + `SELECT NULL, v_token, 0;
  ELSE
    ` + grantTo("f_holder", "f_ttl") + `SELECT f_holder, v_token + 1, f_ttl;
  END IF;
  COMMIT;
END`,
	}
}

// Enqueue implements driver.Queuer: one compound statement (see
// buildQueueSQL), the five steps in one transaction.
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := b.ensure(ctx); err != nil {
		return driver.Lease{}, b.classify(err)
	}
	ttl = leaseTTL(ttl)
	var (
		got    bool
		token  uint64
		remain int64
	)
	err := b.db.QueryRowContext(ctx, b.qq.enqueue, b.keys.Encode(key), holder, micros(ttl)).Scan(&got, &token, &remain)
	if err != nil {
		return driver.Lease{}, b.classify(err)
	}
	if !got {
		return driver.Lease{}, &driver.HeldError{Remaining: max(0, time.Duration(remain)*time.Microsecond)}
	}
	return driver.Lease{Key: key, Holder: holder, Token: token, TTL: max(0, time.Duration(remain)*time.Microsecond)}, nil
}

// Dequeue implements driver.Queuer: one compound statement, which also
// hands on a lease granted to holder meanwhile.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	_, err := b.db.ExecContext(ctx, b.qq.dequeue, b.keys.Encode(key), holder)
	return b.classify(err)
}

// HandOff implements driver.Queuer: one compound statement: the compare,
// the end of l and the grant to the first live waiter (or the release,
// with nobody queued) in one transaction.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	if err := b.ensure(ctx); err != nil {
		return driver.Lease{}, b.classify(err)
	}
	var (
		holder sql.NullString
		token  uint64
		ttl    int64
	)
	err := b.db.QueryRowContext(ctx, b.qq.handOff, b.keys.Encode(l.Key), l.Token, l.Holder).Scan(&holder, &token, &ttl)
	if err != nil {
		return driver.Lease{}, b.classify(err)
	}
	if !holder.Valid {
		return driver.Lease{}, nil
	}
	return driver.Lease{Key: l.Key, Holder: holder.String, Token: token, TTL: time.Duration(ttl) * time.Microsecond}, nil
}

// grantRead is one read of a key's claim row by the grant poll.
type grantRead struct {
	err    error
	holder string // the live lease's holder, "" if none
	token  uint64
	ttl    time.Duration // what was left of the live lease
}

// grantSub is one key's SubscribeGrants.
type grantSub struct {
	grant func(driver.Lease)

	mu   sync.Mutex
	last grantRead // the latest read
	seen uint64    // the fence handled last
	base bool      // seen is set
}

// record keeps r as the latest read; the first good one sets the base.
func (g *grantSub) record(r grantRead) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last = r
	if r.err == nil && !g.base {
		g.seen, g.base = r.token, true
	}
}

// wake is the key's grant poll's wake-up: the latest read changed (a
// fence, the wake-up counter or the holder) or failed. A live lease with
// a new fence is a grant, delivered with what was left of it. A failed
// read, fences skipped between two reads (a grant that may have come and
// gone unseen) or a lease gone without a new one may hide a grant: then
// the zero Lease, and the client enqueues again (which finds a grant made
// meanwhile).
func (g *grantSub) wake(key string) {
	g.mu.Lock()
	r, seen := g.last, g.seen
	if r.err == nil {
		g.seen = max(g.seen, r.token)
	}
	g.mu.Unlock()
	if r.err != nil {
		g.grant(driver.Lease{})
		return
	}
	missed := uint64(0)
	if r.token > seen {
		missed = r.token - seen
	}
	if r.holder != "" && r.token > seen {
		g.grant(driver.Lease{Key: key, Holder: r.holder, Token: r.token, TTL: r.ttl})
		missed--
	}
	if missed > 0 || r.holder == "" {
		g.grant(driver.Lease{})
	}
}

// readGrant is the grant poll: the claim row read as pollState reads it
// (one SELECT), whose Token is the fence and the wake-up counter, so a
// grant, a claim and a release all change it.
func (b *backend) readGrant(ctx context.Context, key string) (driver.PollState, error) {
	if err := b.ensure(ctx); err != nil {
		return driver.PollState{}, b.classify(err)
	}
	b.gmu.Lock()
	g := b.gsubs[key]
	b.gmu.Unlock()
	sent := time.Now()
	var (
		holder sql.NullString
		token  uint64
		ev     uint64
		remain int64
	)
	err := b.db.QueryRowContext(ctx, b.q.poll, b.keys.Encode(key)).Scan(&holder, &token, &ev, &remain)
	if errors.Is(err, sql.ErrNoRows) {
		err = nil
	}
	if err != nil {
		err = b.classify(err)
		if g != nil {
			g.record(grantRead{err: err})
		}
		return driver.PollState{}, err
	}
	st := driver.PollState{Token: strconv.FormatUint(token, 10) + "/" + strconv.FormatUint(ev, 10)}
	r := grantRead{token: token}
	if holder.Valid && remain > 0 {
		st.Holder = holder.String + "/" + strconv.FormatUint(token, 10)
		st.Expires = sent.Add(time.Duration(remain) * time.Microsecond)
		r.holder, r.ttl = holder.String, time.Duration(remain)*time.Microsecond
	}
	if g != nil {
		g.record(r)
	}
	return st, nil
}

// SubscribeGrants implements driver.Queuer by polling the key's claim row
// (a Poller of its own, paced as Subscribe's): a live lease with a new
// fence is delivered as a grant, with what was left of it when read. The
// first read, before it returns, is the base: the client subscribes before
// its waiters enqueue, so no grant to them can precede it.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	g := &grantSub{grant: grant}
	b.gmu.Lock()
	b.gsubs[key] = g
	b.gmu.Unlock()
	if err := b.grants.Subscribe(ctx, key, func() { g.wake(key) }); err != nil {
		b.gmu.Lock()
		if b.gsubs[key] == g {
			delete(b.gsubs, key)
		}
		b.gmu.Unlock()
		return b.classify(err)
	}
	return nil
}

// UnsubscribeGrants implements driver.Queuer: it stops the key's grant
// poll (a read in flight completes, unseen).
func (b *backend) UnsubscribeGrants(key string) {
	b.grants.Unsubscribe(key)
	b.gmu.Lock()
	delete(b.gsubs, key)
	b.gmu.Unlock()
}
