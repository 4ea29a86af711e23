package conformance_test

import (
	"context"
	"slices"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// The naive driver's fair queue (driver.Queuer), written the obvious way,
// with the switchable bugs the Fair checks must catch.

type naiveWaiter struct {
	holder  string
	ttl     time.Duration
	expires time.Time
}

var _ driver.Queuer = (*naiveDriver)(nil)

// grantLocked grants k to its first live waiter and returns the grant and
// who to deliver it to; n.mu held, k's lease free.
func (n *naive) grantLocked(key, k string, prev uint64) (driver.Lease, []func(driver.Lease)) {
	now := time.Now()
	q := n.queues[k]
	if n.bugs&grantsDeadWaiters == 0 {
		q = slices.DeleteFunc(q, func(w naiveWaiter) bool { return !now.Before(w.expires) })
	}
	if len(q) == 0 {
		n.queues[k] = q
		return driver.Lease{}, nil
	}
	i := 0
	if n.bugs&grantsLIFO != 0 {
		i = len(q) - 1
	}
	w := q[i]
	n.queues[k] = slices.Delete(q, i, i+1)
	n.fence[k]++
	tok := n.fence[k]
	if n.bugs&grantKeepsToken != 0 && prev > 0 {
		tok = prev
	}
	g := driver.Lease{Key: key, Holder: w.holder, Token: tok, TTL: w.ttl}
	n.locks[k] = g
	n.exp[k] = now.Add(w.ttl)
	var out []func(driver.Lease)
	if n.bugs&dropsGrants == 0 {
		for _, f := range n.grantSubs[k] {
			out = append(out, f)
		}
	}
	return g, out
}

func deliver(g driver.Lease, to []func(driver.Lease)) {
	for _, f := range to {
		f(g)
	}
}

func (d *naiveDriver) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := d.ctx(ctx); err != nil {
		return driver.Lease{}, err
	}
	ttl = max(ttl, naiveMinTTL)
	n, k := d.n, d.ns+key
	n.mu.Lock()
	now := time.Now()
	if n.bugs&grantsDeadWaiters == 0 {
		n.queues[k] = slices.DeleteFunc(n.queues[k], func(w naiveWaiter) bool { return !now.Before(w.expires) })
	}
	q := n.queues[k]
	if n.live(k) && n.locks[k].Holder == holder {
		l := n.locks[k]
		n.mu.Unlock()
		return l, nil
	}
	var g driver.Lease
	var to []func(driver.Lease)
	if !n.live(k) {
		if len(q) == 0 || q[0].holder == holder {
			if len(q) > 0 {
				n.queues[k] = q[1:]
			}
			n.fence[k]++
			l := driver.Lease{Key: key, Holder: holder, Token: n.fence[k], TTL: ttl}
			n.locks[k], n.exp[k] = l, now.Add(ttl)
			n.mu.Unlock()
			return l, nil
		}
		g, to = n.grantLocked(key, k, 0)
	}
	if i := slices.IndexFunc(n.queues[k], func(w naiveWaiter) bool { return w.holder == holder }); i >= 0 {
		n.queues[k][i].ttl, n.queues[k][i].expires = ttl, now.Add(ttl)
	} else {
		n.queues[k] = append(n.queues[k], naiveWaiter{holder: holder, ttl: ttl, expires: now.Add(ttl)})
	}
	rem := max(time.Until(n.exp[k]), 0)
	n.mu.Unlock()
	deliver(g, to)
	return driver.Lease{}, &driver.HeldError{Remaining: rem}
}

func (d *naiveDriver) Dequeue(ctx context.Context, key, holder string) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	n, k := d.n, d.ns+key
	n.mu.Lock()
	n.queues[k] = slices.DeleteFunc(n.queues[k], func(w naiveWaiter) bool { return w.holder == holder })
	var g driver.Lease
	var to []func(driver.Lease)
	if n.live(k) && n.locks[k].Holder == holder {
		prev := n.locks[k].Token
		delete(n.locks, k)
		g, to = n.grantLocked(key, k, prev)
	}
	n.mu.Unlock()
	deliver(g, to)
	return nil
}

func (d *naiveDriver) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	if err := d.ctx(ctx); err != nil {
		return driver.Lease{}, err
	}
	n, k := d.n, d.ns+l.Key
	n.mu.Lock()
	if !n.current(k, l) {
		n.mu.Unlock()
		return driver.Lease{}, driver.ErrLost
	}
	delete(n.locks, k)
	g, to := n.grantLocked(l.Key, k, l.Token)
	var subs []func()
	if g.Holder == "" {
		subs = n.wakesLocked(k)
	}
	n.mu.Unlock()
	deliver(g, to)
	n.wake(subs)
	return g, nil
}

func (d *naiveDriver) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	k := d.ns + key
	if d.n.grantSubs[k] == nil {
		d.n.grantSubs[k] = map[*naiveDriver]func(driver.Lease){}
	}
	d.n.grantSubs[k][d] = grant
	return nil
}

func (d *naiveDriver) UnsubscribeGrants(key string) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	delete(d.n.grantSubs[d.ns+key], d)
}
