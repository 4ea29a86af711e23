package consul

import (
	"context"
	"errors"
	"fmt"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Batches. Every Batcher method sends Consul transactions, as many as its
// operations need (at most maxTxnOps each), concurrently (batchParallel
// at a time): one round trip of latency per round for a full batch of
// small values, whatever the number of keys. A Consul transaction
// is all or nothing, and its answer when rolled back names every
// operation that failed: the claiming and committing methods put each
// key's condition in the batch's transactions, and send the keys a
// failed transaction did not blame again in the next round.
const (
	// maxTxnOps is the most operations the driver puts in one
	// transaction: Consul's documented limit (agents since 1.14 take
	// 128), and Features.MaxBatch, so that GetMany is one transaction;
	// the other methods take two (TryClaimMany, SubscribeMany) or four
	// (CommitReleaseMany) for a full batch.
	maxTxnOps = 64
	// txnBudget is the most request bytes (estimated) the driver puts in
	// one batch transaction: Consul's default txn_max_req_len (512 KiB).
	// A key whose own operations are larger (a value near a raised
	// MaxValueLen) goes alone, as its single-key call would.
	txnBudget = 512 << 10
	// opJSON is what one operation adds to a request beside its key and
	// its value (field names, verb, index), rounded up.
	opJSON = 160
	// batchParallel bounds the requests one batch call has in flight at
	// once: a full batch of commits is four transactions.
	batchParallel = 4
	// batchRounds bounds the rounds of TryClaimMany and CommitReleaseMany
	// (as fenced bounds a single commit's); keys left after them go
	// through the single-key method. A key needs at most five rounds of
	// its own (claim, read, claim, read, takeover); more happen only when
	// other keys' leases change under the batch.
	batchRounds = 8
)

// part is one key's operations in a batch: transactions carry whole
// parts. Its first cond operations are conditions: one that fails rolls
// the transaction back, and the part is to blame. A part of reads only
// (cond 0, get-or-empty operations) goes in a read-only transaction,
// which Consul answers without a raft write and never rolls back.
type part struct {
	ops  capi.TxnOps
	cond int
}

// size estimates the bytes p adds to a transaction's request (values are
// base64 in JSON).
func (p part) size() int {
	n := 0
	for _, op := range p.ops {
		n += opJSON + len(op.KV.Key) + 4*((len(op.KV.Value)+2)/3)
	}
	return n
}

// outcome is what became of a part in runParts: the entries of its
// transaction's answer by key (kv) if the transaction committed (or,
// read-only, answered); failed if one of the part's own conditions
// failed; err if the request failed. None of them: the transaction was
// rolled back for another part's condition.
type outcome struct {
	kv     map[string]*capi.KVPair
	failed bool
	err    error
}

// batchTxn is one transaction of runParts.
type batchTxn struct {
	parts []int
	ops   capi.TxnOps
	cond  []bool // per operation
	size  int
	read  bool
}

// runParts packs parts, in order, into transactions (reads apart from
// writes; at most maxTxnOps operations and txnBudget bytes each, or one
// part), sends them concurrently, and returns each part's outcome.
func (b *backend) runParts(ctx context.Context, parts []part) []outcome {
	var reads, writes []*batchTxn
	for i, p := range parts {
		list := &writes
		if p.cond == 0 {
			list = &reads
		}
		sz := p.size()
		var t *batchTxn
		if n := len(*list); n > 0 {
			t = (*list)[n-1]
			if len(t.ops)+len(p.ops) > maxTxnOps || t.size+sz > txnBudget {
				t = nil
			}
		}
		if t == nil {
			t = &batchTxn{read: p.cond == 0}
			*list = append(*list, t)
		}
		t.parts = append(t.parts, i)
		for j, op := range p.ops {
			t.ops = append(t.ops, op)
			t.cond = append(t.cond, j < p.cond)
		}
		t.size += sz
	}
	txns := append(writes, reads...)
	out := make([]outcome, len(parts))
	driver.Each(len(txns), batchParallel, func(k int) {
		t := txns[k]
		ok, resp, err := b.txnIf(ctx, t.ops, func(i int) bool { return t.cond[i] })
		if err == nil && t.read && len(resp.Results) != len(t.ops) {
			// A read-only transaction leaves out what the token may not
			// read, without an error.
			err = driver.Misconfigured(errUnreadable)
		}
		switch {
		case err != nil:
			for _, i := range t.parts {
				out[i].err = err
			}
		case ok:
			kv := make(map[string]*capi.KVPair, len(resp.Results))
			for _, r := range resp.Results {
				if r != nil && r.KV != nil {
					kv[r.KV.Key] = r.KV
				}
			}
			for _, i := range t.parts {
				out[i].kv = kv
			}
		default:
			// Map the failed operations back to their parts.
			owner := make([]int, 0, len(t.ops))
			for _, i := range t.parts {
				for range parts[i].ops {
					owner = append(owner, i)
				}
			}
			for _, e := range resp.Errors {
				if e.OpIndex >= 0 && e.OpIndex < len(owner) {
					out[owner[e.OpIndex]].failed = true
				}
			}
		}
	})
	return out
}

// GetMany implements driver.Batcher: a read-only transaction of one
// get-or-empty per key (a get of an absent key would fail the whole
// transaction). Values read after their expiry are reported absent and
// deleted, as Get does: one more transaction of compare-and-deletes,
// best effort (one that meets a newer write rolls back, and Sweep or the
// next read deletes them).
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	parts := make([]part, len(keys))
	for i, k := range keys {
		parts[i] = part{ops: capi.TxnOps{kvOp(capi.KVGetOrEmpty, b.valueKey(k), 0, nil)}}
	}
	res := b.runParts(ctx, parts)
	now := time.Now()
	vals := make([][]byte, len(keys))
	var stale []part
	for i, k := range keys {
		if res[i].err != nil {
			return nil, res[i].err
		}
		p := res[i].kv[b.valueKey(k)]
		if p == nil || p.ModifyIndex == 0 {
			continue
		}
		v, expired, ok := decodeValue(p.Value, now)
		if !ok {
			return nil, fmt.Errorf("key %q: malformed stored value (%d bytes)", k, len(p.Value))
		}
		if expired {
			stale = append(stale, part{ops: capi.TxnOps{kvOp(capi.KVDeleteCAS, p.Key, p.ModifyIndex, nil)}, cond: 1})
			continue
		}
		vals[i] = v
	}
	if len(stale) > 0 {
		b.runParts(ctx, stale)
	}
	return vals, nil
}

