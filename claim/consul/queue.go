package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
)

var _ driver.Queuer = (*backend)(nil)

// Fair acquisition (driver.Queuer): key K's waiters queue, in order, in
// one JSON array stored at PREFIX/q/K, outside K's directory so that
// enqueuing does not answer the directory's blocking queries. Each
// operation is a read-only transaction of the lock and queue keys, then
// one transaction conditioned on both as read (their ModifyIndex, or
// their absence), retried from the read if another client wrote either
// in between.
const (
	// fairRounds bounds the read-and-write rounds of one Enqueue,
	// Dequeue or HandOff that meet concurrent writes.
	fairRounds = 8
	// maxQueueLen is the largest queue value Enqueue writes (about 4,000
	// waiters), under Consul's default kv_max_value_size of 512 KiB.
	maxQueueLen = 256 << 10
)

// queueKey is key's fair queue.
func (b *backend) queueKey(key string) string { return b.prefix + "/q/" + b.enc.Encode(key) }

// entry is one waiter of a fair queue.
type entry struct {
	Holder string `json:"h"`
	Expiry int64  `json:"e"`           // Unix ms by the waiter's clock, rounded up
	TTL    int64  `json:"t"`           // ms: the TTL of the lease it asks for
	V      int    `json:"v,omitempty"` // the waiter's rules version (record.V), which its grant records
}

// live reports whether e has not expired at now, by the ClockSkew margin.
func (b *backend) live(e entry, now time.Time) bool {
	return now.Before(time.UnixMilli(e.Expiry).Add(b.o.ClockSkew))
}

// fairState is what one read of a key's lock and queue keys found.
type fairState struct {
	lock  *capi.KVPair // nil: no lease record
	rec   record       // lock's record
	recOK bool         // lock holds a well-formed record
	q     []entry      // the queue as stored (malformed: empty)
	qidx  uint64       // the queue key's ModifyIndex; 0: absent
	known bool         // fairWrite's after: q and qidx are as written
}

// readFair reads key's lock and queue keys in one read-only transaction.
func (b *backend) readFair(ctx context.Context, key string) (fairState, error) {
	lk, qk := b.lockKey(key), b.queueKey(key)
	ops := capi.TxnOps{kvOp(capi.KVGetOrEmpty, lk, 0, nil), kvOp(capi.KVGetOrEmpty, qk, 0, nil)}
	_, resp, err := b.txn(ctx, ops, 0)
	if err != nil {
		return fairState{}, err
	}
	if len(resp.Results) != len(ops) {
		return fairState{}, driver.Misconfigured(errUnreadable)
	}
	var f fairState
	for _, r := range resp.Results {
		// get-or-empty of an absent key answers it with index 0.
		if r == nil || r.KV == nil || r.KV.ModifyIndex == 0 {
			continue
		}
		switch r.KV.Key {
		case lk:
			f.lock = r.KV
			f.rec, f.recOK = parseRecord(r.KV.Value)
		case qk:
			f.qidx = r.KV.ModifyIndex
			if json.Unmarshal(r.KV.Value, &f.q) != nil {
				f.q = nil // rewritten by the next write
			}
		}
	}
	return f, nil
}

// served returns how many entries at the head of f's queue key the lease
// record marks as served by hand-overs (see record).
func (f fairState) served() int {
	if f.lock == nil || !f.recOK || f.rec.SQ == 0 || f.rec.SQ != f.qidx {
		return 0
	}
	return min(max(f.rec.SN, 0), len(f.q))
}

// pruned returns f's waiters: its queue without the entries served or
// expired at now (a copy).
func (b *backend) pruned(f fairState, now time.Time) []entry {
	q := make([]entry, 0, len(f.q)+1)
	for _, e := range f.q[f.served():] {
		if b.live(e, now) {
			q = append(q, e)
		}
	}
	return q
}

