package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

var _ driver.Queuer = (*backend)(nil)

// queueRounds bounds the multi-ops of one Enqueue, Dequeue or HandOff
// that fail because the queue or the claim changed between their reads
// and their multi-op (each then reads again).
const queueRounds = 2 * attempts

func (b *backend) queuePath(key string) string { return b.root + "/q/" + keys.Encode(key) }

// entry is one waiter's node in a key's queue: q/ENC/HOLDER-SEQUENCE,
// ephemeral and sequential, holding its TTL in ms; it expires at its
// mtime (its last Enqueue, the leader's clock) plus that TTL.
type entry struct {
	name    string
	holder  string
	version int32
	ttl     int64 // ms
	expires int64 // leader's clock, Unix ms
}

// node is a znode's data and stat, as read.
type node struct {
	d  []byte
	st *zk.Stat
}

// queueState is what a queue operation read of a key's queue.
type queueState struct {
	exists  bool  // q/ENC exists
	version int32 // its data version: bumped by every entry added
	live    []entry
	expired []entry
}

// find returns the index of holder's live entry, -1 if none.
func (q *queueState) find(holder string) int {
	return slices.IndexFunc(q.live, func(e entry) bool { return e.holder == holder })
}

// leaderClock is the leader's clock, read (by a write of the clock node)
// at most once per operation, only when the local clock says something
// has run out.
type leaderClock struct {
	now  int64 // Unix ms
	read bool
}

// over reports whether a TTL of ttl ms expiring at expires (the leader's
// clock) has run out, as remaining judges a lease: by the local clock,
// and if that says so, by the leader's.
func (b *backend) over(ctx context.Context, c *leaderClock, expires, ttl int64) (bool, error) {
	left := func(now int64) int64 { return min(expires+1-now, ttl) } // see remaining
	if left(time.Now().UnixMilli()) > 0 {
		return false, nil
	}
	if !c.read {
		st, err := call(ctx, b, func() (*zk.Stat, error) { return b.conn.Set(b.root+"/clock", nil, -1) })
		if err != nil {
			return false, err
		}
		c.now, c.read = st.Mtime, true
	}
	return left(c.now) <= 0, nil
}

// readQueue lists key's queue (one round trip) and reads its entries
// (one more, pipelined), and judges them (see judge).
func (b *backend) readQueue(ctx context.Context, key string) (queueState, error) {
	raw, _, err := b.listQueue(ctx, key, false)
	if err != nil {
		return queueState{}, err
	}
	return b.judge(ctx, raw)
}

// rawQueue is a key's queue as read: its entries in queue order, not
// judged yet.
type rawQueue struct {
	exists  bool
	version int32
	entries []entry
}

// listQueue lists key's queue (one round trip) and reads its entries (one
// more, pipelined: go-zk sends concurrent requests without waiting for
// replies). With watch, it also sets a child watch on the queue node (an
// existence watch while it is absent) and returns its channel.
func (b *backend) listQueue(ctx context.Context, key string, watch bool) (rawQueue, <-chan zk.Event, error) {
	dir := b.queuePath(key)
	type listing struct {
		names []string
		st    *zk.Stat
		ch    <-chan zk.Event
	}
	ls, err := call(ctx, b, func() (listing, error) {
		for {
			if !watch {
				names, st, err := b.conn.Children(dir)
				return listing{names, st, nil}, err
			}
			names, st, ch, err := b.conn.ChildrenW(dir)
			if !errors.Is(err, zk.ErrNoNode) {
				return listing{names, st, ch}, err
			}
			ok, _, ch, err := b.conn.ExistsW(dir)
			if err != nil || !ok {
				return listing{nil, nil, ch}, err
			}
			// Created in between: that watch fires at once; list again.
		}
	})
	if errors.Is(err, zk.ErrNoNode) {
		return rawQueue{}, nil, nil
	}
	if err != nil {
		return rawQueue{}, nil, err
	}
	if ls.st == nil {
		return rawQueue{}, ls.ch, nil // absent, watched
	}
	raw := rawQueue{exists: true, version: ls.st.Version}
	seq := func(n string) string { return n[max(0, len(n)-10):] }
	slices.SortFunc(ls.names, func(a, b string) int { return strings.Compare(seq(a), seq(b)) })
	es := make([]entry, len(ls.names))
	errs := make([]error, len(ls.names))
	driver.Each(len(ls.names), inFlight, func(i int) {
		n := ls.names[i]
		data, err := call(ctx, b, func() (node, error) {
			d, st, err := b.conn.Get(dir + "/" + n)
			return node{d, st}, err
		})
		if errors.Is(err, zk.ErrNoNode) {
			return // dequeued, or its session ended, meanwhile
		}
		if err != nil {
			errs[i] = err
			return
		}
		ms, perr := strconv.ParseInt(string(data.d), 10, 64)
		h := n[:max(0, len(n)-11)]
		if perr != nil || len(n) < 12 || !validHolder(h) {
			errs[i] = fmt.Errorf("queue entry %s/%s holds %q: not written by this package", dir, n, data.d)
			return
		}
		es[i] = entry{name: n, holder: h, version: data.st.Version, ttl: ms, expires: data.st.Mtime + ms}
	})
	if err := firstErr(errs); err != nil {
		return rawQueue{}, nil, err
	}
	for _, e := range es {
		if e.name != "" {
			raw.entries = append(raw.entries, e)
		}
	}
	return raw, ls.ch, nil
}