// Steps of a key in TryClaimMany.
const (
	stepClaim    = iota // create the lock key, read the value (claimTxn)
	stepRead            // read the lock record
	stepTakeover        // delete the expired record read, then as stepClaim
)

// TryClaimMany implements driver.Batcher: TryClaimRead of each key, in
// rounds of concurrent transactions. The first round claims every key
// (each the create of its lock key and the get-or-empty of its value, as
// TryClaimRead's transaction), which commits if every key of a
// transaction is free: one round trip. A transaction that rolled back
// names the keys found held: the next round reads their lock records (a
// read-only transaction, answering the live ones with a *HeldError and
// their remaining time) while it claims the others again; a third takes
// over the expired ones (delete-cas of the record read, then the claim).
// So a batch of free and held keys costs two round trips, three with
// takeovers, whatever its size. Each key goes through the steps of
// TryClaimRead (one more claim if its lock key was gone when read; a
// takeover lost to another client is a *HeldError); the keys left after
// batchRounds (their neighbours' leases kept changing) go through
// TryClaimRead itself, concurrently. A request that fails is the error
// of its keys; if ctx was cancelled, of the whole call (a claim that
// landed expires by its TTL).
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ttl = roundTTL(ttl)
	out := make([]driver.Claimed, len(keys))
	type keyState struct {
		step  int
		idx   uint64 // stepTakeover: the ModifyIndex of the record read
		again bool   // claimed again after its lock key was found gone
		exp   int64  // the expiry of the record this round writes
	}
	st := make([]keyState, len(keys))
	pending := make([]int, len(keys))
	for i := range pending {
		pending[i] = i
	}
	for round := 0; len(pending) > 0 && round < batchRounds; round++ {
		start := clock.Now()
		parts := make([]part, len(pending))
		for j, i := range pending {
			s := &st[i]
			lk := b.lockKey(keys[i])
			if s.step == stepRead {
				parts[j] = part{ops: capi.TxnOps{kvOp(capi.KVGetOrEmpty, lk, 0, nil)}}
				continue
			}
			var rec []byte
			rec, s.exp = newRecord(holders[i], start, ttl)
			p := part{ops: capi.TxnOps{kvOp(capi.KVCAS, lk, 0, rec), kvOp(capi.KVGetOrEmpty, b.valueKey(keys[i]), 0, nil)}, cond: 1}
			if s.step == stepTakeover {
				p = part{ops: append(capi.TxnOps{kvOp(capi.KVDeleteCAS, lk, s.idx, nil)}, p.ops...), cond: 2}
			}
			parts[j] = p
		}
		res := b.runParts(ctx, parts)
		next := pending[:0:0]
		for j, i := range pending {
			r, s, c := res[j], &st[i], &out[i]
			lk := b.lockKey(keys[i])
			switch {
			case r.err != nil:
				c.Err = r.err
			case s.step == stepRead:
				cur := r.kv[lk]
				if cur == nil || cur.ModifyIndex == 0 {
					// Released meanwhile: claim it again, once.
					if s.again {
						c.Err = &driver.HeldError{}
						break
					}
					s.step, s.again = stepClaim, true
					next = append(next, i)
					break
				}
				if rec, ok := parseRecord(cur.Value); ok {
					if left := clock.Until(b.heldUntil(lk, cur, rec, clock.Now())); left > 0 {
						c.Err = &driver.HeldError{Remaining: left}
						break
					}
				}
				// Expired (or not a lease record): take over if nobody
				// else did.
				s.step, s.idx = stepTakeover, cur.ModifyIndex
				next = append(next, i)
			case r.failed && s.step == stepTakeover:
				c.Err = &driver.HeldError{} // another client took it over first
			case r.failed:
				s.step = stepRead
				next = append(next, i)
			case r.kv == nil:
				next = append(next, i) // rolled back for another key
			default:
				c.Lease, c.Value, c.Found, c.Err = b.claimed(ctx, keys[i], holders[i], ttl, start, s.exp, r.kv[lk], r.kv[b.valueKey(keys[i])], true)
			}
		}
		pending = next
	}
	driver.Each(len(pending), batchParallel, func(j int) {
		i := pending[j]
		c := &out[i]
		c.Lease, c.Value, c.Found, c.Err = b.tryClaim(ctx, keys[i], holders[i], ttl, true)
	})
	if err := ctx.Err(); err != nil {
		for _, c := range out {
			var he *driver.HeldError
			if c.Err != nil && !errors.As(c.Err, &he) {
				return nil, err // a request abandoned
			}
		}
	}
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: CommitRelease of each
// lease, in rounds of concurrent transactions. The first round commits
// every lease whose Handle is current (each a check-index of its lock
// key on the ModifyIndex in the Handle, the set of the value key, the
// delete of the lock key and the write of the notify key, with the copy
// of a value of at most maxWakeValue bytes for SubscribeValue, as
// CommitRelease's transaction): one round trip. A transaction that
// rolled back names the leases whose lock key changed: the next round
// reads their records (a read-only transaction: ErrLost for a lease
// taken over, released, revoked or expired; else the index to commit
// at, as a single commit does after a retried Extend) while it commits
// the others again, and the one after commits the leases read. So a
// batch of current and lost leases costs two round trips whatever its
// size. A lease whose record has expired by its Handle is read first.
// The leases left after batchRounds go through CommitRelease itself,
// concurrently. A request that fails is the error of its leases; if ctx
// was cancelled, of the whole call.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(commits))
	type commitState struct {
		read  bool   // read the record first
		idx   uint64 // the lock key's ModifyIndex to commit at
		val   []byte // the value key's encoded value
		carry bool   // the notify key carries val (maxWakeValue)
	}
	now := clock.Now()
	st := make([]commitState, len(commits))
	pending := make([]int, len(commits))
	for i, c := range commits {
		idx, exp := handleIndex(c.Lease)
		st[i] = commitState{read: idx == 0 || !now.Before(exp), idx: idx, val: encodeValue(c.Value, c.TTL, now), carry: len(c.Value) <= maxWakeValue}
		pending[i] = i
	}
	for round := 0; len(pending) > 0 && round < batchRounds; round++ {
		parts := make([]part, len(pending))
		for j, i := range pending {
			k := commits[i].Lease.Key
			lk := b.lockKey(k)
			if st[i].read {
				parts[j] = part{ops: capi.TxnOps{kvOp(capi.KVGetOrEmpty, lk, 0, nil)}}
				continue
			}
			nv := notifyValue()
			if st[i].carry {
				nv = notifyCarrying(st[i].val)
			}
			parts[j] = part{ops: capi.TxnOps{
				kvOp(capi.KVCheckIndex, lk, st[i].idx, nil),
				kvOp(capi.KVSet, b.valueKey(k), 0, st[i].val),
				kvOp(capi.KVDelete, lk, 0, nil),
				kvOp(capi.KVSet, b.notifyKey(k), 0, nv),
			}, cond: 1}
		}
		res := b.runParts(ctx, parts)
		next := pending[:0:0]
		for j, i := range pending {
			r, s, l := res[j], &st[i], commits[i].Lease
			switch {
			case r.err != nil:
				errs[i] = r.err
			case s.read:
				cur := r.kv[b.lockKey(l.Key)]
				if cur == nil || cur.ModifyIndex == 0 || cur.CreateIndex != l.Token {
					errs[i] = driver.ErrLost
					break
				}
				rec, ok := parseRecord(cur.Value)
				if !ok || rec.Holder != l.Holder || !clock.Now().Before(time.UnixMilli(rec.Expiry)) {
					errs[i] = driver.ErrLost
					break
				}
				s.read, s.idx = false, cur.ModifyIndex
				next = append(next, i)
			case r.failed:
				s.read = true
				next = append(next, i)
			case r.kv == nil:
				next = append(next, i) // rolled back for another lease
			}
		}
		pending = next
	}
	driver.Each(len(pending), batchParallel, func(j int) {
		c := commits[pending[j]]
		errs[pending[j]] = b.commit(ctx, c.Lease, c.Value, c.TTL, true, true)
	})
	if err := ctx.Err(); err != nil {
		for _, e := range errs {
			if e != nil && !errors.Is(e, driver.ErrLost) {
				return nil, err // a request abandoned
			}
		}
	}
	return errs, nil
}

