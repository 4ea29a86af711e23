package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// wrote starts a background sweep (maybeSweep) if a write succeeded, and
// returns its error.
func (b *backend) wrote(err error) error {
	if err == nil {
		b.maybeSweep()
	}
	return err
}

// Get implements driver.Store: one SELECT; expiry is judged by the
// server's clock.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	var v []byte
	err := b.db.QueryRowContext(ctx, b.q.get, b.keys.Encode(key)).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, b.classify(err)
	}
	return nonNil(v), nil
}

// Set implements driver.Store: one upsert.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	us := micros(ttl)
	_, err := b.db.ExecContext(ctx, b.q.set, b.keys.Encode(key), nonNil(val), us, us)
	return b.classify(b.wrote(err))
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	_, err := b.db.ExecContext(ctx, b.q.del, b.keys.Encode(key))
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
		_, _ = b.db.ExecContext(ctx, b.q.sweep, b.opt.SweepLimit)
	})
}

// Sweep deletes up to Options.SweepLimit expired values of c's tables now
// and returns how many it deleted. Clients also sweep by themselves after
// writes. c must come from New or claim.Open of a mysql:// URL.
func Sweep(ctx context.Context, c *claim.Client) (int64, error) {
	b, ok := c.Driver().(*backend)
	if !ok {
		return 0, fmt.Errorf("mysql: sweep: not a mysql Client (%s)", c.Features().Name)
	}
	if err := b.ensure(ctx); err != nil {
		return 0, fmt.Errorf("mysql: sweep: %w", b.classify(err))
	}
	res, err := b.db.ExecContext(ctx, b.q.sweep, b.opt.SweepLimit)
	if err != nil {
		return 0, fmt.Errorf("mysql: sweep: %w", b.classify(err))
	}
	return res.RowsAffected()
}
