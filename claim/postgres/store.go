package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// nonNil maps nil to an empty slice (pgx sends a nil slice as NULL).
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// exec runs a statement on the pool, once the tables exist.
func (b *backend) exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := b.ensure(ctx); err != nil {
		return pgconn.CommandTag{}, err
	}
	return b.pool.Exec(ctx, sql, args...)
}

// wrote starts a background sweep (maybeSweep) if a write succeeded, and
// returns its error.
func (b *backend) wrote(err error) error {
	if err == nil {
		b.maybeSweep()
	}
	return err
}

// read returns the unexpired value of an encoded key, found false if there
// is none.
func (b *backend) read(ctx context.Context, enc string) (v []byte, found bool, err error) {
	err = b.pool.QueryRow(ctx, b.q.get, enc).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	return nonNil(v), true, nil
}

// Get implements driver.Store.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	v, found, err := b.read(ctx, b.keys.Encode(key))
	if err == nil && !found {
		return nil, driver.ErrNotFound
	}
	return v, b.classify(err)
}

// Set implements driver.Store: one upsert.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	_, err := b.exec(ctx, b.q.set, b.keys.Encode(key), nonNil(val), micros(ttl))
	return b.classify(b.wrote(err))
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	_, err := b.exec(ctx, b.q.del, b.keys.Encode(key))
	return b.classify(err)
}

// maybeSweep starts a bounded deletion of expired values if none ran in
// this driver for SweepInterval.
func (b *backend) maybeSweep() {
	if b.opt.SweepInterval < 0 {
		return
	}
	now := time.Now().UnixNano()
	last := b.lastSweep.Load()
	if now-last < int64(b.opt.SweepInterval) || !b.lastSweep.CompareAndSwap(last, now) {
		return
	}
	b.goBackground(func() {
		ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
		defer cancel()
		_, _ = b.pool.Exec(ctx, b.q.sweep, b.opt.SweepLimit)
	})
}

// Sweep deletes up to Options.SweepLimit expired values of c's tables now
// and returns how many it deleted. Clients also sweep by themselves after
// writes. c must come from New or claim.Open of a postgres:// URL.
func Sweep(ctx context.Context, c *claim.Client) (int64, error) {
	b, err := of("sweep", c)
	if err != nil {
		return 0, err
	}
	tag, err := b.exec(ctx, b.q.sweep, b.opt.SweepLimit)
	if err != nil {
		return 0, fmt.Errorf("postgres: sweep: %w", b.classify(err))
	}
	return tag.RowsAffected(), nil
}