// SubscribeMany implements driver.Batcher: the state of every key (its
// lock and notify keys) read in read-only transactions sent concurrently
// (32 keys each), then each key watched from it as Subscribe does: a
// blocking query while fewer than MaxWatches run, the poll loop for the
// rest. The read is a transaction rather than the list a blocking query
// makes: Consul filters a list by the token's read permission without a
// word, a transaction's read is refused (ErrConfig). Consul has no
// blocking query over a set of keys, and the keys of a batch share no
// prefix but the driver's own, whose list would return (and be woken by)
// every key in use: keys beyond MaxWatches are polled, 32 per read. On
// an error no key is subscribed.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	vw := make([]func([]byte), len(wakes))
	for i, w := range wakes {
		vw[i] = func([]byte) { w() }
	}
	return b.subscribe(ctx, keys, vw)
}

// subscribe is SubscribeMany with wakes that take the value a wake-up
// carries (SubscribeValue).
func (b *backend) subscribe(ctx context.Context, keys []string, wakes []func([]byte)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	parts := make([]part, len(keys))
	for i, k := range keys {
		parts[i] = part{ops: capi.TxnOps{kvOp(capi.KVGetOrEmpty, b.lockKey(k), 0, nil), kvOp(capi.KVGetOrEmpty, b.notifyKey(k), 0, nil)}}
	}
	res := b.runParts(ctx, parts)
	sts := make([]state, len(keys))
	for i, k := range keys {
		if res[i].err != nil {
			return res[i].err
		}
		var pairs capi.KVPairs
		for _, n := range [...]string{b.lockKey(k), b.notifyKey(k)} {
			if p := res[i].kv[n]; p != nil {
				pairs = append(pairs, p)
			}
		}
		sts[i], _ = b.stateOf(k, pairs)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return driver.ErrClosed
	}
	for i, k := range keys {
		b.watchLocked(subID{key: k}, &wakeSub{b: b, key: k, st: sts[i], wake: wakes[i]})
	}
	return nil
}