// judge sorts raw's entries into live and expired, in queue order, by
// the local clock, and by the leader's for those the local clock says
// have run out (see over).
func (b *backend) judge(ctx context.Context, raw rawQueue) (queueState, error) {
	c := &leaderClock{}
	q := queueState{exists: raw.exists, version: raw.version}
	for _, e := range raw.entries {
		gone, err := b.over(ctx, c, e.expires, e.ttl)
		if err != nil {
			return queueState{}, err
		}
		if gone {
			q.expired = append(q.expired, e)
		} else {
			q.live = append(q.live, e)
		}
	}
	return q, nil
}

// pruneOps delete q's expired entries at the versions read: a waiter that
// renewed its entry meanwhile makes the multi-op fail (ErrBadVersion).
func (b *backend) pruneOps(key string, q queueState) []any {
	var ops []any
	for _, e := range q.expired {
		ops = append(ops, &zk.DeleteRequest{Path: b.queuePath(key) + "/" + e.name, Version: e.version})
	}
	return ops
}

// grantOps grant key to the waiter of live entry e (whose queue is q),
// the claim's previous nodes gone: persistent lock and owner nodes (the
// waiter's session did not make them; the lease ends by its TTL), the
// lock naming the holder and its TTL, and e deleted. The final setData's
// stat, whose czxid is this transaction's zxid, is the token.
func (b *backend) grantOps(key string, e entry) []any {
	d := ttlData(e.ttl)
	owner := b.ownerPath(key, e.holder)
	return []any{
		&zk.DeleteRequest{Path: b.queuePath(key) + "/" + e.name, Version: -1},
		&zk.CreateRequest{Path: b.lockPath(key), Data: []byte(e.holder + "/" + string(d)), Acl: b.acl},
		&zk.CreateRequest{Path: owner, Data: d, Acl: b.acl},
		&zk.SetDataRequest{Path: owner, Data: d, Version: 0},
	}
}

// granted is the lease grantOps(e) made, from their multi-op's replies
// res (the grant's setData at index i).
func granted(key string, e entry, res []zk.MultiResponse, i int) driver.Lease {
	st := res[i].Stat
	return driver.Lease{Key: key, Holder: e.holder, Token: uint64(st.Czxid), TTL: time.Duration(e.ttl) * time.Millisecond, Handle: handle(st)}
}

// releasedOps end the queue's part of a release that grants nobody: they
// prove q unchanged since it was read (no entry added: an entry added
// after the read would be stranded behind a free key), and delete q (or
// prove it absent).
func (b *backend) releasedOps(key string, q queueState) []any {
	dir := b.queuePath(key)
	if q.exists {
		return []any{&zk.DeleteRequest{Path: dir, Version: q.version}}
	}
	return []any{&zk.CreateRequest{Path: dir, Acl: b.acl}, &zk.DeleteRequest{Path: dir, Version: -1}}
}

// raced reports whether err is a multi-op's failure on state that
// changed since it was read (then the operation reads again).
func raced(err error) bool {
	return errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrNodeExists) ||
		errors.Is(err, zk.ErrBadVersion) || errors.Is(err, zk.ErrNotEmpty)
}

