package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

// tryClaim is the driver's claim (driver.ClaimFunc): one transaction (if
// the lock key does not exist, put it on an etcd lease of the claim's own;
// with read, also get the value key, so the value is read at the claim's
// revision). The etcd lease is an idle one this process kept from an
// earlier claim of the same TTL, renewed by a keep-alive sent alongside the
// transaction (a leader-local call, not a raft write); only when none is
// idle is one granted first. If the key is held by a claim whose holder's
// deadline has passed (see takeoverAfter), the lock key is deleted by a
// transaction on its ModRevision and the claim made again.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	sec := b.leaseSeconds(ttl)
	start := time.Now()
	il, pooled := b.takeIdle(sec, start)
	var renewed chan error
	if pooled {
		renewed = make(chan error, 1)
		go func() { renewed <- b.renew(ctx, cli, il.id) }()
	} else {
		g, err := cli.Grant(ctx, sec)
		if err != nil {
			return driver.Lease{}, nil, false, b.fail(ctx, err)
		}
		il = idleLease{id: g.ID, ttl: g.TTL}
	}
	il.exp = start.Add(time.Duration(il.ttl) * time.Second)
	// renewal waits for the keep-alive: nil if the lease was granted
	// just now or renewed from start.
	renewal := func() error {
		if renewed == nil {
			return nil
		}
		err := <-renewed
		renewed = nil
		return err
	}
	lk := b.lockKey(key)
	then := []clientv3.Op{clientv3.OpPut(lk, holder, clientv3.WithLease(il.id))}
	if read {
		then = append(then, clientv3.OpGet(b.valueKey(key)))
	}
	var resp *clientv3.TxnResponse
	for attempt := 0; ; attempt++ {
		resp, err = cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
			Then(then...).
			Else(clientv3.OpGet(lk)).
			Commit()
		got := time.Now()
		if err != nil {
			// The claim may have landed on the lease: never reuse it.
			_ = renewal()
			b.revokeLater(il.id)
			return driver.Lease{}, nil, false, b.fail(ctx, err)
		}
		if resp.Succeeded {
			break
		}
		held := &driver.HeldError{}
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 1 {
			var over bool
			held.Remaining, over = b.takeoverAfter(ctx, cli, lk, kvs[0], got)
			if over && attempt == 0 {
				// The holder's deadline has passed: end its claim
				// unless it changed since (a renewal, a release).
				if _, err := cli.Txn(ctx).
					If(clientv3.Compare(clientv3.ModRevision(lk), "=", kvs[0].ModRevision)).
					Then(clientv3.OpDelete(lk)).
					Commit(); err != nil {
					_ = renewal()
					b.revokeLater(il.id)
					return driver.Lease{}, nil, false, b.fail(ctx, err)
				}
				continue
			}
			if over {
				held.Remaining = time.Millisecond
			}
		}
		if err := renewal(); err != nil {
			b.revokeLater(il.id)
		} else {
			b.putIdle(il)
		}
		return driver.Lease{}, nil, false, held
	}
	l := driver.Lease{
		Key:    key,
		Holder: holder,
		Token:  uint64(resp.Header.Revision), // the lock key's CreateRevision
		TTL:    time.Duration(il.ttl) * time.Second,
		Handle: handle(il.id),
	}
	if err := renewal(); err != nil {
		// The lease may end before the holder's deadline: give the
		// claim back (best effort; the lease is revoked, not kept).
		_ = b.Release(ctx, l)
		return driver.Lease{}, nil, false, b.fail(ctx, err)
	}
	if !read {
		return l, nil, false, nil
	}
	v, err := decodeValue(resp.Responses[1].GetResponseRange().GetKvs(), time.Now())
	switch {
	case err == nil:
		return l, v, true, nil
	case errors.Is(err, driver.ErrNotFound):
		return l, nil, false, nil
	}
	// The caller gets no lease: give it back (best effort).
	_ = b.Release(ctx, l)
	return driver.Lease{}, nil, false, err
}

// remaining asks how long the holder's lease has left. etcd truncates it to
// whole seconds, so the upper end of that second is returned; 0 if the
// lease is gone (its key is being deleted) or the call fails.
func remaining(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) time.Duration {
	r, err := cli.TimeToLive(ctx, id)
	if err != nil || r.TTL < 0 {
		return 0
	}
	return time.Duration(r.TTL+1) * time.Second
}

func handle(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }

// sharedPrefix marks the handle of a lease whose etcd lease holds the lock
// keys of every key of one TryClaimMany: renewing or revoking that etcd
// lease would renew or end the other keys' claims too.
const sharedPrefix = "shared:"

