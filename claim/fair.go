package claim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// fairRefresh is how often, as a fraction of its TTL, a fair waiter renews
// its queue entry: the entry of a waiter that died is skipped within one
// TTL, a live one never lapses between renewals.
const fairRefresh = 3

// AcquireFair blocks until it holds a lease on key for ttl, first come
// first served: the waiters of a key queue in the backend, and a release
// (Release, CommitRelease) hands the lease over to the first live waiter,
// whose wake-up carries the lease itself (fencing token and all), so it
// holds the key with no round trip of its own and no other waiter wakes.
// This is the fair, wake-one mode users know from etcd's Mutex or
// Redisson's FairLock; Acquire is the wake-all mode flight's herds use
// (whoever claims first after a release wins). Use a key with one mode
// only.
//
// A waiter that leaves (ctx done) is taken out of the queue (in the
// background: AcquireFair returns at ctx's end), and a lease that
// crossed its departure is handed on; the queue entry of a waiter
// that dies expires within ttl and is skipped. If the holder dies, the
// first waiter gets the key once the holder's lease has run out (within a
// round trip of its deadline, no release needed). The lease's Deadline is
// conservative: it counts from the last moment the waiter knew it was
// still queued (at most ttl/3 before the grant), since the grant's own
// time is the backend's; renew with KeepAlive or Extend as usual. (One
// case escapes that bound: a grant delivered more than a whole lease late,
// after the waiter's own renewal found the lease over, which needs every
// poll of a poll backend to fail for a TTL; the poll drivers cap a grant's
// TTL at what was left when they read it.)
//
// Backends without a fair queue (no driver.Queuer) return an error
// wrapping ErrUnsupported. Cancelling ctx returns ctx's error promptly; no
// lease is held then.
func (c *Client) AcquireFair(ctx context.Context, key string, ttl time.Duration) (Lease, error) {
	if err := c.check(ctx, "acquire-fair", key); err != nil {
		return Lease{}, err
	}
	if err := c.checkTTL("acquire-fair", key, ttl); err != nil {
		return Lease{}, err
	}
	if c.q == nil {
		return Lease{}, opError("acquire-fair", key, fmt.Errorf("%w: the %s driver has no fair queue (driver.Queuer)", ErrUnsupported, c.feat.Name))
	}
	holder := newHolder()
	w := &fairWaiter{grant: make(chan Lease, 1), reset: make(chan struct{}, 1)}
	c.fairMu.Lock()
	c.fairWaiters[holder] = w
	c.fairMu.Unlock()
	defer func() {
		c.fairMu.Lock()
		delete(c.fairWaiters, holder)
		c.fairMu.Unlock()
	}()
	// Subscribed before the first Enqueue, so no grant can come unseen.
	signal := func() {
		select {
		case w.reset <- struct{}{}:
		default:
		}
	}
	m := &member{name: key, gone: signal, deliver: func([]byte, bool) { signal() }}
	sctx, stop := c.opCtx(ctx)
	err := c.grants.join(sctx, m)
	stop()
	if err != nil {
		return Lease{}, opError("acquire-fair", key, err)
	}
	// Left in the background: a granted waiter does not wait for the
	// substrate's unsubscribe before it returns with the lease.
	defer func() { go m.leave() }()

	// queued is when the latest Enqueue answered "queued" was sent: the
	// grant came after it, so the lease lasts at least until queued+TTL.
	var queued time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		if c.closed.Load() {
			return Lease{}, opError("acquire-fair", key, ErrClosed)
		}
		cl := c.begin(ctx, "enqueue")
		l, err := c.q.Enqueue(cl.ctx, key, holder, ttl)
		err = c.end(ctx, cl, err)
		if err == nil {
			since := cl.start
			if !queued.IsZero() {
				since = queued // step 2: granted at some point since
			}
			return fairLease(l, key, holder, since), nil
		}
		if !errors.Is(err, ErrHeld) {
			c.leaveQueue(ctx, key, holder)
			return Lease{}, claimError("acquire-fair", key, err)
		}
		queued = cl.start
		wait := ttl / fairRefresh
		var held *HeldError
		if errors.As(err, &held) && held.Remaining > 0 && held.Remaining+expirySlack < wait {
			wait = held.Remaining + expirySlack // the holder may die: be there when its lease ends
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case g := <-w.grant:
			return fairLease(g, key, holder, queued), nil
		case <-w.reset:
			// A grant may have been missed: Enqueue finds it (step 2).
		case <-timer.C:
			// Renew the entry; take over a lease that ran out.
		case <-ctx.Done():
			c.leaveQueue(ctx, key, holder)
			// A grant that came just now was handed on by Dequeue.
			return Lease{}, opError("acquire-fair", key, ctx.Err())
		}
	}
}

// fairWaiter is one AcquireFair call's mailbox.
type fairWaiter struct {
	grant chan Lease    // its grant, pushed by the driver
	reset chan struct{} // the driver may have missed a grant
}

// fairLease stamps a granted lease: Deadline from since, the latest local
// time known to precede the grant.
func fairLease(l Lease, key, holder string, since time.Time) Lease {
	l = stamp(l, key, holder, since)
	l.Fair = true
	return l
}

// deliverGrant passes a driver's grant to the local waiter it names, if
// any (grants reach every subscribed process); a zero Lease (a grant may
// have been missed) resets every local waiter of the key.
func (c *Client) deliverGrant(key string, l Lease, fire func([]byte, bool)) {
	if l.Holder == "" {
		fire(nil, true)
		return
	}
	c.fairMu.Lock()
	w := c.fairWaiters[l.Holder]
	c.fairMu.Unlock()
	if w == nil {
		return
	}
	select {
	case w.grant <- l:
	default:
	}
}

// leaveQueue dequeues holder, best effort and bounded, whatever ctx
// (cleanup: in the background once ctx has ended; a grant that reaches
// holder meanwhile is handed on by the Dequeue).
func (c *Client) leaveQueue(ctx context.Context, key, holder string) {
	c.cleanup(ctx, "dequeue", key, "the queue entry expires by its TTL", func(ctx context.Context) error {
		return c.q.Dequeue(ctx, key, holder)
	})
}

// handOff releases a fair lease: the next waiter gets it.
func (c *Client) handOff(ctx context.Context, l Lease) error {
	cl := c.begin(ctx, "hand-off")
	next, err := c.q.HandOff(cl.ctx, l)
	if err = c.end(ctx, cl, err); err != nil {
		return opError("release", l.Key, err)
	}
	if next.Holder != "" {
		next.Key = l.Key
		c.deliverGrant(l.Key, next, nil)
		return nil
	}
	c.wakeLocal(l.Key)
	return nil
}

// opCtx bounds ctx by the operation timeout.
func (c *Client) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opTimeout)
}

// fairState is the Client's part for AcquireFair.
type fairState struct {
	q           driver.Queuer // nil: AcquireFair is unsupported
	grants      *fanout       // grant subscriptions, per key
	fairMu      sync.Mutex
	fairWaiters map[string]*fairWaiter // by holder
}

func (c *Client) initFair(d driver.Driver) {
	c.fairWaiters = map[string]*fairWaiter{}
	q, ok := d.(driver.Queuer)
	if !ok {
		return
	}
	c.q = q
	c.grants = newFanout(func(ctx context.Context, key string, fire func([]byte, bool)) error {
		return q.SubscribeGrants(ctx, key, func(l Lease) { c.deliverGrant(key, l, fire) })
	}, q.UnsubscribeGrants)
}