// readClaimQueue reads key's claim (inspect: two round trips) and its
// queue (readQueue: two), concurrently.
func (b *backend) readClaimQueue(ctx context.Context, key string) (s holderState, held bool, q queueState, err error) {
	var wg sync.WaitGroup
	var qerr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		q, qerr = b.readQueue(ctx, key)
	}()
	s, held, err = b.inspect(ctx, key)
	wg.Wait()
	if err == nil {
		err = qerr
	}
	return s, held, q, err
}

// Enqueue implements driver.Queuer. It first tries to claim a free key
// with an empty queue outright: one multi-op that also creates and
// deletes the queue node (proving it absent) with the claim's nodes
// (skipped for a holder this process queued: its renewals). If that
// fails, it reads the claim and the queue (two round trips, the
// reads pipelined), judges expiry as TryClaim does (a write of the clock
// node when the local clock says something ran out), and makes the step
// the contract says in one multi-op, guarded by what it read: the live
// holder's owner node (step 5), the versions of the expired entries it
// drops, the entries it grants and renews, the claim nodes it creates.
// A multi-op that fails on a change in between reads again, within
// queueRounds; after that the caller is told the key is held (and
// enqueues again).
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if !validHolder(holder) {
		return driver.Lease{}, fmt.Errorf("holder %q cannot name a znode", holder)
	}
	if err := b.setup(ctx); err != nil {
		return driver.Lease{}, err
	}
	ttlMS := ceilMS(ttl)
	lock := b.lockPath(key)
	dir := b.queuePath(key)
	b.mu.Lock()
	_, queued := b.waiting[holder]
	b.mu.Unlock()
	if !queued { // a holder this process queued renews: the key was held
		ops := append(b.releasedOps(key, queueState{}), b.claimOps(key, holder, ttlMS, nil)...)
		res, _, err := b.multi(ctx, ops...)
		if err == nil {
			return b.claimedFair(key, holder, ttlMS, res), nil
		}
		if !raced(err) {
			return driver.Lease{}, err
		}
	}
	held := &driver.HeldError{}
	for range queueRounds {
		s, isHeld, q, err := b.readClaimQueue(ctx, key)
		if err != nil {
			return driver.Lease{}, err
		}
		ops := b.pruneOps(key, q)
		var prev *holderState
		if isHeld {
			rem, err := b.remaining(ctx, s)
			if err != nil {
				return driver.Lease{}, err
			}
			if rem > 0 && s.holder == holder {
				b.left(holder)
				b.track(key, rem)
				return s.lease(key), nil // step 2
			}
			if rem > 0 {
				held.Remaining = rem
				ops = append(ops, &zk.CheckVersionRequest{Path: b.ownerPath(key, s.holder), Version: -1})
			} else {
				prev = &s
			}
		}
		mine := q.find(holder)
		var grantee *entry
		if !isHeld || prev != nil {
			if len(q.live) == 0 || mine == 0 {
				// Step 3: the key is ours.
				if mine == 0 {
					ops = append(ops, &zk.DeleteRequest{Path: dir + "/" + q.live[0].name, Version: -1})
				}
				ops = append(ops, b.claimOps(key, holder, ttlMS, prev)...)
				res, _, err := b.multi(ctx, ops...)
				if err == nil {
					return b.claimedFair(key, holder, ttlMS, res), nil
				}
				if !raced(err) {
					return driver.Lease{}, err
				}
				continue
			}
			// Step 4: the first waiter's.
			if prev != nil {
				ops = append(ops,
					&zk.DeleteRequest{Path: b.ownerPath(key, prev.holder), Version: prev.ownerVersion},
					&zk.DeleteRequest{Path: lock, Version: -1})
			}
			ops = append(ops, b.grantOps(key, q.live[0])...)
			held.Remaining = time.Duration(q.live[0].ttl) * time.Millisecond
			grantee = &q.live[0]
		}
		// Step 5: queued.
		d := ttlData(ttlMS)
		switch {
		case mine >= 0:
			ops = append(ops, &zk.SetDataRequest{Path: dir + "/" + q.live[mine].name, Data: d, Version: -1})
		case q.exists:
			ops = append(ops,
				&zk.SetDataRequest{Path: dir, Version: -1},
				&zk.CreateRequest{Path: dir + "/" + holder + "-", Data: d, Acl: b.acl, Flags: zk.FlagEphemeral | zk.FlagSequence})
		default:
			ops = append(ops,
				&zk.CreateRequest{Path: dir, Acl: b.acl},
				&zk.CreateRequest{Path: dir + "/" + holder + "-", Data: d, Acl: b.acl, Flags: zk.FlagEphemeral | zk.FlagSequence})
		}
		_, _, err = b.multi(ctx, ops...)
		if err == nil {
			b.enqueued(holder)
			if grantee != nil {
				b.holds(key, grantee.holder, time.Duration(grantee.ttl)*time.Millisecond)
			}
			return driver.Lease{}, held
		}
		if !raced(err) {
			return driver.Lease{}, err
		}
	}
	return driver.Lease{}, held
}

