package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// record is the lease record stored in the lock key.
type record struct {
	Holder string `json:"h"`
	Expiry int64  `json:"e"` // Unix ms by the holder's clock, rounded up
	TTL    int64  `json:"t"` // ms, informational
	// A lease handed over by HandOff (queue.go) leaves the queue key as
	// it was: the first SN entries of the queue key written at index SQ
	// have been served (or skipped). Extend keeps both.
	SQ uint64 `json:"sq,omitempty"`
	SN int    `json:"sn,omitempty"`
	// V is sightedV when the lease's holder runs a version that counts
	// its Deadline so that a waiter may take the lease over by its own
	// sighting of this write (heldUntil): its Extends always change the
	// record, and a lease granted to it has no TTL beyond the recorded
	// one. A record written by or granted to an earlier version has none
	// (older versions ignore the field and drop it when they rewrite the
	// record), and is judged by its recorded expiry plus ClockSkew, as
	// before: safe during a rolling upgrade.
	V int `json:"v,omitempty"`
}

// sightedV marks records and queue entries of holders whose leases may be
// taken over by sightings (record.V).
const sightedV = 1

// newRecord returns the record of a lease written at start for ttl, and
// its expiry.
func newRecord(holder string, start time.Time, ttl time.Duration) ([]byte, int64) {
	return newRecordServed(holder, start, ttl, 0, 0, sightedV)
}

// newRecordServed is newRecord with the queue entries served (see
// record), for a holder of rules version v (record.V).
func newRecordServed(holder string, start time.Time, ttl time.Duration, sq uint64, sn int, v int) ([]byte, int64) {
	r := record{Holder: holder, Expiry: ceilMs(start.Add(ttl)), TTL: ttl.Milliseconds(), SQ: sq, SN: sn, V: v}
	out, _ := json.Marshal(r)
	return out, r.Expiry
}