// leaseLive reports whether f holds a lease another client may not take
// over at now (see heldUntil).
func (b *backend) leaseLive(f fairState, now time.Time) bool {
	return f.lock != nil && f.recOK && now.Before(b.heldUntil(f.lock.Key, f.lock, f.rec, now))
}

// holds reports whether holder holds f's lease.
func (f fairState) holds(holder string) bool {
	return f.lock != nil && f.recOK && f.rec.Holder == holder
}

// change is what one fair write makes of a key, from the state read.
type change struct {
	grant   *entry  // a new lease for grant.Holder, for grant.TTL, replacing any
	release bool    // no grant: delete the lock key, write the notify key
	q       []entry // the queue after (empty: the queue key deleted)
	// keep: the queue key stays as read (only checked), and the grant's
	// record marks its first served entries as served.
	keep   bool
	served int
}

// fairWrite commits c over f, as read, in one transaction: conditioned
// on the lock and queue keys' ModifyIndex as read (or their absence), it
// replaces the lock key by a new lease (a delete-cas and a create: a new
// CreateIndex, the token) or deletes it, and writes or deletes the queue
// key. ok is false, with no error, if either key changed since the read.
// start is the local time before the write, from which a granted lease
// counts. after is the queue key as written (known false if the answer
// does not tell).
func (b *backend) fairWrite(ctx context.Context, key string, f fairState, c change, start time.Time) (ok bool, g driver.Lease, after fairState, err error) {
	lk, qk := b.lockKey(key), b.queueKey(key)
	var ops capi.TxnOps
	var cond []bool
	add := func(isCond bool, op *capi.TxnOp) {
		ops = append(ops, op)
		cond = append(cond, isCond)
	}
	var exp int64
	var sq uint64
	var sn int
	switch {
	case c.grant != nil:
		if f.lock != nil {
			add(true, kvOp(capi.KVDeleteCAS, lk, f.lock.ModifyIndex, nil))
		}
		var rec []byte
		ttl := time.Duration(c.grant.TTL) * time.Millisecond
		if c.keep {
			sq, sn = f.qidx, c.served
		}
		rec, exp = newRecordServed(c.grant.Holder, start, ttl, sq, sn, c.grant.V)
		add(true, kvOp(capi.KVCAS, lk, 0, rec))
	case c.release:
		// delete-cas of an absent key succeeds: check-index first.
		add(true, kvOp(capi.KVCheckIndex, lk, f.lock.ModifyIndex, nil))
		add(false, kvOp(capi.KVDelete, lk, 0, nil))
		add(false, kvOp(capi.KVSet, b.notifyKey(key), 0, notifyValue()))
	case f.lock != nil:
		add(true, kvOp(capi.KVCheckIndex, lk, f.lock.ModifyIndex, nil))
	default:
		add(true, kvOp(capi.KVCheckNotExists, lk, 0, nil))
	}
	switch {
	case c.keep && f.qidx != 0:
		add(true, kvOp(capi.KVCheckIndex, qk, f.qidx, nil))
	case c.keep:
		add(true, kvOp(capi.KVCheckNotExists, qk, 0, nil))
	case len(c.q) > 0:
		v, _ := json.Marshal(c.q)
		if len(v) > maxQueueLen {
			return false, driver.Lease{}, after, fmt.Errorf("queue full (%d waiters)", len(c.q))
		}
		add(true, kvOp(capi.KVCAS, qk, f.qidx, v)) // index 0: only if absent
	case f.qidx != 0:
		add(true, kvOp(capi.KVCheckIndex, qk, f.qidx, nil))
		add(false, kvOp(capi.KVDelete, qk, 0, nil))
	default:
		add(true, kvOp(capi.KVCheckNotExists, qk, 0, nil))
	}
	ok, resp, err := b.txnIf(ctx, ops, func(i int) bool { return cond[i] })
	if err != nil || !ok {
		return ok, driver.Lease{}, after, err
	}
	after = fairState{q: c.q, known: true}
	if c.keep {
		after.q, after.qidx = f.q, f.qidx
	} else if len(c.q) > 0 {
		// Consul does not move the index of a write of the value held.
		if w := written(resp, qk); w != nil {
			after.qidx = w.ModifyIndex
		} else {
			after.known = false
		}
	}
	if c.grant == nil {
		return true, driver.Lease{}, after, nil
	}
	w := written(resp, lk)
	if w == nil {
		return false, driver.Lease{}, after, errors.New("transaction result lacks the lock key")
	}
	return true, driver.Lease{Key: key, Holder: c.grant.Holder, Token: w.CreateIndex,
		TTL: time.Duration(c.grant.TTL) * time.Millisecond, Handle: handleServed(w.ModifyIndex, exp, sq, sn, w.CreateIndex, c.grant.Holder)}, after, nil
}