// claimedFair is the lease claimOps made for holder (their replies res
// end with their final setData's), which holds key fairly: its queue is
// tracked from now on.
func (b *backend) claimedFair(key, holder string, ttlMS int64, res []zk.MultiResponse) driver.Lease {
	st := res[len(res)-1].Stat
	l := driver.Lease{Key: key, Holder: holder, Token: uint64(st.Czxid), TTL: time.Duration(ttlMS) * time.Millisecond, Handle: handle(st)}
	b.left(holder)
	b.track(key, l.TTL)
	return l
}

// handOn ends the claim of holder on key with ops (which end it, and fail
// on their first op if it is not current) and, in the same multi-op,
// grants key to q's first live waiter, or proves nobody was queued since
// q was read (releasedOps). It returns the grant (zero if none), and the
// failed op's index with a multi-op's error.
func (b *backend) handOn(ctx context.Context, key string, q queueState, end []any) (driver.Lease, int, error) {
	ops := append(append([]any{}, end...), b.pruneOps(key, q)...)
	if len(q.live) == 0 {
		ops = append(ops, b.releasedOps(key, q)...)
		_, failed, err := b.multi(ctx, ops...)
		return driver.Lease{}, failed, err
	}
	ops = append(ops, b.grantOps(key, q.live[0])...)
	res, failed, err := b.multi(ctx, ops...)
	if err != nil {
		return driver.Lease{}, failed, err
	}
	return granted(key, q.live[0], res, len(ops)-1), -1, nil
}

// HandOff implements driver.Queuer: one multi-op that ends l (deleting
// its owner node fails the whole if l is not current: ErrLost), drops the
// expired entries, and grants the key to the first live waiter (grantOps)
// or, with none, proves the queue unchanged (releasedOps). It takes the
// queue from the listing this process kept while it held the key (see
// track.go): one round trip. Without one, or when the listing was out of
// date and the multi-op failed, it lists the queue and reads its entries
// first (two round trips, the reads pipelined), within queueRounds. The
// lock node's deletion, and re-creation for the waiter, fire every watch
// on it after the transaction: the waiter's process reads the grant with
// its re-arm (SubscribeGrants).
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	if err := b.setup(ctx); err != nil {
		return driver.Lease{}, err
	}
	expired, err := b.lapsed(ctx, l)
	if err != nil {
		return driver.Lease{}, err
	}
	raw := b.tracked(l.Key)
	for range queueRounds {
		var q queueState
		if raw != nil {
			q, err = b.judge(ctx, *raw)
			raw = nil // once: if it was out of date, read the queue
		} else {
			q, err = b.readQueue(ctx, l.Key)
		}
		if err != nil {
			return driver.Lease{}, err
		}
		next, failed, err := b.handOn(ctx, l.Key, q, b.releaseOps(l.Key, l.Holder))
		switch {
		case errors.Is(err, zk.ErrNoNode) && failed == 0:
			return driver.Lease{}, driver.ErrLost
		case err == nil && expired:
			return driver.Lease{}, fmt.Errorf("%w (it had expired; its lock, still unclaimed, was handed on)", driver.ErrLost)
		case err == nil:
			if next.Holder != "" {
				b.holds(l.Key, next.Holder, next.TTL)
			}
			return next, nil
		case !raced(err):
			return driver.Lease{}, err
		}
	}
	return driver.Lease{}, errors.New("the queue kept changing under concurrent waiters")
}

