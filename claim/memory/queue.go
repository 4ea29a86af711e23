package memory

import (
	"context"
	"slices"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// waiter is one entry of a key's fair queue.
type waiter struct {
	holder  string
	ttl     time.Duration
	expires time.Time
}

// pruneLocked drops key's expired queue entries; sp.mu must be held.
func (sp *Space) pruneLocked(key string, now time.Time) []waiter {
	q := slices.DeleteFunc(sp.queues[key], func(w waiter) bool { return !now.Before(w.expires) })
	if len(q) == 0 {
		delete(sp.queues, key)
		return nil
	}
	sp.queues[key] = q
	return q
}

// grantLocked grants key to the first live waiter, if any (the key's
// lease is free), and delivers the grant; sp.mu must be held.
func (sp *Space) grantLocked(key string, now time.Time) driver.Lease {
	q := sp.pruneLocked(key, now)
	if len(q) == 0 {
		return driver.Lease{}
	}
	w := q[0]
	sp.queues[key] = q[1:]
	if len(q) == 1 {
		delete(sp.queues, key)
	}
	sp.fences[key]++
	sp.locks[key] = lock{holder: w.holder, token: sp.fences[key], expires: now.Add(w.ttl)}
	g := driver.Lease{Key: key, Holder: w.holder, Token: sp.fences[key], TTL: w.ttl}
	for _, f := range sp.grants[key] {
		f(g)
	}
	return g
}

// Enqueue implements driver.Queuer under one lock of the Space.
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	q := sp.pruneLocked(key, now)
	l, live := sp.locks[key]
	live = live && now.Before(l.expires)
	if live && l.holder == holder {
		return driver.Lease{Key: key, Holder: holder, Token: l.token, TTL: l.expires.Sub(now)}, nil
	}
	if !live {
		if len(q) == 0 || q[0].holder == holder {
			if len(q) > 0 {
				sp.queues[key] = q[1:]
			}
			sp.fences[key]++
			sp.locks[key] = lock{holder: holder, token: sp.fences[key], expires: now.Add(ttl)}
			return driver.Lease{Key: key, Holder: holder, Token: sp.fences[key], TTL: ttl}, nil
		}
		sp.grantLocked(key, now)
		l = sp.locks[key]
	}
	if i := slices.IndexFunc(sp.queues[key], func(w waiter) bool { return w.holder == holder }); i >= 0 {
		sp.queues[key][i].ttl, sp.queues[key][i].expires = ttl, now.Add(ttl)
	} else {
		sp.queues[key] = append(sp.queues[key], waiter{holder: holder, ttl: ttl, expires: now.Add(ttl)})
	}
	return driver.Lease{}, &driver.HeldError{Remaining: l.expires.Sub(now)}
}

// Dequeue implements driver.Queuer.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	q := slices.DeleteFunc(sp.queues[key], func(w waiter) bool { return w.holder == holder })
	if len(q) == 0 {
		delete(sp.queues, key)
	} else {
		sp.queues[key] = q
	}
	if l, ok := sp.locks[key]; ok && l.holder == holder && now.Before(l.expires) {
		delete(sp.locks, key)
		if g := sp.grantLocked(key, now); g.Holder == "" {
			sp.wakeLocked(key, nil)
		}
	}
	return nil
}

// HandOff implements driver.Queuer: the release and the grant under one
// lock of the Space.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
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
	delete(sp.locks, l.Key)
	g := sp.grantLocked(l.Key, now)
	if g.Holder == "" {
		sp.wakeLocked(l.Key, nil)
	}
	return g, nil
}

// SubscribeGrants implements driver.Queuer.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	return subscribe(ctx, b, b.sp.grants, key, grant)
}

// UnsubscribeGrants implements driver.Queuer.
func (b *backend) UnsubscribeGrants(key string) { unsubscribe(b, b.sp.grants, key) }