// ceilMs returns t in Unix milliseconds, rounded up.
func ceilMs(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// roundTTL rounds ttl up to whole milliseconds.
func roundTTL(ttl time.Duration) time.Duration {
	if r := ttl % time.Millisecond; r != 0 {
		ttl += time.Millisecond - r
	}
	return ttl
}

func parseRecord(v []byte) (record, bool) {
	var r record
	err := json.Unmarshal(v, &r)
	return r, err == nil && r.Holder != ""
}

// txn runs ops as one Consul transaction. The first nCond ops are
// conditions: if one of them fails, txn returns false and no error. It
// goes through consul/api's Raw rather than its Txn, which reports a
// failed request by its body alone: the status code tells a refused token
// (403) and a server of another kind (404) from an outage. Its errors are
// classified.
func (b *backend) txn(ctx context.Context, ops capi.TxnOps, nCond int) (bool, *capi.TxnResponse, error) {
	return b.txnIf(ctx, ops, func(i int) bool { return i < nCond })
}

// txnIf is txn with the conditions where cond says (a batch's
// transaction interleaves the conditions of its keys).
func (b *backend) txnIf(ctx context.Context, ops capi.TxnOps, cond func(i int) bool) (bool, *capi.TxnResponse, error) {
	if readOnly(ops) {
		return b.readTxn(ctx, ops, cond)
	}
	var resp capi.TxnResponse
	_, err := b.c.Raw().Write("/v1/txn", ops, &resp, wo(ctx))
	var se capi.StatusError
	switch {
	case err == nil:
		return true, &resp, nil
	case errors.As(err, &se) && se.Code == http.StatusConflict:
		// Rolled back: the body says which operations failed.
		if jerr := json.Unmarshal([]byte(se.Body), &resp); jerr != nil {
			return false, nil, classify(fmt.Errorf("transaction rolled back, reason unreadable: %w", jerr))
		}
	default:
		return false, nil, classify(err)
	}
	for _, e := range resp.Errors {
		if strings.Contains(e.What, "Permission denied") || strings.Contains(e.What, "ACL not found") {
			return false, nil, driver.Misconfigured(fmt.Errorf("transaction op %d: %s", e.OpIndex, e.What))
		}
		if !cond(e.OpIndex) {
			return false, nil, fmt.Errorf("transaction op %d: %s", e.OpIndex, e.What)
		}
	}
	return false, &resp, nil
}

// readOnly reports whether ops only read (KV get operations). Consul
// serves such a transaction without raft, from the server's own state, in
// the read consistency the request names.
func readOnly(ops capi.TxnOps) bool {
	for _, op := range ops {
		if op.KV == nil {
			return false
		}
		switch op.KV.Verb {
		case capi.KVGet, capi.KVGetOrEmpty, capi.KVGetTree:
		default:
			return false
		}
	}
	return true
}

// readTxn runs a read-only transaction as a consistent read (see qo):
// through consul/api's Txn, the one way to put ?consistent on /v1/txn.
// Its failures carry the body but not the status code, which tells a
// server of another kind (404, 400) or a refused token (403) from an
// outage; so a failed read is sent once more the way writes are, for its
// status code only (what it reads is never used: it may be stale).
func (b *backend) readTxn(ctx context.Context, ops capi.TxnOps, cond func(i int) bool) (bool, *capi.TxnResponse, error) {
	ok, resp, _, err := b.c.Txn().Txn(ops, qo(ctx))
	if err != nil {
		if msg := err.Error(); strings.Contains(msg, "Permission denied") || strings.Contains(msg, "ACL not found") {
			return false, nil, driver.Misconfigured(err)
		}
		if ctx.Err() == nil {
			var probe capi.TxnResponse
			_, perr := b.c.Raw().Write("/v1/txn", ops, &probe, wo(ctx))
			if cerr := classify(perr); errors.Is(cerr, driver.ErrConfig) || errors.Is(cerr, driver.ErrTooLarge) {
				return false, nil, cerr
			}
		}
		return false, nil, classify(err)
	}
	if ok {
		return true, resp, nil
	}
	for _, e := range resp.Errors {
		if !cond(e.OpIndex) {
			return false, nil, fmt.Errorf("transaction op %d: %s", e.OpIndex, e.What)
		}
	}
	return false, resp, nil
}

// write runs one unconditional write as a transaction: unlike consul/api's
// KV Put and Delete, which take any 200 for success, it reads Consul's
// answer, so a server of another kind cannot swallow it.
func (b *backend) write(ctx context.Context, op *capi.TxnOp) error {
	_, _, err := b.txn(ctx, capi.TxnOps{op}, 0)
	return err
}

func kvOp(verb capi.KVOp, key string, index uint64, value []byte) *capi.TxnOp {
	return &capi.TxnOp{KV: &capi.KVTxnOp{Verb: verb, Key: key, Index: index, Value: value}}
}

// written returns the entry txn wrote for key.
func written(resp *capi.TxnResponse, key string) *capi.KVPair {
	var out *capi.KVPair
	for _, r := range resp.Results {
		if r != nil && r.KV != nil && r.KV.Key == key {
			out = r.KV
		}
	}
	return out
}

// handle encodes the lock key's ModifyIndex after the holder's last write
// and the expiry that write recorded, bound to the lease it belongs to.
func handle(modIdx uint64, expiry int64, token uint64, holder string) string {
	return handleServed(modIdx, expiry, 0, 0, token, holder)
}

// handleServed is handle with the record's served queue entries (SQ,
// SN), as "EXPIRY/SQ/SN" when SQ is set.
func handleServed(modIdx uint64, expiry int64, sq uint64, sn int, token uint64, holder string) string {
	if sq == 0 {
		return fmt.Sprintf("%d:%d:%d:%s", modIdx, expiry, token, holder)
	}
	return fmt.Sprintf("%d:%d/%d/%d:%d:%s", modIdx, expiry, sq, sn, token, holder)
}

// handleIndex returns the index and the record's expiry in l.Handle if the
// handle belongs to l, else 0 and the zero time (forcing a read).
func handleIndex(l driver.Lease) (uint64, time.Time) {
	f := strings.SplitN(l.Handle, ":", 4)
	if len(f) != 4 || f[2] != strconv.FormatUint(l.Token, 10) || f[3] != l.Holder {
		return 0, time.Time{}
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	e, _, _ := strings.Cut(f[1], "/")
	exp, err := strconv.ParseInt(e, 10, 64)
	if err != nil {
		return 0, time.Time{}
	}
	return n, time.UnixMilli(exp)
}

// handleQueue returns the served queue entries (SQ, SN) in l.Handle, if
// it belongs to l (0, 0 if none).
func handleQueue(l driver.Lease) (uint64, int) {
	if n, _ := handleIndex(l); n == 0 {
		return 0, 0
	}
	f := strings.SplitN(l.Handle, ":", 4)
	_, rest, ok := strings.Cut(f[1], "/")
	if !ok {
		return 0, 0
	}
	a, b, _ := strings.Cut(rest, "/")
	sq, err1 := strconv.ParseUint(a, 10, 64)
	sn, err2 := strconv.Atoi(b)
	if err1 != nil || err2 != nil {
		return 0, 0
	}
	return sq, sn
}

// heldUntil returns when the claim in the lock key lk, read as kv (with
// its record rec) at now, may be taken over: its recorded expiry plus
// ClockSkew, or sooner if this process has watched that write of the
// record since about when it was made (driver.Sightings: its first
// sighting plus the record's TTL, whatever the clocks read).
func (b *backend) heldUntil(lk string, kv *capi.KVPair, rec record, now time.Time) time.Time {
	if rec.V < sightedV {
		// Its holder may count its Deadline as earlier versions did.
		return driver.TakeoverAt(time.UnixMilli(rec.Expiry), b.o.ClockSkew, time.Time{})
	}
	end := b.seen.End(lk, driver.Rev{kv.ModifyIndex}, time.Duration(rec.TTL)*time.Millisecond, now)
	return driver.TakeoverAt(time.UnixMilli(rec.Expiry), b.o.ClockSkew, end)
}

// tryClaim is a create-if-absent transaction; if the key exists, a read
// and, when the record read has expired (see heldUntil), a takeover
// transaction conditioned on it. If the key was released between the
// failed create and the read, it tries once more.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, nil, false, err
	}
	ttl = roundTTL(ttl)
	lk := b.lockKey(key)
	for attempt := 0; attempt < 2; attempt++ {
		l, v, found, ok, err := b.claimTxn(ctx, key, holder, ttl, read)
		if err != nil || ok {
			return l, v, found, err
		}
		cur, meta, err := b.kv.Get(lk, qo(ctx))
		if err == nil {
			err = indexed(meta)
		}
		if err != nil {
			return driver.Lease{}, nil, false, classify(err)
		}
		if cur == nil {
			continue // released meanwhile: try to create it again
		}
		if r, ok := parseRecord(cur.Value); ok {
			if left := clock.Until(b.heldUntil(lk, cur, r, clock.Now())); left > 0 {
				return driver.Lease{}, nil, false, &driver.HeldError{Remaining: left}
			}
		}
		// Expired (or not a lease record): take over if nobody else did.
		l, v, found, ok, err = b.claimTxn(ctx, key, holder, ttl, read, kvOp(capi.KVDeleteCAS, lk, cur.ModifyIndex, nil))
		if err != nil || ok {
			return l, v, found, err
		}
		break // another client took it over first
	}
	return driver.Lease{}, nil, false, &driver.HeldError{}
}