// Dequeue implements driver.Queuer: it reads the claim and the queue (as
// Enqueue), then deletes holder's entry in one multi-op, which, if the
// key's lease is holder's (granted meanwhile), also ends it and hands it
// on as HandOff does.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	if !validHolder(holder) {
		return nil // never queued
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	b.left(holder)
	for range queueRounds {
		s, isHeld, q, err := b.readClaimQueue(ctx, key)
		if err != nil {
			return err
		}
		var ops []any
		for _, e := range append(slices.Clone(q.live), q.expired...) {
			if e.holder == holder {
				ops = append(ops, &zk.DeleteRequest{Path: b.queuePath(key) + "/" + e.name, Version: -1})
			}
		}
		q.live = slices.DeleteFunc(q.live, func(e entry) bool { return e.holder == holder })
		q.expired = slices.DeleteFunc(q.expired, func(e entry) bool { return e.holder == holder })
		if isHeld && s.holder == holder {
			end := append(ops,
				&zk.DeleteRequest{Path: b.ownerPath(key, holder), Version: s.ownerVersion},
				&zk.DeleteRequest{Path: b.lockPath(key), Version: -1})
			var next driver.Lease
			if next, _, err = b.handOn(ctx, key, q, end); err == nil && next.Holder != "" {
				b.holds(key, next.Holder, next.TTL)
			}
		} else if len(ops) > 0 {
			_, _, err = b.multi(ctx, ops...)
		}
		if err == nil || !raced(err) {
			return err
		}
	}
	return errors.New("the queue kept changing under concurrent waiters")
}

// SubscribeGrants implements driver.Queuer: a data watch on the key's
// lock node (an existence watch while it is absent), kept armed; each
// re-arm reads the node, and a lock naming a holder with a TTL (granted
// to a waiter) not delivered yet is delivered. A lock found absent after
// it fired, or the session's watches lost, is delivered as a zero Lease
// (the key is free or a grant may have been missed: waiters enqueue
// again), as is a connection lost for longer than a moment (see
// sessionEvent).
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	g := &grantWatch{b: b, key: key, path: b.lockPath(key)}
	err := b.subscribe(ctx, b.grants, key, func(_ []byte, reset bool) {
		if reset {
			grant(driver.Lease{})
			return
		}
		grant(g.pending)
	}, g.arm, g.fired)
	if err == nil {
		b.pollNewConn()
	}
	return err
}

// UnsubscribeGrants implements driver.Queuer.
func (b *backend) UnsubscribeGrants(key string) { b.unsubscribe(b.grants, key) }

// grantWatch is the state of one key's grant watch, used by its goroutine
// only (after the first arm, made by SubscribeGrants).
type grantWatch struct {
	b       *backend
	key     string
	path    string
	exists  bool
	data    []byte
	st      *zk.Stat
	last    int64        // czxid of the last grant delivered
	pending driver.Lease // the grant fired delivers
}

// arm reads the lock node and sets a data watch on it, or an existence
// watch while it is absent.
func (g *grantWatch) arm() (<-chan zk.Event, error) {
	for {
		data, st, ch, err := g.b.conn.GetW(g.path)
		if err == nil {
			g.exists, g.data, g.st = true, data, st
			return ch, nil
		}
		if !errors.Is(err, zk.ErrNoNode) {
			return nil, err
		}
		ok, st, ch, err := g.b.conn.ExistsW(g.path)
		if err != nil {
			return nil, err
		}
		if !ok {
			g.exists, g.data, g.st = false, nil, st
			return ch, nil
		}
		// Created in between: that watch fires at once; read it again.
	}
}

// fired delivers what the re-armed watch read.
func (g *grantWatch) fired(w *watcher, ev zk.Event, _ time.Time) bool {
	if ev.Type == zk.EventNotWatching || !g.exists {
		return w.call(nil, true)
	}
	h, ttl, ok := parseLock(g.data)
	if !ok || ttl == 0 || g.st.Czxid == g.last {
		return true
	}
	g.last = g.st.Czxid
	g.pending = driver.Lease{Key: g.key, Holder: h, Token: uint64(g.st.Czxid), TTL: time.Duration(ttl) * time.Millisecond, Handle: handle(g.st)}
	g.b.holds(g.key, h, g.pending.TTL)
	return w.call(nil, false)
}