// errFairBusy: fairRounds rounds all met concurrent writes.
var errFairBusy = errors.New("lock and queue keys kept changing under concurrent writes")

// Enqueue implements driver.Queuer: a read of the lock and queue keys,
// then, unless holder holds the key already, one conditioned
// transaction that does steps 1 and 3 to 5 at once (see fairWrite).
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, err
	}
	ttl = roundTTL(ttl)
	for range fairRounds {
		f, err := b.readFair(ctx, key)
		if err != nil {
			return driver.Lease{}, err
		}
		now := time.Now()
		if f.holds(holder) && now.Before(time.UnixMilli(f.rec.Expiry)) {
			// Step 2: granted meanwhile. The lease's TTL is what is
			// left of the grant by this clock, but never more than the
			// TTL the grant recorded: the client counts the Deadline
			// from before this holder queued, before the grant was
			// written, and a waiter that saw the grant takes over at
			// its sighting plus the recorded TTL (heldUntil); an expiry
			// written on a clock ahead of this one must not stretch
			// the Deadline past that.
			left := time.UnixMilli(f.rec.Expiry).Sub(now)
			if f.rec.TTL > 0 {
				left = min(left, time.Duration(f.rec.TTL)*time.Millisecond)
			}
			l := driver.Lease{Key: key, Holder: holder, Token: f.lock.CreateIndex, TTL: left,
				Handle: handleServed(f.lock.ModifyIndex, f.rec.Expiry, f.rec.SQ, f.rec.SN, f.lock.CreateIndex, holder)}
			b.takeLocal(key, holder)
			b.holdQueue(l, &fairState{qidx: f.qidx, q: f.q})
			return l, nil
		}
		q := b.pruned(f, now)
		var c change
		live := b.leaseLive(f, now)
		if !live && (len(q) == 0 || q[0].Holder == holder) {
			// Step 3: holder's turn.
			c.grant = &entry{Holder: holder, TTL: ttl.Milliseconds(), V: sightedV}
			c.q = slices.DeleteFunc(q, func(e entry) bool { return e.Holder == holder })
			ok, l, after, err := b.fairWrite(ctx, key, f, c, now)
			if err != nil {
				return driver.Lease{}, err
			}
			if ok {
				b.takeLocal(key, holder)
				b.holdQueue(l, seed(after))
				return l, nil
			}
			continue
		}
		if !live {
			// Step 4: the first waiter's turn.
			c.grant, q = &q[0], q[1:]
		}
		// Step 5: queued, or renewed in place.
		me := entry{Holder: holder, Expiry: ceilMs(now.Add(ttl)), TTL: ttl.Milliseconds(), V: sightedV}
		if i := slices.IndexFunc(q, func(e entry) bool { return e.Holder == holder }); i >= 0 {
			q[i] = me
		} else {
			q = append(q, me)
		}
		c.q = q
		// Noted before the write: a grant to holder can be seen (by this
		// process's grant watch, which then starts the new holder's
		// queue watch) before the write's answer is. A note for an entry
		// that did not land expires with it.
		b.noteLocal(key, holder, me.Expiry)
		ok, g, _, err := b.fairWrite(ctx, key, f, c, now)
		if err != nil {
			return driver.Lease{}, err
		}
		if !ok {
			continue
		}
		var left time.Duration
		switch {
		case c.grant != nil:
			left = g.TTL + b.o.ClockSkew
		case f.lock != nil:
			left = time.Until(b.heldUntil(f.lock.Key, f.lock, f.rec, now))
		}
		return driver.Lease{}, &driver.HeldError{Remaining: left}
	}
	return driver.Lease{}, &driver.HeldError{}
}

