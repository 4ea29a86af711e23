package memory

import (
	"context"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// GetMany implements driver.Batcher under one lock of the Space.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	out := make([][]byte, len(keys))
	for i, k := range keys {
		out[i], _ = sp.getLocked(k, now)
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: each key's claim and read as in
// tryClaim.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	for i, k := range keys {
		c := &out[i]
		c.Lease, c.Value, c.Found, c.Err = b.tryClaim(ctx, k, holders[i], ttl, true)
	}
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: each commit as in commit.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(commits))
	for i, c := range commits {
		errs[i] = b.commit(ctx, c.Lease, c.Value, c.TTL, true, true)
	}
	return errs, nil
}

// ReleaseMany implements driver.ReleaseBatcher: each lease as in Release.
func (b *backend) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(leases))
	for i, l := range leases {
		errs[i] = b.commit(ctx, l, nil, 0, false, true)
	}
	return errs, nil
}

// SubscribeMany implements driver.Batcher.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	defer b.sp.mu.Unlock()
	for i, k := range keys {
		wake := wakes[i]
		b.sp.subs.add(k, b, func([]byte) { wake() })
	}
	return nil
}