// claimTxn runs one claiming transaction: conds (a takeover's delete-cas),
// the create of the lock key, and with read a get-or-empty of the value
// key. ok is false, with no error, if a condition failed.
func (b *backend) claimTxn(ctx context.Context, key, holder string, ttl time.Duration, read bool, conds ...*capi.TxnOp) (l driver.Lease, val []byte, found, ok bool, err error) {
	lk, vk := b.lockKey(key), b.valueKey(key)
	start := clock.Now()
	rec, exp := newRecord(holder, start, ttl)
	ops := append(capi.TxnOps(conds), kvOp(capi.KVCAS, lk, 0, rec))
	nCond := len(ops)
	if read {
		ops = append(ops, kvOp(capi.KVGetOrEmpty, vk, 0, nil))
	}
	ok, resp, err := b.txn(ctx, ops, nCond)
	if err != nil || !ok {
		return l, nil, false, false, err
	}
	l, val, found, err = b.claimed(ctx, key, holder, ttl, start, exp, written(resp, lk), written(resp, vk), read)
	return l, val, found, true, err
}

// claimed returns the lease that a committed claiming transaction,
// started at start, granted (w: the lock key it created, with the record
// expiring at exp) and, with read, the value it read (p).
func (b *backend) claimed(ctx context.Context, key, holder string, ttl time.Duration, start time.Time, exp int64, w, p *capi.KVPair, read bool) (driver.Lease, []byte, bool, error) {
	if w == nil {
		return driver.Lease{}, nil, false, errors.New("transaction result lacks the lock key")
	}
	l := driver.Lease{Key: key, Holder: holder, Token: w.CreateIndex, TTL: ttl, Handle: handle(w.ModifyIndex, exp, w.CreateIndex, holder)}
	// get-or-empty of an absent key answers the key with no value and
	// index 0; a stored value has at least a header.
	if read && p != nil && p.ModifyIndex != 0 {
		v, expired, wellFormed := decodeValue(p.Value, time.Now())
		if !wellFormed {
			// The caller gets no lease: give it back (best effort).
			rl := l
			rl.Deadline = start.Add(ttl)
			_ = b.Release(ctx, rl)
			return driver.Lease{}, nil, false, fmt.Errorf("malformed stored value (%d bytes)", len(p.Value))
		}
		if !expired {
			return l, v, true, nil
		}
	}
	return l, nil, false, nil
}

