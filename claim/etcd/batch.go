package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

const (
	// maxTxnOps is etcd's default --max-txn-ops: the most operations a
	// transaction may have at its top level; a nested transaction may
	// have only what its parent left (128 less the parent's count).
	maxTxnOps = 128
	// maxBatch is Features.MaxBatch: a batch of n keys is one
	// transaction of n nested transactions of 2 operations each (a claim:
	// put the lock key and get the value, or get the lock key; a commit:
	// compare token and holder, put the value and delete the lock key),
	// so n + 2 <= maxTxnOps.
	maxBatch = maxTxnOps - 2
	// opOverhead bounds the bytes a commit's nested transaction adds to a
	// request beyond its keys, holder and value (protobuf framing, the
	// compares, the lease ID).
	opOverhead = 256
)

// GetMany implements driver.Batcher: one read-only transaction of a get
// per key (linearizable, one round trip), so every value is read at one
// revision.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		ops[i] = clientv3.OpGet(b.valueKey(k))
	}
	resp, err := cli.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, b.fail(ctx, err)
	}
	if len(resp.Responses) != len(keys) {
		return nil, fmt.Errorf("etcd answered %d gets for %d", len(resp.Responses), len(keys))
	}
	now := time.Now()
	out := make([][]byte, len(keys))
	for i, r := range resp.Responses {
		v, err := decodeValue(r.GetResponseRange().GetKvs(), now)
		switch {
		case err == nil:
			out[i] = v
		case !errors.Is(err, driver.ErrNotFound):
			return nil, fmt.Errorf("key %q: %w", keys[i], err)
		}
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: one lease grant for the whole
// batch, then one transaction of a nested transaction per key, each
// tryClaim's own (if the lock key does not exist, put it on the batch's
// lease and get the value key; otherwise get the lock key), atomic per
// key. Every lease granted has the transaction's revision as its token.
// If some keys are held, the remaining lifetimes of their holders' leases
// are asked for concurrently, one request per distinct etcd lease (one
// more round trip). The etcd lease is shared by the batch's claims, so no
// single claim renews or revokes it (see sharedHandle): Extend moves its
// key to a lease of its own (a grant and a transaction, as when the TTL
// changes), and Release and Revoke leave it to expire by its TTL.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	g, err := cli.Grant(ctx, b.leaseSeconds(ttl))
	if err != nil {
		return nil, b.fail(ctx, err)
	}
	ops := make([]clientv3.Op, len(keys))
	for i, k := range keys {
		lk := b.lockKey(k)
		ops[i] = clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(lk, holders[i], clientv3.WithLease(g.ID)), clientv3.OpGet(b.valueKey(k))},
			[]clientv3.Op{clientv3.OpGet(lk)})
	}
	resp, err := cli.Txn(ctx).Then(ops...).Commit()
	if err == nil && len(resp.Responses) != len(keys) {
		err = fmt.Errorf("etcd answered %d claims for %d", len(resp.Responses), len(keys))
	}
	if err != nil {
		// Claims that landed end with the lease.
		b.revokeLater(g.ID)
		return nil, b.fail(ctx, err)
	}
	now := time.Now()
	out := make([]driver.Claimed, len(keys))
	held := map[clientv3.LeaseID][]*driver.HeldError{}
	granted := 0
	var giveBack []driver.Commit
	for i, r := range resp.Responses {
		t := r.GetResponseTxn()
		if !t.GetSucceeded() {
			h := &driver.HeldError{}
			out[i].Err = h
			if rs := t.GetResponses(); len(rs) == 1 {
				if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != 0 {
					id := clientv3.LeaseID(kvs[0].Lease)
					held[id] = append(held[id], h)
				}
			}
			continue
		}
		granted++
		l := driver.Lease{
			Key:    keys[i],
			Holder: holders[i],
			Token:  uint64(resp.Header.Revision), // the lock key's CreateRevision
			TTL:    time.Duration(g.TTL) * time.Second,
			Handle: sharedHandle(g.ID),
		}
		rs := t.GetResponses()
		if len(rs) != 2 {
			out[i].Err = fmt.Errorf("etcd answered %d operations of a claim, want 2", len(rs))
			giveBack = append(giveBack, driver.Commit{Lease: l})
			continue
		}
		v, err := decodeValue(rs[1].GetResponseRange().GetKvs(), now)
		switch {
		case err == nil:
			out[i] = driver.Claimed{Lease: l, Value: v, Found: true}
		case errors.Is(err, driver.ErrNotFound):
			out[i] = driver.Claimed{Lease: l}
		default:
			// The caller gets no lease for this key: give it back.
			out[i].Err = err
			giveBack = append(giveBack, driver.Commit{Lease: l})
		}
	}
	if granted == 0 {
		// Nothing was put on the lease.
		b.revokeLater(g.ID)
	}
	if len(giveBack) > 0 {
		// Best effort, like tryClaim's.
		_, _ = b.fenced(ctx, cli, giveBack, false)
	}
	if len(held) > 0 {
		var wg sync.WaitGroup
		for id, hs := range held {
			wg.Go(func() {
				rem := remaining(ctx, cli, id)
				for _, h := range hs {
					h.Remaining = rem
				}
			})
		}
		wg.Wait()
	}
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: one transaction of a
// nested transaction per commit, each commit's own (if the lock key's
// CreateRevision and value are the lease's token and holder, put the value
// and delete the lock key), atomic per key; the deletes wake the keys'
// watchers. A batch whose values would not fit in one request under
// etcd's --max-request-bytes (as implied by the value limit) is split into
// transactions that fit, sent concurrently on the one connection: still
// one round trip. Released claims with an etcd lease of their own have it
// revoked in the background, as Release does.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	return b.fenced(ctx, cli, commits, true)
}