func sharedHandle(id clientv3.LeaseID) string { return sharedPrefix + handle(id) }

// parseHandle returns the etcd lease ID in l.Handle if it is the claim's
// own, or 0 if it holds none or a shared one: the lease is then judged by
// its token and holder alone (Extend moves the lock key to a lease of its
// own, Release revokes nothing).
func parseHandle(l driver.Lease) clientv3.LeaseID {
	id, err := strconv.ParseInt(strings.TrimPrefix(l.Handle, fairPrefix), 16, 64)
	if err != nil {
		return 0
	}
	return clientv3.LeaseID(id)
}

// sharedLease returns the shared etcd lease in l.Handle, or 0 if it names
// none.
func sharedLease(l driver.Lease) clientv3.LeaseID {
	h, ok := strings.CutPrefix(l.Handle, sharedPrefix)
	if !ok {
		return 0
	}
	return parseHandle(driver.Lease{Handle: h})
}

// owned compares the lock key with the lease's token and holder. A lease
// the fair queue granted (queue.go) put the lock key without creating it,
// so its token is the ModRevision of the grant key its grant put: it is
// current while the grant key still has that revision (no grant since)
// and the lock key still holds its holder. That is enough: every grant
// puts the grant key, and a TryClaim that created the lock key anew
// since wrote another holder (holders are unique per claim). Two
// compares, as for any lease, so a batch's nested transactions stay
// within etcd's --max-txn-ops (see maxBatch).
func owned(lk string, l driver.Lease) []clientv3.Cmp {
	if isFair(l) {
		return []clientv3.Cmp{
			clientv3.Compare(clientv3.ModRevision(lk+grantSuffix), "=", int64(l.Token)),
			clientv3.Compare(clientv3.Value(lk), "=", l.Holder),
		}
	}
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(lk), "=", int64(l.Token)),
		clientv3.Compare(clientv3.Value(lk), "=", l.Holder),
	}
}

// Extend implements driver.Claimer. With the lease's own TTL it is one
// fenced transaction that puts the lock key again on its etcd lease (a new
// ModRevision, which other processes' takeovers are judged by: see
// takeoverAfter) with a keep-alive of that lease sent alongside; otherwise,
// or if the lock key is not on that lease (any more), it moves the lock key
// to a new lease in one fenced transaction (a grant first).
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	id := parseHandle(l)
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, err
	}
	sec := b.leaseSeconds(ttl)
	lk := b.lockKey(l.Key)
	if id != 0 && time.Duration(sec)*time.Second == l.TTL {
		renewed := make(chan error, 1)
		go func() { renewed <- b.renew(ctx, cli, id) }()
		resp, err := cli.Txn(ctx).
			If(append(owned(lk, l), clientv3.Compare(clientv3.LeaseValue(lk), "=", int64(id)))...).
			Then(clientv3.OpPut(lk, l.Holder, clientv3.WithLease(id))).
			Commit()
		kaErr := <-renewed
		switch {
		case err == nil && resp.Succeeded:
			if kaErr != nil {
				// The lease may end before the new deadline: the
				// holder keeps its old one.
				return driver.Lease{}, b.fail(ctx, kaErr)
			}
			return l, nil
		case err == nil, errors.Is(err, rpctypes.ErrLeaseNotFound):
			// Not on this lease any more, or the lease is gone:
			// judged by token below.
		default:
			return driver.Lease{}, b.fail(ctx, err)
		}
		if l.Expired(time.Now()) {
			return driver.Lease{}, fmt.Errorf("%w (local deadline passed)", driver.ErrLost)
		}
	}
	g, err := cli.Grant(ctx, sec)
	if err != nil {
		return driver.Lease{}, b.fail(ctx, err)
	}
	resp, err := cli.Txn(ctx).If(owned(lk, l)...).
		Then(clientv3.OpGet(lk), clientv3.OpPut(lk, l.Holder, clientv3.WithLease(g.ID))).
		Commit()
	if err != nil {
		// The transaction may have landed (its answer lost), moving the
		// lock key onto g: revoking g would delete it, and another
		// client could claim the key long before the holder's Deadline,
		// which it keeps (the Extend failed). g ends by its TTL.
		return driver.Lease{}, b.fail(ctx, err)
	}
	if !resp.Succeeded {
		b.revokeLater(g.ID)
		return driver.Lease{}, driver.ErrLost
	}
	// The lease the lock key was on is detached now: revoking it deletes
	// nothing, unless it is a batch's shared lease, which other keys'
	// claims may still be on (it expires by its TTL).
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != int64(g.ID) &&
		kvs[0].Lease != int64(sharedLease(l)) {
		b.revokeLater(clientv3.LeaseID(kvs[0].Lease))
	}
	l.TTL = time.Duration(g.TTL) * time.Second
	if isFair(l) {
		l.Handle = fairHandle(int64(g.ID))
	} else {
		l.Handle = handle(g.ID)
	}
	return l, nil
}

