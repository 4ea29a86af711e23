package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

// The fair queue (driver.Queuer). A key's waiters are the keys
// queuePrefix(key)+holder, each on an etcd lease of its own that only its
// waiter's Enqueue renews, with that lease's TTL in seconds as value: etcd
// deletes the entry of a waiter that stopped renewing when the lease runs
// out, and the first entry by CreateRevision is the first live waiter
// (re-putting an entry keeps its CreateRevision, so renewing keeps the
// place). A grant puts the lock key for the waiter on the waiter's own
// etcd lease, deletes its entry, and puts the grant key (lockKey +
// grantSuffix, no etcd lease) with the grant record "holder lease ttl":
// the grant key's ModRevision is the grant's fencing token (see owned),
// and its put is what SubscribeGrants watches.

// fairPrefix starts the Handle of a lease the queue granted: "q:" and the
// etcd lease in hexadecimal. Such a lease is judged by the grant key (see
// owned), not by the lock key's CreateRevision.
const fairPrefix = "q:"

// grantSuffix makes the grant key of a lock key: it sorts in
// [lock, lock+"\x01"), like the notify key.
const grantSuffix = "\x00g"

// maxQueueTries bounds the transactions an Enqueue or HandOff runs when
// the queue or the lock key changes between its read and its write.
const maxQueueTries = 5

func (b *backend) grantKey(key string) string { return b.lockKey(key) + grantSuffix }

// queuePrefix is the prefix of key's queue entries: encoded keys have no
// control character, so no other key's entries share it.
func (b *backend) queuePrefix(key string) string { return b.prefix + "/q/" + keys.Encode(key) + "\x00" }

func fairHandle(id int64) string { return fairPrefix + handle(clientv3.LeaseID(id)) }

func isFair(l driver.Lease) bool { return strings.HasPrefix(l.Handle, fairPrefix) }

// firstEntry reads the head of a queue (sorted by CreateRevision).
func firstEntry(qp string) clientv3.Op { return clientv3.OpGet(qp, headOpts()...) }

func headOpts(opts ...clientv3.OpOption) []clientv3.OpOption {
	return append([]clientv3.OpOption{clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1)}, opts...)
}

// queueEmpty compares that no entry is in [from, end).
func queueEmpty(from, end string) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(from), "=", 0).WithRange(end)
}

// grantOps are the operations that grant key to the waiter of entry w (as
// read), and the lease they grant; ok is false if w is not an entry.
func grantOps(key, lk, gk, qp string, w *mvccpb.KeyValue) (ops []clientv3.Op, g driver.Lease, ok bool) {
	holder, ok := strings.CutPrefix(string(w.Key), qp)
	sec, err := strconv.ParseInt(string(w.Value), 10, 64)
	if !ok || err != nil || sec <= 0 || w.Lease == 0 || holder == "" {
		return nil, driver.Lease{}, false
	}
	g = driver.Lease{Key: key, Holder: holder, TTL: time.Duration(sec) * time.Second, Handle: fairHandle(w.Lease)}
	return []clientv3.Op{
		clientv3.OpPut(lk, holder, clientv3.WithLease(clientv3.LeaseID(w.Lease))),
		clientv3.OpPut(gk, grantRecord(holder, w.Lease, sec)),
		clientv3.OpDelete(string(w.Key)),
	}, g, true
}

// grantRecord is the grant key's value: holder, etcd lease (hex), TTL
// (seconds).
func grantRecord(holder string, lease, sec int64) string {
	return holder + " " + strconv.FormatInt(lease, 16) + " " + strconv.FormatInt(sec, 10)
}

// parseGrant returns the lease the grant key kv records (Token its
// ModRevision).
func parseGrant(key string, kv *mvccpb.KeyValue) (driver.Lease, bool) {
	f := strings.Fields(string(kv.Value))
	if len(f) != 3 {
		return driver.Lease{}, false
	}
	lease, err1 := strconv.ParseInt(f[1], 16, 64)
	sec, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || sec <= 0 {
		return driver.Lease{}, false
	}
	return driver.Lease{Key: key, Holder: f[0], Token: uint64(kv.ModRevision),
		TTL: time.Duration(sec) * time.Second, Handle: fairHandle(lease)}, true
}