// Dequeue implements driver.Queuer: a read, then (if holder is queued or
// holds the key) one conditioned transaction that removes holder's entry
// and, if holder holds the key, hands it over as HandOff does.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.takeLocal(key, holder)
	for range fairRounds {
		f, err := b.readFair(ctx, key)
		if err != nil {
			return err
		}
		holds := f.holds(holder)
		if !holds && !slices.ContainsFunc(f.q[f.served():], func(e entry) bool { return e.Holder == holder }) {
			return nil
		}
		now := time.Now()
		c := change{q: slices.DeleteFunc(b.pruned(f, now), func(e entry) bool { return e.Holder == holder })}
		if holds {
			c = handOn(c.q)
		}
		ok, g, after, err := b.fairWrite(ctx, key, f, c, now)
		if err != nil {
			return err
		}
		if ok {
			if holds {
				b.handedOn(key, f.lock.CreateIndex, g, after)
			}
			return nil
		}
	}
	return errFairBusy
}

// handedOn follows the end of key's lease of token, handed to g (none if
// g.Holder is empty), the queue left as after: the watch of the queue for
// the old lease stops, and one starts for g if g's holder queued from
// this process.
func (b *backend) handedOn(key string, token uint64, g driver.Lease, after fairState) {
	b.dropQueue(key, token)
	if g.Holder != "" && b.takeLocal(key, g.Holder) {
		b.holdQueue(g, seed(after))
	}
}

// seed is after as a seed for holdQueue: nil if it is not known.
func seed(after fairState) *fairState {
	if !after.known {
		return nil
	}
	return &after
}

// handOver is HandOff's change: a grant to the first live waiter of f,
// the queue key left as read (the new record marks the entries up to
// the waiter's as served), or, with no live waiter, a release that
// deletes the queue key (its entries served or expired).
func (b *backend) handOver(f fairState, now time.Time) change {
	for i := f.served(); i < len(f.q); i++ {
		if b.live(f.q[i], now) {
			return change{grant: &f.q[i], keep: true, served: i + 1}
		}
	}
	return change{release: true}
}

// handOn is the change that ends the current lease: a grant to the first
// of q (live entries), or, with q empty, a release.
func handOn(q []entry) change {
	if len(q) == 0 {
		return change{release: true}
	}
	return change{grant: &q[0], q: q[1:]}
}