// Release implements driver.Claimer: the fenced transaction deletes the
// lock key, which the key's watchers see, and the etcd lease it was on is
// kept for this process's next claim of that TTL (see putIdle).
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	return b.commit(ctx, l, nil, 0, false, true)
}

// commit runs the transaction fenced by l's token and holder: put the
// value (write), delete the lock key (release), or both. A release keeps
// the etcd lease the lock key was on, attached to nothing then, for a later
// claim if it is l's own and outlives l's Deadline by enough (putIdle),
// else revokes it in the background.
func (b *backend) commit(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration, write, release bool) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	lk := b.lockKey(l.Key)
	var then []clientv3.Op
	gc := clientv3.NoLease
	if write {
		put, lease, err := b.putValue(ctx, cli, l.Key, value, ttl)
		if err != nil {
			return b.fail(ctx, err)
		}
		then, gc = append(then, put), lease
	}
	ngc := clientv3.NoLease
	if write && release && len(value) <= maxWakeValue {
		// The wake-up carries the value (SubscribeValue).
		if ngc, err = b.gcLease(ctx, cli, time.Now(), notifyTTL); err != nil {
			return b.putFailed(ctx, err, gc)
		}
		then = append(then, carryValue(lk, value, ngc))
	}
	if release && isFair(l) {
		then = append(then, clientv3.OpDelete(lk+grantSuffix))
	}
	if release {
		then = append(then, clientv3.OpGet(lk, clientv3.WithKeysOnly()), clientv3.OpDelete(lk))
	}
	resp, err := cli.Txn(ctx).If(owned(lk, l)...).Then(then...).Commit()
	if err != nil {
		return b.putFailed(ctx, err, gc, ngc)
	}
	if !resp.Succeeded {
		// A stale lease is expired or was revoked by its own Release; a
		// forged one may name the current holder's lease: revoke nothing.
		return driver.ErrLost
	}
	if release {
		b.released(l, resp.Responses[len(resp.Responses)-2].GetResponseRange().GetKvs())
		if isFair(l) {
			b.releasedQueue(l.Key, l.Holder)
		}
	}
	return nil
}

// Revoke implements driver.Claimer in one transaction that always
// applies, so the lease ends and the value changes in one atomic step: the
// lock key is deleted if it exists (its watchers wake), else the notify
// key is put (so they wake all the same), and the value key is put or
// deleted. Every
// later Extend, Commit, Release or CommitRelease of the revoked lease
// compares the lock key, which is gone or another claim's, and fails
// (ErrLost). The token was the lock key's CreateRevision; the next claim
// creates it at a later revision, so the fence only rises. The revoked
// claim's etcd lease is left to expire by its TTL rather than revoked
// (one raft write saved): no key is on it any more, except the other
// keys' claims of a batch that shared it.
func (b *backend) Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	vk := clientv3.OpDelete(b.valueKey(key))
	gc := clientv3.NoLease
	if value != nil {
		if vk, gc, err = b.putValue(ctx, cli, key, value, ttl); err != nil {
			return b.fail(ctx, err)
		}
	}
	ngc, err := b.gcLease(ctx, cli, time.Now(), notifyTTL)
	if err != nil {
		return b.fail(ctx, err)
	}
	lk := b.lockKey(key)
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(lk), ">", 0)).
		Then(clientv3.OpDelete(lk), vk).
		Else(clientv3.OpPut(lk+notifySuffix, "", clientv3.WithLease(ngc)), vk).
		Commit()
	return b.putFailed(ctx, err, gc, ngc)
}

// maxIdle bounds the idle etcd leases kept per TTL (seconds); maxSeen the
// lock keys whose claims takeoverAfter remembers.
const (
	maxIdle = 64
	maxSeen = 4096
)

// idleLease is an etcd lease no key is on, kept for this process's next
// claim of the same TTL, so that claim needs no grant.
type idleLease struct {
	id  clientv3.LeaseID
	ttl int64     // granted, in seconds
	exp time.Time // etcd keeps the lease at least until then
}