// heldBy returns the lease that the lock key lk and grant key gk (as read)
// say holder holds: the queue's grant if the grant key records it, else a
// TryClaim's.
func heldBy(key, holder string, lk, gk []*mvccpb.KeyValue) (driver.Lease, bool) {
	if len(lk) != 1 || string(lk[0].Value) != holder {
		return driver.Lease{}, false
	}
	if len(gk) == 1 && gk[0].ModRevision >= lk[0].CreateRevision {
		if g, ok := parseGrant(key, gk[0]); ok && g.Holder == holder {
			g.Handle = fairHandle(lk[0].Lease) // an Extend may have moved it
			return g, true
		}
	}
	return driver.Lease{Key: key, Holder: holder, Token: uint64(lk[0].CreateRevision),
		TTL: 0, Handle: handle(clientv3.LeaseID(lk[0].Lease))}, true
}

// ownsKVs is owned judged on the lock and grant keys as read.
func ownsKVs(l driver.Lease, lk, gk []*mvccpb.KeyValue) bool {
	if len(lk) != 1 || string(lk[0].Value) != l.Holder {
		return false
	}
	if !isFair(l) {
		return uint64(lk[0].CreateRevision) == l.Token
	}
	return len(gk) == 1 && uint64(gk[0].ModRevision) == l.Token
}

// entryLease returns the etcd lease for holder's entry ek: the one it is
// on if this process put it there and it is fresh, else an idle one, else
// a new one; with the renewal (keep-alive) of a lease not granted just
// now under way on the channel.
func (b *backend) entryLease(ctx context.Context, cli *clientv3.Client, ek string, sec int64, now time.Time) (idleLease, chan error, error) {
	b.entMu.Lock()
	il, ok := b.entries[ek]
	b.entMu.Unlock()
	if !ok || il.ttl != sec || il.exp.Sub(now) < time.Duration(sec)*time.Second/2 {
		if il, ok = b.takeIdle(sec, now); !ok {
			g, err := cli.Grant(ctx, sec)
			if err != nil {
				return idleLease{}, nil, err
			}
			// The grant's TTL can be the server's minimum, not sec: the
			// next Enqueue looks for it under sec all the same.
			return idleLease{id: g.ID, ttl: g.TTL, exp: now.Add(time.Duration(g.TTL) * time.Second)}, nil, nil
		}
	}
	renewed := make(chan error, 1)
	go func() { renewed <- b.renew(ctx, cli, il.id) }()
	il.exp = now.Add(time.Duration(il.ttl) * time.Second)
	return il, renewed, nil
}

// keepEntry records that holder's entry ek is on il (queued), forget that
// it is not (granted, dequeued). An Enqueue records its entry once its
// write's answer says it is queued; a grant that this process's grant
// watch saw first (enqueuing) is not undone by that late record.
func (b *backend) keepEntry(ek string, il idleLease, sec int64) {
	b.entMu.Lock()
	defer b.entMu.Unlock()
	if b.enqueuing[ek] {
		return // granted already: il is the lock's lease now
	}
	if len(b.entries) >= maxSeen {
		now := time.Now()
		for k, e := range b.entries {
			if e.exp.Before(now) {
				delete(b.entries, k)
			}
		}
		if len(b.entries) >= maxSeen {
			clear(b.entries) // forgetting costs a new lease, not the place
		}
	}
	il.ttl = sec
	b.entries[ek] = il
}

// abandoned records that an Enqueue of entry ek on lease il ended without
// its answer: the write may land later (it may already have), putting the
// entry, or the lock key of a grant to its holder, on il. The entry is
// kept on il (a retry renews it in its place) and il is tainted: never
// kept idle, and revoked when the waiter leaves (Dequeue), so that a late
// write cannot queue, or hold the key for, a waiter that is gone.
func (b *backend) abandoned(ek string, il idleLease, sec int64) {
	b.taint(il.id, il.exp)
	b.entMu.Lock()
	defer b.entMu.Unlock()
	if !b.enqueuing[ek] {
		il.ttl = sec
		b.entries[ek] = il
	}
}

