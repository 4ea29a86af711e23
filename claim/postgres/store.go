package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

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

// Get implements driver.Store. An expired row is never returned.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, err
	}
	var v []byte
	err := b.pool.QueryRow(ctx, b.q.get, b.keys.Encode(key)).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return nonNil(v), nil
}

// Set implements driver.Store: one upsert.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.ensure(ctx); err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, b.q.set, b.keys.Encode(key), nonNil(val), micros(ttl)); err != nil {
		return err
	}
	b.maybeSweep()
	return nil
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := b.ensure(ctx); err != nil {
		return err
	}
	_, err := b.pool.Exec(ctx, b.q.del, b.keys.Encode(key))
	return err
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
	if err := b.ensure(ctx); err != nil {
		return 0, fmt.Errorf("postgres: sweep: %w", err)
	}
	tag, err := b.pool.Exec(ctx, b.q.sweep, b.opt.SweepLimit)
	if err != nil {
		return 0, fmt.Errorf("postgres: sweep: %w", err)
	}
	return tag.RowsAffected(), nil
}
