package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim/driver"
)

// grantOverhead bounds the bytes of a grant's payload besides the encoded
// key and the holder: the tag, three spaces, a token and a TTL (at most
// 19 digits each).
const grantOverhead = 1 + 3 + 19 + 19

// grantSub is one key's grant subscription: the key as the Client names
// it (the payload has it encoded, perhaps hashed) and the Client's grant.
type grantSub struct {
	key   string
	grant func(driver.Lease)
}

// queueOp runs one queue operation on key (encoded as enc): lockKey, then
// sql with args, as one pipeline, so one round trip and one implicit
// transaction (see lockKey in schema.go for why two statements). scan, if
// not nil, reads sql's row (pgx.ErrNoRows if it returned none); sql is
// executed otherwise. Any NOTIFY goes out when the transaction commits.
func (b *backend) queueOp(ctx context.Context, enc, sql string, scan func(pgx.Row) error, args ...any) error {
	if err := b.ensure(ctx); err != nil {
		return err
	}
	var batch pgx.Batch
	batch.Queue(b.q.lockKey, enc)
	qq := batch.Queue(sql, args...)
	if scan != nil {
		qq.QueryRow(scan)
	}
	return b.pool.SendBatch(ctx, &batch).Close()
}

// Enqueue implements driver.Queuer: one round trip (lockKey and enqueue
// in schema.go), the five steps in one transaction; the grant of step 4
// is sent on its commit. A holder too long for a grant's NOTIFY payload
// is a *driver.TooLargeError, before any I/O.
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	enc := b.keys.Encode(key)
	if n := maxPayload - grantOverhead - len(enc); len(holder) > n {
		return driver.Lease{}, &driver.TooLargeError{What: "holder", Size: len(holder), Limit: n}
	}
	ttl = leaseTTL(ttl)
	var (
		got           bool
		token, remain int64
	)
	err := b.queueOp(ctx, enc, b.q.enqueue, func(row pgx.Row) error {
		var sent *string
		return row.Scan(&got, &token, &remain, &sent)
	}, enc, holder, micros(ttl), b.channel)
	if err != nil {
		return driver.Lease{}, b.classify(err)
	}
	if !got {
		return driver.Lease{}, &driver.HeldError{Remaining: max(0, time.Duration(remain)*time.Microsecond)}
	}
	return driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: max(0, time.Duration(remain)*time.Microsecond)}, nil
}

// Dequeue implements driver.Queuer: one round trip (lockKey and dequeue),
// which also hands on a lease granted to holder meanwhile.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	enc := b.keys.Encode(key)
	return b.classify(b.queueOp(ctx, enc, b.q.dequeue, nil, enc, holder, b.channel, keyPayload(enc)))
}

// HandOff implements driver.Queuer: one round trip (lockKey and handOff):
// the compare, the end of l and the grant to the first live waiter are
// one UPDATE of the claim row, the waiter's entry is deleted in the same
// statement, and the grant's NOTIFY (or, with nobody queued, the
// release's wake-up) goes out on commit. HandOff commits synchronously
// even with Options.AsyncRelease: a grant issues a token, which a crash
// must not give out twice.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	enc := b.keys.Encode(l.Key)
	var (
		holder     *string
		token, ttl int64
	)
	err := b.queueOp(ctx, enc, b.q.handOff, func(row pgx.Row) error {
		var sent *string
		return row.Scan(&holder, &token, &ttl, &sent)
	}, enc, int64(l.Token), l.Holder, b.channel, keyPayload(enc))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return driver.Lease{}, driver.ErrLost
	case err != nil:
		return driver.Lease{}, b.classify(err)
	case holder == nil:
		return driver.Lease{}, nil
	}
	return driver.Lease{Key: l.Key, Holder: *holder, Token: uint64(token), TTL: time.Duration(ttl) * time.Microsecond}, nil
}

// SubscribeGrants implements driver.Queuer on the one LISTEN connection
// (see join), as Subscribe: it registers key in the process and returns
// once the LISTEN is live. Every process's listener receives every grant
// of the namespace (one channel) and calls grant for the keys subscribed
// in it. After the LISTEN connection was lost, grant is called with a
// zero Lease (with the wake-ups of Subscribe).
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	return b.classify(join(ctx, b, b.l.grants, []string{b.keys.Encode(key)}, []grantSub{{key: key, grant: grant}}))
}

// UnsubscribeGrants implements driver.Queuer. The LISTEN connection stays.
func (b *backend) UnsubscribeGrants(key string) { leave(b, b.l.grants, b.keys.Encode(key)) }

// dispatchGrant calls the grant of the key a grant payload (without its
// tag) names, if subscribed, with the lease it carries; a malformed
// payload is dropped. Called by dispatch; grant is called under the
// listener's lock, as wake.
func (b *backend) dispatchGrant(p string) {
	g, err := parseGrant(p)
	if err != nil {
		return
	}
	b.l.mu.Lock()
	if s, ok := b.l.grants[g.Key]; ok {
		g.Key = s.key
		s.grant(g)
	}
	b.l.mu.Unlock()
}

// parseGrant decodes a grant payload without its tag: encoded key, token,
// TTL in µs and holder, separated by single spaces. The Lease's Key is
// the encoded key.
func parseGrant(p string) (driver.Lease, error) {
	enc, rest, ok1 := strings.Cut(p, " ")
	tok, rest, ok2 := strings.Cut(rest, " ")
	ttl, holder, ok3 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !ok3 || holder == "" {
		return driver.Lease{}, fmt.Errorf("grant payload %q: want 4 fields", p)
	}
	t, err := strconv.ParseUint(tok, 10, 64)
	if err != nil {
		return driver.Lease{}, fmt.Errorf("grant payload: token: %w", err)
	}
	us, err := strconv.ParseInt(ttl, 10, 64)
	if err != nil || us < 0 {
		return driver.Lease{}, fmt.Errorf("grant payload: ttl %q", ttl)
	}
	return driver.Lease{Key: enc, Holder: holder, Token: t, TTL: time.Duration(us) * time.Microsecond}, nil
}