// takeIdle returns the idle lease of sec seconds with the latest expiry,
// if it has at least half its TTL left (enough for the claim's
// transaction and keep-alive to reach etcd before it could end).
func (b *backend) takeIdle(sec int64, now time.Time) (idleLease, bool) {
	b.idleMu.Lock()
	defer b.idleMu.Unlock()
	ls := b.idle[sec]
	if len(ls) == 0 {
		return idleLease{}, false
	}
	il := ls[len(ls)-1]
	b.idle[sec] = ls[:len(ls)-1]
	if il.exp.Sub(now) < time.Duration(sec)*time.Second/2 {
		// The others were kept earlier and end sooner: drop them all
		// (nothing is on them; they expire by themselves).
		delete(b.idle, sec)
		return idleLease{}, false
	}
	return il, true
}

// putIdle keeps il for a later claim, or revokes it in the background if it
// is about to end or enough are kept. Only a lease no key is on may be
// kept: one a claim of unknown outcome may be on never is, nor one an
// Enqueue of unknown outcome may still put an entry on (tainted).
func (b *backend) putIdle(il idleLease) {
	if b.untaint(il.id) {
		b.revokeLater(il.id)
		return
	}
	if time.Until(il.exp) > time.Duration(il.ttl)*time.Second/2 {
		b.idleMu.Lock()
		if ls := b.idle[il.ttl]; len(ls) < maxIdle {
			b.idle[il.ttl] = append(ls, il)
			b.idleMu.Unlock()
			return
		}
		b.idleMu.Unlock()
	}
	b.revokeLater(il.id)
}

// taint notes that a write of unknown outcome may still land on lease id
// (which lasts until exp, unless renewed): see tainted.
func (b *backend) taint(id clientv3.LeaseID, exp time.Time) {
	b.idleMu.Lock()
	defer b.idleMu.Unlock()
	if len(b.tainted) >= maxSeen {
		now := time.Now()
		for t, e := range b.tainted {
			if e.Before(now) {
				delete(b.tainted, t)
			}
		}
	}
	if e, ok := b.tainted[id]; !ok || e.Before(exp) {
		b.tainted[id] = exp
	}
}

// untaint reports whether lease id was tainted, and forgets it: the caller
// revokes it.
func (b *backend) untaint(id clientv3.LeaseID) bool {
	b.idleMu.Lock()
	defer b.idleMu.Unlock()
	_, ok := b.tainted[id]
	delete(b.tainted, id)
	return ok
}

// seenClaim is what this process knows of the claim in a lock key.
type seenClaim struct {
	rev   int64         // the lock key's ModRevision
	lease int64         // its etcd lease
	ttl   time.Duration // that lease's granted TTL; 0 until known
	at    time.Time     // when this process first learned of rev
}

// saw records that the lock key lk had revision rev on lease at local time
// at (a time after etcd applied rev: when its answer or watch event
// arrived), and returns what this process knows of that revision: the
// earliest time it learned of it.
func (b *backend) saw(lk string, rev, lease int64, at time.Time) seenClaim {
	b.seenMu.Lock()
	defer b.seenMu.Unlock()
	s, ok := b.seen[lk]
	switch {
	case ok && s.rev == rev && s.lease == lease:
		return s
	case ok && s.rev > rev:
		// An older answer arriving late: judged from now.
		return seenClaim{rev: rev, lease: lease, at: at}
	}
	n := seenClaim{rev: rev, lease: lease, at: at}
	if ok && s.lease == lease {
		n.ttl = s.ttl // a lease's granted TTL never changes
	}
	if !ok && len(b.seen) >= maxSeen {
		clear(b.seen) // forgetting only delays a takeover
	}
	b.seen[lk] = n
	return n
}

// learned records the granted TTL of the lease of s.
func (b *backend) learned(lk string, s seenClaim) {
	b.seenMu.Lock()
	defer b.seenMu.Unlock()
	if cur, ok := b.seen[lk]; ok && cur.rev == s.rev && cur.lease == s.lease {
		cur.ttl = s.ttl
		b.seen[lk] = cur
	}
}

// forget drops what this process knows of lk's claim (it was deleted).
func (b *backend) forget(lk string) {
	b.seenMu.Lock()
	delete(b.seen, lk)
	b.seenMu.Unlock()
}