// read returns the lock key and l's lease record as the server has them
// (the expiry as last extended), or ErrLost if l no longer holds the key.
func (b *backend) read(ctx context.Context, l driver.Lease) (*capi.KVPair, record, error) {
	cur, meta, err := b.kv.Get(b.lockKey(l.Key), qo(ctx))
	if err == nil {
		err = indexed(meta)
	}
	if err != nil {
		return nil, record{}, classify(err)
	}
	if cur == nil || cur.CreateIndex != l.Token {
		return nil, record{}, driver.ErrLost
	}
	r, ok := parseRecord(cur.Value)
	if !ok || r.Holder != l.Holder {
		return nil, record{}, driver.ErrLost
	}
	return cur, r, nil
}

// fenced runs the write op builds, conditioned on the lock key's
// ModifyIndex: first the one in l.Handle, then, if that is out of date, the
// one read back after checking that l is still current. Only the lease's
// own holder rewrites its record, so a second round is needed only after a
// retried Extend, and more only when the holder extends one lease from
// several goroutines at once. With live, a lease whose record has expired
// (by this client's clock, whatever l.Deadline says) gets ErrLost; past
// the expiry in l.Handle, fenced reads the record, which a later Extend
// may have renewed.
func (b *backend) fenced(ctx context.Context, l driver.Lease, live bool, op func(idx uint64, cur *record) (capi.TxnOps, int)) (*capi.TxnResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	idx, exp := handleIndex(l)
	if live && !clock.Now().Before(exp) {
		idx = 0
	}
	var rec *record // the record read, after the first round
	for round := 0; round < 8; round++ {
		if idx != 0 {
			ops, nCond := op(idx, rec)
			ok, resp, err := b.txn(ctx, ops, nCond)
			if err != nil || ok {
				return resp, err
			}
		}
		cur, r, err := b.read(ctx, l)
		if err != nil {
			return nil, err
		}
		if live && !clock.Now().Before(time.UnixMilli(r.Expiry)) {
			return nil, driver.ErrLost
		}
		idx, rec = cur.ModifyIndex, &r
	}
	return nil, errors.New("lock record keeps changing under its own holder (concurrent Extend of one lease?)")
}

// Extend implements driver.Claimer: a cas rewrite of the lease record.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ttl = roundTTL(ttl)
	lk := b.lockKey(l.Key)
	var exp int64
	sq, sn := handleQueue(l) // a fair lease's served queue entries: kept
	_, hexp := handleIndex(l)
	resp, err := b.fenced(ctx, l, true, func(idx uint64, cur *record) (capi.TxnOps, int) {
		prev := hexp.UnixMilli() // the expiry of the record at idx
		if cur != nil {
			sq, sn, prev = cur.SQ, cur.SN, cur.Expiry
		}
		start := clock.Now()
		if ceilMs(start.Add(ttl)) == prev {
			// The record would come out byte for byte the one it
			// replaces (a grant written on a clock ahead of this one by
			// the time since), and Consul then keeps the key's
			// ModifyIndex: the Rev a waiter's sighting is of
			// (heldUntil) would not tell the two writes apart, and it
			// would count this renewal from its sighting of the grant.
			// A millisecond later in the record (not in the Deadline,
			// which the client counts from before this call) makes it
			// a write of its own.
			start = start.Add(time.Millisecond)
		}
		var rec []byte
		rec, exp = newRecordServed(l.Holder, start, ttl, sq, sn, sightedV)
		return capi.TxnOps{kvOp(capi.KVCAS, lk, idx, rec)}, 1
	})
	if err != nil {
		return driver.Lease{}, err
	}
	w := written(resp, lk)
	if w == nil {
		return driver.Lease{}, errors.New("transaction result lacks the lock key")
	}
	l.TTL, l.Handle = ttl, handleServed(w.ModifyIndex, exp, sq, sn, l.Token, l.Holder)
	b.extendQueue(l.Key, l.Token, time.UnixMilli(exp)) // a fair lease's queue watch, if any
	return l, nil
}