func (b *backend) forgetEntry(ek string) (idleLease, bool) {
	b.entMu.Lock()
	defer b.entMu.Unlock()
	il, ok := b.entries[ek]
	delete(b.entries, ek)
	return il, ok
}

// startEnqueue notes that an Enqueue of entry ek is under way; the
// function it returns ends the note.
func (b *backend) startEnqueue(ek string) (done func()) {
	b.entMu.Lock()
	b.enqueuing[ek] = false
	b.entMu.Unlock()
	return func() {
		b.entMu.Lock()
		delete(b.enqueuing, ek)
		b.entMu.Unlock()
	}
}

// granted is the grant watch's: the key was granted to the holder of
// entry ek. It reports whether that holder is a waiter of this process
// (its entry recorded, or its Enqueue still under way: a grant can be
// seen before the answer of the write that queued it), and forgets the
// entry.
func (b *backend) granted(ek string) bool {
	b.entMu.Lock()
	defer b.entMu.Unlock()
	_, ok := b.entries[ek]
	delete(b.entries, ek)
	if _, under := b.enqueuing[ek]; under {
		b.enqueuing[ek] = true
		ok = true
	}
	return ok
}

// Enqueue implements driver.Queuer. The common cases are one transaction
// (with a keep-alive of the entry's etcd lease sent alongside; a grant
// first if this process has no lease for the entry): if the lock key
// exists, holder's lease is returned if it holds it, else holder's entry
// is put (or renewed: its place kept); if not, the key is granted to
// holder when the queue holds nobody else. Otherwise (the lock key is
// free and another waiter is first, or holder is first with others
// behind it) the first waiter is granted the key by a second
// transaction, compared on the entry it read, and then holder queued as
// above. A holder whose deadline has passed (see takeoverAfter) has its
// lock key deleted by a transaction on its ModRevision, and then the
// first waiter is granted the key.
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, err
	}
	sec := b.leaseSeconds(ttl)
	lk, gk, qp := b.lockKey(key), b.grantKey(key), b.queuePrefix(key)
	ek := qp + holder
	start := time.Now()
	defer b.startEnqueue(ek)()
	il, renewed, err := b.entryLease(ctx, cli, ek, sec, start)
	if err != nil {
		return driver.Lease{}, b.fail(ctx, err)
	}
	renewal := func() error {
		if renewed == nil {
			return nil
		}
		err := <-renewed
		renewed = nil
		return err
	}
	// mine is the lease granted to holder by this call.
	mine := func(rev int64) driver.Lease {
		b.forgetEntry(ek)
		b.cacheQueue(key, holder)
		return driver.Lease{Key: key, Holder: holder, Token: uint64(rev), TTL: time.Duration(il.ttl) * time.Second, Handle: fairHandle(int64(il.id))}
	}
	grantMe := []clientv3.Op{
		clientv3.OpPut(lk, holder, clientv3.WithLease(il.id)),
		clientv3.OpPut(gk, grantRecord(holder, int64(il.id), il.ttl)),
		clientv3.OpDelete(ek),
	}
	put := clientv3.OpPut(ek, strconv.FormatInt(il.ttl, 10), clientv3.WithLease(il.id))
	for try := 0; ; try++ {
		if try == maxQueueTries {
			_ = renewal()
			return driver.Lease{}, fmt.Errorf("etcd: enqueue %q: the queue changed %d times under it", key, maxQueueTries)
		}
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(lk), ">", 0)).
			Then(clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.Value(lk), "=", holder)},
				[]clientv3.Op{clientv3.OpGet(lk), clientv3.OpGet(gk)},
				[]clientv3.Op{put, clientv3.OpGet(lk)})).
			Else(clientv3.OpTxn(
				// Nobody but holder queued: holder takes the key.
				[]clientv3.Cmp{queueEmpty(qp, ek), queueEmpty(ek+"\x00", clientv3.GetPrefixRangeEnd(qp))},
				grantMe,
				[]clientv3.Op{firstEntry(qp)})).
			Commit()
		got := time.Now()
		if err != nil {
			_ = renewal()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				b.forgetEntry(ek) // the entry's lease ran out: a new one next time
			} else {
				b.abandoned(ek, il, sec)
			}
			return driver.Lease{}, b.fail(ctx, err)
		}
		inner := resp.Responses[0].GetResponseTxn()
		switch {
		case resp.Succeeded && inner.Succeeded:
			// Step 2: holder holds the key already.
			_ = renewal()
			b.forgetEntry(ek)
			l, _ := heldBy(key, holder, inner.Responses[0].GetResponseRange().GetKvs(), inner.Responses[1].GetResponseRange().GetKvs())
			if l.TTL == 0 {
				l.TTL = time.Duration(il.ttl) * time.Second
			}
			b.cacheQueue(key, holder)
			return l, nil
		case resp.Succeeded:
			// Step 5: queued behind a live lease, unless its holder's
			// deadline has passed (step 4).
			held := &driver.HeldError{}
			if kvs := inner.Responses[1].GetResponseRange().GetKvs(); len(kvs) == 1 {
				var over bool
				held.Remaining, over = b.takeoverAfter(ctx, cli, lk, kvs[0], got)
				if over {
					if _, err := cli.Txn(ctx).
						If(clientv3.Compare(clientv3.ModRevision(lk), "=", kvs[0].ModRevision)).
						Then(clientv3.OpDelete(lk), clientv3.OpDelete(gk)).
						Commit(); err != nil {
						_ = renewal()
						return driver.Lease{}, b.fail(ctx, err)
					}
					continue
				}
			}
			if err := renewal(); err != nil {
				// The entry may lapse before its TTL: say so.
				b.forgetEntry(ek)
				return driver.Lease{}, b.fail(ctx, err)
			}
			b.keepEntry(ek, il, sec)
			return driver.Lease{}, held
		case inner.Succeeded:
			// Step 3: the key was free and nobody else queued.
			l := mine(resp.Header.Revision)
			if err := renewal(); err != nil {
				_, _ = b.HandOff(ctx, l) // the lease may end early: give it back
				return driver.Lease{}, b.fail(ctx, err)
			}
			return l, nil
		}
		// The key is free and someone is queued: grant it to the first
		// (step 3 if that is holder, step 4 otherwise), then go round.
		heads := inner.Responses[0].GetResponseRange().GetKvs()
		if len(heads) == 0 {
			continue // the queue emptied meanwhile
		}
		w := heads[0]
		ops, _, ok := grantOps(key, lk, gk, qp, w)
		if string(w.Key) == ek {
			ops, ok = grantMe, true
		}
		if !ok {
			if err := b.skipEntry(ctx, cli, w); err != nil {
				_ = renewal()
				return driver.Lease{}, err
			}
			continue
		}
		gr, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0),
				clientv3.Compare(clientv3.ModRevision(string(w.Key)), "=", w.ModRevision)).
			Then(ops...).
			Commit()
		switch {
		case err != nil && string(w.Key) != ek && errors.Is(err, rpctypes.ErrLeaseNotFound):
			// The first waiter's lease ran out: skip it.
			if err := b.skipEntry(ctx, cli, w); err != nil {
				_ = renewal()
				return driver.Lease{}, err
			}
		case err != nil:
			_ = renewal()
			if string(w.Key) == ek {
				b.abandoned(ek, il, sec) // it may have granted holder the key on il
			}
			return driver.Lease{}, b.fail(ctx, err)
		case gr.Succeeded && string(w.Key) == ek:
			l := mine(gr.Header.Revision)
			if err := renewal(); err != nil {
				_, _ = b.HandOff(ctx, l)
				return driver.Lease{}, b.fail(ctx, err)
			}
			return l, nil
		}
	}
}

