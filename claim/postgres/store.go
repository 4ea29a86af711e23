package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim"
)

// nonNil maps nil to an empty slice (pgx sends a nil slice as NULL).
func nonNil(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}

// Get implements claim.Store.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	enc, err := b.check(ctx, "get", key)
	if err != nil {
		return nil, err
	}
	if err := b.ensure(ctx); err != nil {
		return nil, fmt.Errorf("postgres: get %q: %w", key, err)
	}
	var v []byte
	err = b.pool.QueryRow(ctx, b.q.get, enc).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("postgres: get %q: %w", key, claim.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("postgres: get %q: %w", key, err)
	}
	return nonNil(v), nil
}

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	enc, err := b.check(ctx, "set", key)
	if err != nil {
		return err
	}
	if err := b.checkValue("set", key, val, ttl); err != nil {
		return err
	}
	if err := b.ensure(ctx); err != nil {
		return fmt.Errorf("postgres: set %q: %w", key, err)
	}
	if _, err := b.pool.Exec(ctx, b.q.set, enc, nonNil(val), micros(ttl)); err != nil {
		return fmt.Errorf("postgres: set %q: %w", key, err)
	}
	b.maybeSweep()
	return nil
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	enc, err := b.check(ctx, "delete", key)
	if err != nil {
		return err
	}
	if err := b.ensure(ctx); err != nil {
		return fmt.Errorf("postgres: delete %q: %w", key, err)
	}
	if _, err := b.pool.Exec(ctx, b.q.del, enc); err != nil {
		return fmt.Errorf("postgres: delete %q: %w", key, err)
	}
	return nil
}

// goBackground runs f on a goroutine that Close waits for; it does
// nothing once the Backend is closed.
func (b *Backend) goBackground(f func()) bool {
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.closed.Load() {
		return false
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
	return true
}

// maybeSweep starts a bounded deletion of expired values if none ran in
// this Backend for SweepInterval.
func (b *Backend) maybeSweep() {
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

// Sweep deletes up to Options.SweepLimit expired values now and returns
// how many it deleted. Backends also sweep by themselves after writes.
func (b *Backend) Sweep(ctx context.Context) (int64, error) {
	if b.closed.Load() {
		return 0, fmt.Errorf("postgres: sweep: %w", claim.ErrClosed)
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