// Release implements driver.Claimer.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Past this copy's Deadline (or its Handle's expiry), a later Extend
	// may have renewed the lease: read the record to tell, and release at
	// the index just read.
	var expired bool
	if _, exp := handleIndex(l); l.Expired(clock.Now()) || !clock.Now().Before(exp) {
		cur, r, err := b.read(ctx, l)
		if err != nil {
			return err
		}
		expired = !clock.Now().Before(time.UnixMilli(r.Expiry))
		l.Handle = handle(cur.ModifyIndex, r.Expiry, l.Token, l.Holder)
	}
	if err := b.commit(ctx, l, nil, 0, false, true); err != nil {
		return err
	}
	if expired {
		return fmt.Errorf("%w (it had expired; its lock, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// commit is one transaction conditioned on the lease's lock key (a
// check-index on its ModifyIndex): the set of the value key (write), then
// the delete of the lock key and a write of the notify key (release). A
// write needs a live lease; a release alone frees an expired one too. A
// write with a release (CommitRelease) of at most maxWakeValue bytes
// copies the stored value into the notify key, for SubscribeValue: the
// value and its wake-up commit in the one transaction, so no read can see
// one without the other.
func (b *backend) commit(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration, write, release bool) error {
	lk := b.lockKey(l.Key)
	var then capi.TxnOps
	var stored []byte
	if write {
		stored = encodeValue(value, ttl, time.Now())
		then = append(then, kvOp(capi.KVSet, b.valueKey(l.Key), 0, stored))
	}
	if release {
		nv := notifyValue()
		if write && len(value) <= maxWakeValue {
			nv = notifyCarrying(stored)
		}
		// delete-cas of an absent key succeeds: check-index first.
		then = append(then, kvOp(capi.KVDelete, lk, 0, nil), kvOp(capi.KVSet, b.notifyKey(l.Key), 0, nv))
	}
	_, err := b.fenced(ctx, l, write, func(idx uint64, _ *record) (capi.TxnOps, int) {
		return append(capi.TxnOps{kvOp(capi.KVCheckIndex, lk, idx, nil)}, then...), 1
	})
	return err
}

// Revoke implements driver.Claimer: one transaction, with no condition,
// deletes the lock key (whoever holds it) and the fair queue, sets or
// deletes the value key and writes the notify key, so the lease and the value change in one
// atomic step and the key's blocking queries (and poll reads) wake its
// subscribers once it is visible. A revoked holder's Extend, Commit and
// Release find the lock key gone, or created anew with another
// CreateIndex: ErrLost. The fence needs nothing kept: the token is the
// raft index of the claiming write, and every later claim is a later
// write.
func (b *backend) Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	vop := kvOp(capi.KVDelete, b.valueKey(key), 0, nil)
	if value != nil {
		vop = kvOp(capi.KVSet, b.valueKey(key), 0, encodeValue(value, ttl, time.Now()))
	}
	// The fair queue goes too: its head may be marked served only in the
	// lock record (see record); its waiters, told by a zero Lease,
	// enqueue again.
	ops := capi.TxnOps{kvOp(capi.KVDelete, b.lockKey(key), 0, nil), vop, kvOp(capi.KVSet, b.notifyKey(key), 0, notifyValue()),
		kvOp(capi.KVDelete, b.queueKey(key), 0, nil)}
	_, _, err := b.txn(ctx, ops, 0)
	if err == nil {
		b.dropQueue(key, 0) // a fair lease's queue watch, if any
	}
	return err
}