// skipEntry deletes the queue entry w unless it changed since it was read:
// its etcd lease is gone (etcd deletes it shortly) or it is malformed.
func (b *backend) skipEntry(ctx context.Context, cli *clientv3.Client, w *mvccpb.KeyValue) error {
	_, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(string(w.Key)), "=", w.ModRevision)).
		Then(clientv3.OpDelete(string(w.Key))).
		Commit()
	return b.fail(ctx, err)
}

// Dequeue implements driver.Queuer: one transaction deletes holder's
// entry and reads the lock key; if the key had been granted to holder,
// HandOff then hands that lease on (two round trips, the lease fenced and
// holder's until then).
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	lk, gk := b.lockKey(key), b.grantKey(key)
	ek := b.queuePrefix(key) + holder
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(lk), "=", holder)).
		Then(clientv3.OpGet(lk), clientv3.OpGet(gk), clientv3.OpDelete(ek)).
		Else(clientv3.OpDelete(ek)).
		Commit()
	if err != nil {
		return b.fail(ctx, err)
	}
	il, ok := b.forgetEntry(ek)
	// An Enqueue on il that lost its answer (il tainted) may still land:
	// il is revoked once nothing of the waiter's is to be kept on it, so
	// that etcd refuses that late write (a put on a lease it no longer
	// has) instead of queueing the departed waiter again.
	revokeTainted := func() bool {
		if !ok || !b.untaint(il.id) {
			return false
		}
		if _, err := cli.Revoke(ctx, il.id); err != nil {
			b.revokeLater(il.id)
		}
		return true
	}
	if !resp.Succeeded {
		if !revokeTainted() && ok && resp.Responses[0].GetResponseDeleteRange().GetDeleted() == 1 {
			b.putIdle(il) // nothing is on it now
		}
		return nil
	}
	defer revokeTainted() // after the hand-over below: the key is on il until then
	l, held := heldBy(key, holder, resp.Responses[0].GetResponseRange().GetKvs(), resp.Responses[1].GetResponseRange().GetKvs())
	if !held {
		return nil
	}
	l.Deadline = time.Now() // not kept for a claim: revoked once handed on
	if _, err := b.HandOff(ctx, l); err != nil && !errors.Is(err, driver.ErrLost) {
		return err
	}
	return nil
}