// HandOff implements driver.Queuer: a read of the lock and queue keys
// (which also checks that l is current), then one transaction,
// conditioned on both as read, that replaces l's lock key by the first
// live waiter's lease and writes the rest of the queue; with no live
// waiter it deletes the lock key (and a queue of expired entries) and
// writes the notify key, as Release does. The grant reaches the waiter's
// process through its grant subscription's blocking query on the key's
// directory, which the new lock key answers.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, err
	}
	if idx, exp := handleIndex(l); idx != 0 && time.Now().Before(exp) {
		if f, ok := b.cachedQueue(l.Key, l.Token); ok {
			// The lock key as l's last write left it, the queue as the
			// watch saw it: if both still are, no read is needed.
			sq, sn := handleQueue(l)
			f.lock = &capi.KVPair{Key: b.lockKey(l.Key), CreateIndex: l.Token, ModifyIndex: idx}
			f.rec, f.recOK = record{Holder: l.Holder, Expiry: exp.UnixMilli(), SQ: sq, SN: sn}, true
			now := time.Now()
			ok, g, after, err := b.fairWrite(ctx, l.Key, f, b.handOver(f, now), now)
			if err != nil {
				return driver.Lease{}, err
			}
			if ok {
				b.handedOn(l.Key, l.Token, g, after)
				return g, nil
			}
		}
	}
	for range fairRounds {
		f, err := b.readFair(ctx, l.Key)
		if err != nil {
			return driver.Lease{}, err
		}
		if !f.holds(l.Holder) || f.lock.CreateIndex != l.Token {
			b.dropQueue(l.Key, l.Token)
			return driver.Lease{}, driver.ErrLost
		}
		now := time.Now()
		ok, g, after, err := b.fairWrite(ctx, l.Key, f, b.handOver(f, now), now)
		if err != nil {
			return driver.Lease{}, err
		}
		if !ok {
			continue
		}
		b.handedOn(l.Key, l.Token, g, after)
		if !now.Before(time.UnixMilli(f.rec.Expiry)) {
			return driver.Lease{}, fmt.Errorf("%w (it had expired; its lock, still unclaimed, was handed over)", driver.ErrLost)
		}
		return g, nil
	}
	return driver.Lease{}, errFairBusy
}

// SubscribeGrants implements driver.Queuer: one read of the lock key,
// then a blocking query on key's directory (or a place in the poll loop,
// beyond MaxWatches), separate from Subscribe's. A read that finds a lock
// key created since the last read (a new CreateIndex) delivers its record
// as a grant; one that finds the lock key gone (released with nobody
// live queued, revoked, swept), a failed read and the first read after
// one deliver a zero Lease.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, resp, err := b.txn(ctx, capi.TxnOps{kvOp(capi.KVGetOrEmpty, b.lockKey(key), 0, nil)}, 0)
	if err != nil {
		return err
	}
	if len(resp.Results) != 1 || resp.Results[0].KV == nil {
		return driver.Misconfigured(errUnreadable)
	}
	s := &grantSub{b: b, lk: b.lockKey(key), key: key, lease: resp.Results[0].KV.CreateIndex, grant: grant}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return driver.ErrClosed
	}
	b.watchLocked(subID{key: key, grants: true}, s)
	return nil
}

// UnsubscribeGrants implements driver.Queuer.
func (b *backend) UnsubscribeGrants(key string) { b.unwatch(subID{key: key, grants: true}) }

// grantSub is the sub of a key's grants.
type grantSub struct {
	b       *backend
	polled  bool // read by the poll loop, under b.mu: no queueWatch from seen
	lk, key string
	lease   uint64 // the lock key's CreateIndex last seen; 0: none
	grant   func(driver.Lease)
}

func (s *grantSub) seen(pairs capi.KVPairs, gap bool) bool {
	var lock *capi.KVPair
	for _, p := range pairs {
		if p.Key == s.lk {
			lock = p
		}
	}
	var idx uint64
	if lock != nil {
		idx = lock.CreateIndex
	}
	prev := s.lease
	s.lease = idx
	switch {
	case gap:
		s.grant(driver.Lease{}) // a grant may have come and gone unseen
		return true
	case idx == prev:
		return false
	case lock == nil:
		s.grant(driver.Lease{}) // waiters re-enqueue: the key is free
		return true
	}
	r, ok := parseRecord(lock.Value)
	if !ok {
		return false
	}
	g := driver.Lease{Key: s.key, Holder: r.Holder, Token: idx, TTL: time.Duration(r.TTL) * time.Millisecond,
		Handle: handleServed(lock.ModifyIndex, r.Expiry, r.SQ, r.SN, idx, r.Holder)}
	s.grant(g)
	if !s.polled && s.b.takeLocal(s.key, g.Holder) {
		// Granted to a waiter of this process (after the grant: its
		// blocking query's first request does not delay the waiter).
		s.b.holdQueue(g, nil)
	}
	return true
}

func (s *grantSub) failed() { s.grant(driver.Lease{}) }
