package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim/driver"
)

// micros rounds d up to whole microseconds.
func micros(d time.Duration) int64 { return int64((d + time.Microsecond - 1) / time.Microsecond) }

// leaseTTL rounds a lease TTL up to the granularity and minimum.
func leaseTTL(ttl time.Duration) time.Duration {
	ttl = time.Duration(micros(ttl)) * time.Microsecond
	return max(ttl, MinTTL)
}

// TryClaim implements driver.Claimer: one INSERT … ON CONFLICT statement.
func (b *backend) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, key, holder, ttl, false)
	return l, err
}

// TryClaimRead implements driver.ClaimReader: the claim statement also
// reads the value. If the claim row was released after the statement's
// snapshot (a holder released while this claim waited for its row lock),
// a value it committed is not in that snapshot, so the value is read again
// with a second statement: one round trip, two in that race.
func (b *backend) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, key, holder, ttl, true)
}

func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := b.ensure(ctx); err != nil {
		return driver.Lease{}, nil, false, err
	}
	enc := b.keys.Encode(key)
	ttl = leaseTTL(ttl)
	var (
		got, found bool
		snapshotOK = true
		token      int64
		remain     int64
		val        []byte
		err        error
	)
	if read {
		err = b.pool.QueryRow(ctx, b.q.claimRead, enc, holder, micros(ttl)).Scan(&got, &token, &remain, &val, &found, &snapshotOK)
	} else {
		err = b.pool.QueryRow(ctx, b.q.claim, enc, holder, micros(ttl)).Scan(&got, &token, &remain)
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// Held by a row committed after this statement's snapshot: the
		// remaining time is not known.
		return driver.Lease{}, nil, false, &driver.HeldError{}
	}
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	if !got {
		return driver.Lease{}, nil, false, &driver.HeldError{Remaining: max(0, time.Duration(remain)*time.Microsecond)}
	}
	l := driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl}
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
			return driver.Lease{}, nil, false, fmt.Errorf("read after claim: %w", err)
		}
	}
	if !found {
		return l, nil, false, nil
	}
	return l, nonNil(val), true, nil
}

// fenced runs a statement that changes one row only while the lease it
// names is current (token, holder and expiry compared in the statement),
// and answers ErrLost if it changed none.
func (b *backend) fenced(ctx context.Context, sql string, args ...any) error {
	if err := b.ensure(ctx); err != nil {
		return err
	}
	tag, err := b.pool.Exec(ctx, sql, args...)
	if err != nil {
		return err
	}
	if tag.RowsAffected() != 1 {
		return driver.ErrLost
	}
	return nil
}

// Extend implements driver.Claimer: one UPDATE of the unexpired row.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ttl = leaseTTL(ttl)
	if err := b.fenced(ctx, b.q.extend, b.keys.Encode(l.Key), int64(l.Token), l.Holder, micros(ttl)); err != nil {
		return driver.Lease{}, err
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: compare-and-clear plus NOTIFY in one
// statement (the token counter stays). A lease that expired is ErrLost,
// and its row is left for the server's clock to judge.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	enc := b.keys.Encode(l.Key)
	return b.fenced(ctx, b.q.release, enc, int64(l.Token), l.Holder, b.channel, keyPayload(enc))
}

// Commit implements driver.Claimer: one statement that writes the value
// only while the lease is current.
func (b *backend) Commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	err := b.fenced(ctx, b.q.commit, b.keys.Encode(l.Key), nonNil(val), micros(ttl), int64(l.Token), l.Holder)
	if err == nil {
		b.maybeSweep()
	}
	return err
}

// CommitRelease implements driver.CommitReleaser: one statement that
// releases the lease (compare by token and holder), writes the value only
// if it did, and NOTIFYs the key's waiters on commit.
func (b *backend) CommitRelease(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	enc := b.keys.Encode(l.Key)
	err := b.fenced(ctx, b.q.commitRelease, enc, nonNil(val), micros(ttl), int64(l.Token), l.Holder, b.channel, keyPayload(enc))
	if err == nil {
		b.maybeSweep()
	}
	return err
}