// HandOff implements driver.Queuer: a serializable read of the queue's
// first entry (answered by the member the client talks to, no consensus
// round), then one transaction, compared on l's token and holder and on
// that entry's ModRevision, that puts the lock key for the waiter on its
// own etcd lease, puts the grant key and deletes the entry; with nobody
// queued (compared too), it deletes the lock and grant keys, as Release.
// If the queue changed in between, the transaction's failure branch reads
// it again and the transaction is retried (at most maxQueueTries times).
// If the first waiter's etcd lease has just run out (etcd is deleting its
// entry), its entry is deleted and the next one tried.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, err
	}
	lk, gk, qp := b.lockKey(l.Key), b.grantKey(l.Key), b.queuePrefix(l.Key)
	defer b.releasedQueue(l.Key, l.Holder)
	var heads []*mvccpb.KeyValue
	if head, ok := b.queueHead(l.Key); ok {
		if head != nil {
			heads = []*mvccpb.KeyValue{head}
		}
	} else {
		hr, err := cli.Get(ctx, qp, headOpts(clientv3.WithSerializable())...)
		if err != nil {
			return driver.Lease{}, b.fail(ctx, err)
		}
		heads = hr.Kvs
	}
	for range maxQueueTries {
		cmps := owned(lk, l)
		then := []clientv3.Op{clientv3.OpGet(lk, clientv3.WithKeysOnly())}
		var w *mvccpb.KeyValue
		var next driver.Lease
		if len(heads) == 0 {
			cmps = append(cmps, queueEmpty(qp, clientv3.GetPrefixRangeEnd(qp)))
			then = append(then, clientv3.OpDelete(gk), clientv3.OpDelete(lk))
		} else {
			w = heads[0]
			ops, g, ok := grantOps(l.Key, lk, gk, qp, w)
			if !ok {
				if err := b.skipEntry(ctx, cli, w); err != nil {
					return driver.Lease{}, err
				}
				heads, err = b.readHead(ctx, cli, qp)
				if err != nil {
					return driver.Lease{}, err
				}
				continue
			}
			// w unchanged, and first: no entry created before it.
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(string(w.Key)), "=", w.ModRevision),
				clientv3.Compare(clientv3.CreateRevision(qp), ">", w.CreateRevision-1).WithRange(clientv3.GetPrefixRangeEnd(qp)))
			then, next = append(then, ops...), g
		}
		resp, err := cli.Txn(ctx).If(cmps...).Then(then...).
			Else(clientv3.OpGet(lk), clientv3.OpGet(gk), firstEntry(qp)).
			Commit()
		if err != nil {
			if w == nil || !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				return driver.Lease{}, b.fail(ctx, err)
			}
			if err := b.skipEntry(ctx, cli, w); err != nil {
				return driver.Lease{}, err
			}
			if heads, err = b.readHead(ctx, cli, qp); err != nil {
				return driver.Lease{}, err
			}
			continue
		}
		if !resp.Succeeded {
			if !ownsKVs(l, resp.Responses[0].GetResponseRange().GetKvs(), resp.Responses[1].GetResponseRange().GetKvs()) {
				return driver.Lease{}, driver.ErrLost
			}
			heads = resp.Responses[2].GetResponseRange().GetKvs()
			continue
		}
		b.released(l, resp.Responses[0].GetResponseRange().GetKvs())
		if w == nil {
			return driver.Lease{}, nil
		}
		next.Token = uint64(resp.Header.Revision)
		return next, nil
	}
	return driver.Lease{}, fmt.Errorf("etcd: hand-off %q: the queue changed %d times under it", l.Key, maxQueueTries)
}