// ReleaseMany implements driver.ReleaseBatcher: one transaction of a
// nested transaction per lease, each Release's own (if the lock key's
// CreateRevision and value are the lease's token and holder, delete the
// lock key), as CommitReleaseMany without the values: one raft write for
// the batch instead of one per key.
func (b *backend) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	commits := make([]driver.Commit, len(leases))
	for i, l := range leases {
		commits[i].Lease = l
	}
	return b.fenced(ctx, cli, commits, false)
}

// fenced runs the fenced releases of commits, storing each one's value
// first with write (CommitReleaseMany), or only deleting the lock key
// without it: errs[i] is nil, ErrLost, or the error of a transaction that
// failed while others did not. If every transaction fails, err is the
// first failure and errs is nil.
func (b *backend) fenced(ctx context.Context, cli *clientv3.Client, commits []driver.Commit, write bool) ([]error, error) {
	type part struct {
		idx  []int
		ops  []clientv3.Op
		gcs  []clientv3.LeaseID
		size int
		resp *clientv3.TxnResponse
		err  error
	}
	// The server's limit is taken to be what the value limit was derived
	// from, less room for the outer transaction. A commit that alone
	// exceeds it is sent alone, as CommitRelease would send it.
	limit := b.maxVal + valueHeader + requestOverhead/2
	// A nested transaction may hold maxTxnOps less the outer one's ops:
	// the put of the notify key that carries a value in the wake-up
	// (SubscribeValue) is a third op, so only batches of up to
	// maxTxnOps-3 keys carry values.
	carries := write && len(commits)+3 <= maxTxnOps
	var parts []*part
	for i, c := range commits {
		lk := b.lockKey(c.Lease.Key)
		then := []clientv3.Op{clientv3.OpDelete(lk)}
		size := 3*len(lk) + len(c.Lease.Holder) + opOverhead
		gc, carry := clientv3.NoLease, clientv3.NoLease
		if write {
			put, lease, err := b.putValue(ctx, cli, c.Lease.Key, c.Value, c.TTL)
			if err != nil {
				return nil, b.fail(ctx, err)
			}
			then = []clientv3.Op{put, then[0]}
			gc = lease
			if carries && len(c.Value) <= maxWakeValue {
				ngc, err := b.gcLease(ctx, cli, time.Now(), notifyTTL)
				if err != nil {
					return nil, b.putFailed(ctx, err, gc)
				}
				then = append(then, carryValue(lk, c.Value, ngc))
				size += len(lk) + len(c.Value) + opOverhead
				carry = ngc
			}
			size += len(b.valueKey(c.Lease.Key)) + valueHeader + len(c.Value)
		}
		if len(parts) == 0 || parts[len(parts)-1].size+size > limit {
			parts = append(parts, &part{})
		}
		p := parts[len(parts)-1]
		p.idx = append(p.idx, i)
		p.ops = append(p.ops, clientv3.OpTxn(owned(lk, c.Lease), then, nil))
		p.size += size
		for _, g := range []clientv3.LeaseID{gc, carry} {
			if g != clientv3.NoLease {
				p.gcs = append(p.gcs, g)
			}
		}
	}
	run := func(p *part) {
		p.resp, p.err = cli.Txn(ctx).Then(p.ops...).Commit()
		if p.err == nil && len(p.resp.Responses) != len(p.ops) {
			p.err = fmt.Errorf("etcd answered %d commits for %d", len(p.resp.Responses), len(p.ops))
		}
		p.err = b.putFailed(ctx, p.err, p.gcs...)
	}
	if len(parts) == 1 {
		run(parts[0])
	} else {
		var wg sync.WaitGroup
		for _, p := range parts {
			wg.Go(func() { run(p) })
		}
		wg.Wait()
	}
	errs := make([]error, len(commits))
	var first error
	failed := 0
	for _, p := range parts {
		if p.err != nil {
			first = cmp.Or(first, p.err)
			failed++
			for _, i := range p.idx {
				errs[i] = p.err
			}
			continue
		}
		for j, r := range p.resp.Responses {
			i := p.idx[j]
			if !r.GetResponseTxn().GetSucceeded() {
				errs[i] = driver.ErrLost
				continue
			}
			if id := parseHandle(commits[i].Lease); id != 0 {
				b.revokeLater(id)
			}
			if l := commits[i].Lease; isFair(l) {
				b.releasedQueue(l.Key, l.Holder)
			}
		}
	}
	if failed == len(parts) {
		return nil, first
	}
	return errs, nil
}

// SubscribeMany implements driver.Batcher: Subscribe of every key at once,
// each a watch on the etcd client's one watch stream, returning when etcd
// has confirmed them all, or on the first failure once the others have
// been stopped or made (the client then unsubscribes every key). clientv3
// sends a stream's watch requests one at a time, each once the previous
// one is confirmed, so the watches cost one round trip each on the
// stream, back to back, rather than one for the batch.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu    sync.Mutex
		first error
		wg    sync.WaitGroup
	)
	for i, k := range keys {
		wg.Go(func() {
			if err := b.Subscribe(ctx, k, wakes[i]); err != nil {
				mu.Lock()
				if first == nil {
					first = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return first
}
