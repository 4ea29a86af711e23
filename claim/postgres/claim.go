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

// tryClaim is the driver's claim (driver.ClaimFunc): one INSERT … ON
// CONFLICT statement; with read, the statement also reads the value (one
// round trip; two in the race the package doc and the claimRead statement
// describe).
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (_ driver.Lease, _ []byte, _ bool, err error) {
	defer func() { err = b.classify(err) }()
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
		if val, found, err = b.read(ctx, enc); err != nil {
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
	tag, err := b.exec(ctx, sql, args...)
	if err == nil && tag.RowsAffected() != 1 {
		return driver.ErrLost
	}
	return err
}

// Extend implements driver.Claimer: one UPDATE of the unexpired row.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ttl = leaseTTL(ttl)
	if err := b.fenced(ctx, b.q.extend, b.keys.Encode(l.Key), int64(l.Token), l.Holder, micros(ttl)); err != nil {
		return driver.Lease{}, b.classify(err)
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: compare-and-clear plus NOTIFY in one
// statement (the token counter stays). A lease that expired is ErrLost,
// and its row is left for the server's clock to judge.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	enc := b.keys.Encode(l.Key)
	return b.classify(b.fenced(ctx, b.q.release, enc, int64(l.Token), l.Holder, b.channel, keyPayload(enc)))
}

// Commit implements driver.Claimer: one statement that writes the value
// only while the lease is current.
func (b *backend) Commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	return b.classify(b.wrote(b.fenced(ctx, b.q.commit, b.keys.Encode(l.Key), nonNil(val), micros(ttl), int64(l.Token), l.Holder)))
}

// CommitRelease implements driver.CommitReleaser: one statement (see
// commitRelease in schema.go).
func (b *backend) CommitRelease(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	enc := b.keys.Encode(l.Key)
	return b.classify(b.wrote(b.fenced(ctx, b.q.commitRelease, enc, nonNil(val), micros(ttl), int64(l.Token), l.Holder, b.channel, keyPayload(enc))))
}

// Revoke implements driver.Claimer: two statements sent together (one
// pipeline, one round trip) and run as one implicit transaction, so the
// lease and the value change atomically and the NOTIFY goes out on
// commit. The first ends the lease (revoke in schema.go: the token moves
// on, so the fence never goes back and a claim that raced it sees the
// change), the second writes or deletes
// the value. Two statements, not one: a statement reads with the snapshot
// it started with, so a DELETE in the same statement as the UPDATE would
// miss a value that a Commit inserted while the UPDATE waited for that
// Commit's lock on the claim row; the second statement's snapshot sees
// it. Revoke stays synchronous with AsyncRelease: a revocation a crash
// forgot would leave a stale value readable.
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	enc := b.keys.Encode(key)
	var batch pgx.Batch
	batch.Queue(b.q.revoke, enc, b.channel, keyPayload(enc))
	if val != nil {
		batch.Queue(b.q.set, enc, val, micros(ttl))
	} else {
		batch.Queue(b.q.del, enc)
	}
	err := b.pool.SendBatch(ctx, &batch).Close()
	if val != nil {
		err = b.wrote(err)
	}
	return b.classify(err)
}