// readHead reads the queue's first entry (linearizable).
func (b *backend) readHead(ctx context.Context, cli *clientv3.Client, qp string) ([]*mvccpb.KeyValue, error) {
	r, err := cli.Get(ctx, qp, headOpts()...)
	if err != nil {
		return nil, b.fail(ctx, err)
	}
	return r.Kvs, nil
}

// released keeps or revokes the etcd lease of l, whose lock key (kvs, as
// read before) its release or hand-off detached: kept for a later claim
// if it is l's own and outlives l's Deadline by enough (putIdle).
func (b *backend) released(l driver.Lease, kvs []*mvccpb.KeyValue) {
	id := parseHandle(l)
	if id == 0 {
		return
	}
	if len(kvs) == 1 && kvs[0].Lease == int64(id) {
		// The client's Deadline is no later than etcd's expiry of the
		// lease it was counted for (an earlier copy's is earlier still).
		b.putIdle(idleLease{id: id, ttl: ceilSeconds(l.TTL), exp: l.Deadline})
	} else {
		b.revokeLater(id)
	}
}

// SubscribeGrants implements driver.Queuer: a watch of key's grant key,
// each put of which is a grant (Token its ModRevision). A broken watch or
// a lost connection calls grant with a zero Lease.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	gk, qp := b.grantKey(key), b.queuePrefix(key)
	s := &grantSub{id: gk + "/" + strconv.FormatUint(qcacheGen.Add(1), 10), grant: grant}
	err := b.watchAs(ctx, s.id, gk, gk+"\x00", s.reset, func(evs []*clientv3.Event) {
		for _, ev := range evs {
			if ev.Type != mvccpb.PUT {
				continue
			}
			if g, ok := parseGrant(key, ev.Kv); ok {
				s.deliver(g)
				// A local waiter's entry lease is the lock's now; and
				// its release will want to know the queue.
				if b.granted(qp + g.Holder) {
					b.cacheQueue(key, g.Holder)
				}
			}
		}
	}, func(bool) { s.reset() })
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.grantSubs[gk] = s
	b.mu.Unlock()
	return nil
}

// grantSub is one grant subscription: once stopped, it calls grant no
// more, whatever its watch still delivers.
type grantSub struct {
	id      string // its watch's registration
	mu      sync.Mutex
	stopped bool
	grant   func(driver.Lease)
}

func (s *grantSub) deliver(l driver.Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.grant(l)
	}
}

func (s *grantSub) reset() { s.deliver(driver.Lease{}) }

// UnsubscribeGrants implements driver.Queuer: the subscription stops
// delivering at once; its watch is cancelled in the background (a
// waiter that was just granted the key need not wait for it).
func (b *backend) UnsubscribeGrants(key string) {
	gk := b.grantKey(key)
	b.mu.Lock()
	s := b.grantSubs[gk]
	delete(b.grantSubs, gk)
	if s == nil {
		b.mu.Unlock()
		return
	}
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	if b.closed {
		b.mu.Unlock()
		return // Close stops every watch
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		b.unwatch(s.id)
	}()
}