// takeoverAfter returns how long until the claim kv of the lock key lk (as
// read at got) may be taken over, and whether it may be now.
//
// Why that is safe: every write of a lock key (the claim, each Extend) is
// made by a request its holder sent after the local clock reading its
// Deadline is counted from, with a TTL no longer than the granted TTL of
// the etcd lease the write put the key on. This process learned of the
// write's revision at s.at, after etcd applied it, so after the request
// was sent: the holder's Deadline is before s.at + TTL, counted on clocks
// that run at the same rate (the Lease.Deadline assumption; no
// synchronised clocks). The takeover deletes the lock key only if its
// ModRevision is still that revision, that is, no later Extend landed; an
// Extend or Commit the holder sent before its Deadline and that lands
// after the delete compares the key's CreateRevision, which is gone or the
// next claim's, and fails (ErrLost). The next claim creates the key anew,
// so its token (CreateRevision) is larger. Without the takeover the claim
// would wait for etcd's lease-expiry loop (every 500 ms).
//
// The TTL comes from TimeToLive (one round trip) the first time this
// process sees the key on a lease; the remaining time is then also bounded
// by the lease's own. If the TTL cannot be learned the answer is 0, false
// (unknown: the client re-checks).
func (b *backend) takeoverAfter(ctx context.Context, cli *clientv3.Client, lk string, kv *mvccpb.KeyValue, got time.Time) (time.Duration, bool) {
	if kv.Lease == 0 {
		return 0, false
	}
	s := b.saw(lk, kv.ModRevision, kv.Lease, got)
	var leaseLeft time.Duration
	if s.ttl == 0 {
		r, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease))
		if err != nil || r.TTL < 0 || r.GrantedTTL <= 0 {
			return 0, false
		}
		s.ttl = time.Duration(r.GrantedTTL) * time.Second
		leaseLeft = time.Duration(r.TTL+1) * time.Second
		b.learned(lk, s)
	}
	left := time.Until(s.at.Add(s.ttl + driver.TakeoverMargin(s.ttl)))
	if left <= 0 {
		return 0, true
	}
	if leaseLeft > 0 {
		left = min(left, leaseLeft)
	}
	return left, false
}

// renewal is the answer to one keep-alive sent on the renewal stream.
type renewal struct {
	ttl int64 // seconds; <= 0: the lease is gone
	err error
}

// renew renews the etcd lease id once, on one LeaseKeepAlive stream the
// driver keeps open for the claim path (opening a stream per renewal, as
// clientv3's KeepAliveOnce does, costs more than the renewal: it is a
// leader-local call, not a raft write). A lease etcd no longer has is
// rpctypes.ErrLeaseNotFound. Answers come back in the order the renewals
// were sent, so each is matched to the first renewal of its lease still
// waiting; if the stream breaks, every renewal waiting on it fails with
// the stream's error and the next one opens a new stream.
func (b *backend) renew(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) error {
	ch := make(chan renewal, 1)
	b.renewMu.Lock()
	if b.renewing == nil {
		sctx, cancel := context.WithCancel(b.ctx)
		st, err := pb.NewLeaseClient(cli.ActiveConnection()).LeaseKeepAlive(sctx)
		if err == nil {
			b.mu.Lock()
			if b.closed {
				err = driver.ErrClosed
			} else {
				b.wg.Add(1)
			}
			b.mu.Unlock()
		}
		if err != nil {
			b.renewMu.Unlock()
			cancel()
			return err
		}
		b.renewing = st
		go b.renewals(st, cancel)
	}
	b.waiting[id] = append(b.waiting[id], ch)
	// A failed send breaks the stream: renewals then fails the waiters.
	_ = b.renewing.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)})
	b.renewMu.Unlock()
	select {
	case r := <-ch:
		switch {
		case r.err != nil:
			return r.err
		case r.ttl <= 0:
			return rpctypes.ErrLeaseNotFound
		}
		return nil
	case <-ctx.Done():
		// The answer, when it comes, goes to ch, which nobody reads.
		return ctx.Err()
	}
}

// renewals hands the answers on the renewal stream st to the renewals
// waiting for them, until the stream breaks or the driver closes.
func (b *backend) renewals(st pb.Lease_LeaseKeepAliveClient, cancel context.CancelFunc) {
	defer b.wg.Done()
	defer cancel()
	for {
		r, err := st.Recv()
		b.renewMu.Lock()
		if err != nil {
			// Every renewal waiting was sent on st: a new stream is
			// opened only once this one is forgotten, just below.
			b.renewing = nil
			for _, chs := range b.waiting {
				for _, ch := range chs {
					ch <- renewal{err: err}
				}
			}
			clear(b.waiting)
			b.renewMu.Unlock()
			return
		}
		if chs := b.waiting[clientv3.LeaseID(r.ID)]; len(chs) > 0 {
			chs[0] <- renewal{ttl: r.TTL}
			if len(chs) == 1 {
				delete(b.waiting, clientv3.LeaseID(r.ID))
			} else {
				b.waiting[clientv3.LeaseID(r.ID)] = chs[1:]
			}
		}
		b.renewMu.Unlock()
	}
}
