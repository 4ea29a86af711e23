package nats

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

var _ driver.Queuer = (*backend)(nil)

// maxQueueRounds bounds the read-and-write rounds of Enqueue and Dequeue
// when other clients' writes land between the read and the write (a lost
// race, not an error).
const maxQueueRounds = 8

// liveEntry reports whether a queue entry is still live at now (plus
// ClockSkew: the waiter's clock may be behind).
func (b *backend) liveEntry(e entry, now time.Time) bool {
	return now.Before(time.UnixMilli(e.exp).Add(b.o.ClockSkew))
}

// leaseLive reports whether key's record r, just read, holds a lease
// another client may not take over yet (see heldUntil).
func (b *backend) leaseLive(key string, r record) bool {
	if !r.held() {
		return false
	}
	now := clock.Now()
	return now.Before(b.heldUntil(key, r, now))
}

// pruned returns q without the entries that have expired at now.
func (b *backend) pruned(q []entry, now time.Time) []entry {
	return slices.DeleteFunc(slices.Clone(q), func(e entry) bool { return !b.liveEntry(e, now) })
}

// grantNext gives r's lease to the first live waiter of its queue (the
// queue already pruned), removing the waiter's entry, and reports whether
// there was one.
func grantNext(r *record, now time.Time) bool {
	if len(r.queue) == 0 {
		return false
	}
	w := r.queue[0]
	r.queue = r.queue[1:]
	*r = r.withLease(w.holder, time.Duration(w.ttl)*time.Millisecond, now, w.sighted)
	r.op = opGrant
	return true
}

// leaseOf returns the lease r holds, written at revision rev.
func leaseOf(key string, r record) driver.Lease {
	return driver.Lease{Key: key, Holder: r.holder, Token: r.token, TTL: time.Duration(r.leaseTTL) * time.Millisecond,
		Handle: strconv.FormatUint(r.token, 10)}
}

// Enqueue implements driver.Queuer: the record read and written back,
// with the steps of the contract applied to its lease and queue, on the
// revision read (again, up to maxQueueRounds, if another write landed in
// between).
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, err
	}
	ttl = roundTTL(ttl)
	for range maxQueueRounds {
		rev, cur, _, err := b.read(ctx, key)
		if err != nil {
			return driver.Lease{}, err
		}
		now := time.Now()
		if cur.holder == holder && now.UnixMilli() < cur.leaseExp {
			return leaseOf(key, cur), nil // step 2: granted already
		}
		nr := cur
		nr.queue = b.pruned(cur.queue, now)
		mine := slices.IndexFunc(nr.queue, func(e entry) bool { return e.holder == holder })
		held := false
		live := b.leaseLive(key, cur)
		switch {
		case !live && (len(nr.queue) == 0 || mine == 0):
			// Step 3: the key is holder's.
			if mine == 0 {
				nr.queue = nr.queue[1:]
			}
			nr = nr.withLease(holder, ttl, now, true)
			nr.op = opClaim
		default:
			if !live {
				grantNext(&nr, now) // step 4
				mine = slices.IndexFunc(nr.queue, func(e entry) bool { return e.holder == holder })
			} else {
				nr.op = opQueue
			}
			// Step 5: queue holder (or renew its entry in place).
			e := entry{holder: holder, exp: ceilMs(now.Add(ttl)), ttl: ttl.Milliseconds(), sighted: true}
			if mine >= 0 {
				nr.queue[mine] = e
			} else {
				nr.queue = append(nr.queue, e)
			}
			held = true
		}
		newRev, err := b.cas(ctx, key, nr, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return driver.Lease{}, err
		}
		if nr.token == 0 {
			nr.token = newRev // a new lease: this Enqueue's, or a grant
		}
		if held {
			// The lease of another holder: cur's, or the one granted now,
			// seen at the answer to this write at the latest.
			return driver.Lease{}, &driver.HeldError{Remaining: clock.Until(b.heldUntil(key, nr, clock.Now()))}
		}
		b.remember(key, newRev, nr)
		return leaseOf(key, nr), nil
	}
	// Every round lost a race with another writer of the key (a busy
	// key: many waiters renewing, readers of an RWMutex). Not a failure
	// of the backend: the waiter tries again shortly, as after a Consul
	// Enqueue that met the same (a CI run of the conformance suite's
	// RWMutexWriterNotStarved failed AcquireFair with this as an error).
	return driver.Lease{}, &driver.HeldError{Remaining: time.Millisecond + rand.N(5*time.Millisecond)}
}

// Dequeue implements driver.Queuer: holder's entry removed from the
// record's queue and, if the key's lease is holder's, handed over to the
// next live waiter (or freed), in one write on the revision read.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for range maxQueueRounds {
		rev, cur, found, err := b.read(ctx, key)
		if err != nil || !found {
			return err
		}
		now := time.Now()
		nr := cur
		nr.queue = slices.DeleteFunc(slices.Clone(cur.queue), func(e entry) bool { return e.holder == holder })
		switch {
		case cur.holder == holder:
			nr.queue = b.pruned(nr.queue, now)
			b.forget(key, cur.token)
			if !grantNext(&nr, now) {
				nr = nr.withoutLease()
				nr.op = opRelease
			}
		case len(nr.queue) == len(cur.queue):
			return nil // not queued
		default:
			nr.op = opQueue
		}
		_, err = b.cas(ctx, key, nr, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		return err
	}
	return errors.New("record keeps changing (too many concurrent writers of one key)")
}

// HandOff implements driver.Queuer: a fenced write of the record with the
// lease given to the first live waiter (a new revision: a greater token),
// or, with no live waiter, released. The key's watches deliver the grant
// (or wake its subscribers).
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	nr, old, err := b.fenced(ctx, l, false, func(cur record) record {
		now := time.Now()
		cur.queue = b.pruned(cur.queue, now)
		if !grantNext(&cur, now) {
			cur = cur.withoutLease()
			cur.op = opRelease
		}
		return cur
	})
	if err != nil {
		return driver.Lease{}, err
	}
	var next driver.Lease
	if nr.held() {
		next = leaseOf(l.Key, nr)
	}
	if time.Now().UnixMilli() >= old.leaseExp {
		return next, driver.ErrLost
	}
	return next, nil
}

// SubscribeGrants implements driver.Queuer: a watch of the key, as
// Subscribe's, that delivers every record written by a hand-over (a
// grant, with its lease), and a zero Lease when a lease ends without one
// (released with no live waiter, revoked), when a record shows a lease
// the watch saw no grant of (the stream keeps one entry per key: a write
// that lands before the watch delivered a grant, an Enqueue, replaces
// it; the granted waiter's next Enqueue finds its lease), and when the
// watch had to be made again.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	return b.subscribe(ctx, key, &sub{key: key, grant: grant}, b.grants)
}

// UnsubscribeGrants implements driver.Queuer.
func (b *backend) UnsubscribeGrants(key string) { b.unsubscribe(key, b.grants) }
