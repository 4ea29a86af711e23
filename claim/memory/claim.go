package memory

import (
	"context"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// tryClaim is the driver's claim (driver.ClaimFunc): the claim and, with
// read, the read of the value happen under one lock of the Space.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, nil, false, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	if l, ok := sp.locks[key]; ok && now.Before(l.expires) {
		return driver.Lease{}, nil, false, &driver.HeldError{Remaining: l.expires.Sub(now)}
	}
	sp.fences[key]++
	sp.locks[key] = lock{holder: holder, token: sp.fences[key], expires: now.Add(ttl)}
	lease := driver.Lease{Key: key, Holder: holder, Token: sp.fences[key], TTL: ttl}
	if !read {
		return lease, nil, false, nil
	}
	v, ok := sp.getLocked(key, now)
	return lease, v, ok, nil
}

// current reports whether l is the live lease; sp.mu must be held.
func (sp *Space) current(l driver.Lease, now time.Time) bool {
	cur, ok := sp.locks[l.Key]
	return ok && cur.token == l.Token && cur.holder == l.Holder && now.Before(cur.expires)
}

// Extend implements driver.Claimer.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	if !sp.current(l, now) {
		return driver.Lease{}, driver.ErrLost
	}
	sp.locks[l.Key] = lock{holder: l.Holder, token: l.Token, expires: now.Add(ttl)}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	return b.commit(ctx, l, nil, 0, false, true)
}

// commit checks the lease, writes the value (write) and releases the
// lease (release) under one lock of the Space; subscribers are woken after
// the change, under the lock too.
func (b *backend) commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration, write, release bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	now := sp.now()
	if !sp.current(l, now) {
		sp.mu.Unlock()
		return driver.ErrLost
	}
	if write {
		sp.setLocked(l.Key, val, ttl, now)
	}
	if !release {
		sp.mu.Unlock()
		return nil
	}
	delete(sp.locks, l.Key)
	var carried []byte
	if write {
		carried = append([]byte{}, val...)
	}
	sp.wakeLocked(l.Key, carried)
	sp.mu.Unlock()
	return nil
}

// Revoke implements driver.Claimer: the lease goes (its fence counter
// stays) and the value is replaced, under one lock of the Space.
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	delete(sp.locks, key)
	if val != nil {
		sp.setLocked(key, val, ttl, sp.now())
	} else {
		delete(sp.values, key)
	}
	sp.wakeLocked(key, nil)
	return nil
}
