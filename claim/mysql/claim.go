package mysql

import (
	"context"
	"database/sql"
	"errors"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim/driver"
)

// micros rounds d up to whole microseconds.
func micros(d time.Duration) int64 { return int64((d + time.Microsecond - 1) / time.Microsecond) }

// leaseTTL rounds a lease TTL up to the granularity and minimum.
func leaseTTL(ttl time.Duration) time.Duration {
	ttl = time.Duration(micros(ttl)) * time.Microsecond
	return max(ttl, MinTTL)
}

// nonNil maps nil to an empty slice (a nil slice is sent as NULL).
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// tryClaim is the driver's claim (driver.ClaimFunc): one INSERT … ON
// DUPLICATE KEY UPDATE … RETURNING statement (claim in schema.go); with
// read, the same statement also reads the value.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (_ driver.Lease, _ []byte, _ bool, err error) {
	defer func() { err = b.classify(err) }()
	if err := b.ensure(ctx); err != nil {
		return driver.Lease{}, nil, false, err
	}
	enc := b.keys.Encode(key)
	ttl = leaseTTL(ttl)
	var (
		token  uint64
		got    sql.NullString
		remain int64
		val    []byte
	)
	if read {
		err = b.db.QueryRowContext(ctx, b.q.claimRead, enc, holder, micros(ttl)).Scan(&token, &got, &remain, &val)
	} else {
		err = b.db.QueryRowContext(ctx, b.q.claim, enc, holder, micros(ttl)).Scan(&token, &got, &remain)
	}
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	if !got.Valid || got.String != holder || remain != micros(ttl) {
		return driver.Lease{}, nil, false, &driver.HeldError{Remaining: max(0, time.Duration(remain)*time.Microsecond)}
	}
	l := driver.Lease{Key: key, Holder: holder, Token: token, TTL: ttl}
	if val == nil {
		return l, nil, false, nil
	}
	return l, val, true, nil
}

// fenced runs a statement that changes one row only while the lease it
// names is current, and answers ErrLost if it matched none.
func (b *backend) fenced(ctx context.Context, query string, args ...any) error {
	if err := b.ensure(ctx); err != nil {
		return err
	}
	res, err := b.db.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return driver.ErrLost
	}
	return nil
}

// Extend implements driver.Claimer: one UPDATE of the unexpired row.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ttl = leaseTTL(ttl)
	if err := b.fenced(ctx, b.q.extend, micros(ttl), b.keys.Encode(l.Key), l.Token, l.Holder); err != nil {
		return driver.Lease{}, b.classify(err)
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: one UPDATE that clears the holder
// of the current lease and bumps the key's wake-up counter (the row and
// its token stay). A lease that expired is ErrLost, and its row is left
// for the server's clock to judge.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	return b.classify(b.fenced(ctx, b.q.release, b.keys.Encode(l.Key), l.Token, l.Holder))
}

// Commit implements driver.Claimer: one INSERT … SELECT that writes the
// value only while the lease is current.
func (b *backend) Commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	enc := b.keys.Encode(l.Key)
	us := micros(ttl)
	return b.classify(b.wrote(b.fenced(ctx, b.q.commit, enc, nonNil(val), us, us, enc, l.Token, l.Holder)))
}

// CommitRelease implements driver.CommitReleaser: one compound statement
// (one round trip, one transaction) that releases the lease if it is
// current, or else signals, and then writes the value.
func (b *backend) CommitRelease(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	enc := b.keys.Encode(l.Key)
	us := micros(ttl)
	_, err := b.db.ExecContext(ctx, b.q.commitRelease, enc, l.Token, l.Holder, enc, nonNil(val), us, us)
	return b.classify(b.wrote(err))
}

// Revoke implements driver.Claimer: one compound statement (one round
// trip, one transaction) that ends whatever lease the key has (the row
// and its token stay, so the fence never goes back; the wake-up counter
// is bumped) and then writes or deletes the value. A Commit in progress
// holds a share lock on the claim row, so it lands first (and is
// replaced) or finds its lease gone.
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	enc := b.keys.Encode(key)
	var err error
	if val != nil {
		us := micros(ttl)
		_, err = b.db.ExecContext(ctx, b.q.revoke, enc, enc, val, us, us)
		err = b.wrote(err)
	} else {
		_, err = b.db.ExecContext(ctx, b.q.revokeDel, enc, enc)
	}
	return b.classify(err)
}

// isLost reports whether err is the signal of a compound statement that
// found its lease not current.
func isLost(err error) bool {
	var me *gomysql.MySQLError
	return errors.As(err, &me) && me.SQLState == [5]byte{'4', '5', '0', '0', '0'} && me.Message == lostMessage
}
