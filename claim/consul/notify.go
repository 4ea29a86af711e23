package consul

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Subscribe implements driver.Notifier: SubscribeMany of one key.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return b.subscribe(ctx, []string{key}, []func([]byte){func([]byte) { wake() }})
}

// SubscribeValue implements driver.ValueNotifier: Subscribe, whose wake
// gets the value a CommitRelease (or CommitReleaseMany) of up to
// maxWakeValue bytes wrote into the notify key with its release, when
// the read that woke it (blocking query or poll) found the notify key
// moved since the last and holding such a value; nil otherwise (Release,
// Notify, Revoke, a lease gone without a release, a failed or first read
// after a failure, a larger value, a value whose TTL ran out before the
// read). The notify key's latest write is the newest of the key's
// releases and notifications: a CommitRelease followed by a Release or
// Notify before the read wakes with nil, never with a superseded value.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func(value []byte)) error {
	return b.subscribe(ctx, []string{key}, []func([]byte){wake})
}

// watchLocked starts watching id's key for s, which holds the state its
// subscriber read: a blocking query (which starts with a list that does
// not block, for its index, and hands s the state if it moved), or, with
// every slot taken, the poll loop. b.mu is held.
func (b *backend) watchLocked(id subID, s sub) {
	if b.o.MaxWatches >= 0 && len(b.watchers)+len(b.qwatches) >= b.o.MaxWatches {
		if g, ok := s.(*grantSub); ok {
			g.polled = true
		}
		b.polled[id] = s
		if b.pollDone == nil {
			b.pollDone = make(chan struct{})
			go b.pollLoop(b.ctx, b.pollDone)
		}
		return
	}
	wctx, cancel := context.WithCancel(b.ctx)
	w := &watcher{cancel: cancel}
	b.watchers[id] = w
	b.watchWG.Add(1)
	go b.watch(wctx, b.dir(id.key), s, w)
}

// unwatch stops watching for id: after it returns, id's sub is not
// called again. It does not wait for the blocking query's goroutine to
// end (Close does): a waiter that got its lease from a wake-up or grant
// leaves at once.
func (b *backend) unwatch(id subID) {
	b.mu.Lock()
	w := b.watchers[id]
	delete(b.watchers, id)
	delete(b.polled, id)
	b.mu.Unlock()
	if w != nil {
		w.mu.Lock()
		w.stopped = true
		w.mu.Unlock()
		w.cancel()
	}
}

// Unsubscribe implements driver.Notifier. The poll loop ends by itself
// once no key is left.
func (b *backend) Unsubscribe(key string) { b.unwatch(subID{key: key}) }

// Notify implements driver.Notifier: a write of the key's notify key.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.write(ctx, kvOp(capi.KVSet, b.notifyKey(key), 0, notifyValue()))
}

// notifyValue is what a notification writes to the notify key: the time
// in Unix milliseconds (by which Sweep judges it), a space, and a random
// part. Every write must differ from the last: Consul does not move a
// key's ModifyIndex for a write of the value it already holds, and then
// nobody would see that notification.
func notifyValue() []byte { return notifyCarrying(nil) }

// maxWakeValue is the largest value a CommitRelease carries in its
// notify key (driver.ValueNotifier). The copy doubles the bytes the
// transaction writes and stays in the notify key (every answer of the
// key's blocking queries and poll reads carries it) until the key's next
// release or notification, or Sweep. At 8 KiB a full CommitReleaseMany of
// 64 keys still fits the 4 transactions of 16 keys it takes without the
// copy (16 keys × 2 base64 copies of 8 KiB stay under txnBudget), and a
// single CommitRelease stays far below it whatever MaxValueLen allows.
const maxWakeValue = 8 << 10

// notifyCarrying is notifyValue, followed by a newline and stored (a
// value as the value key holds it, header and expiry included) when
// stored is not nil: the notify key of a CommitRelease whose wake-up
// carries its value. Neither the time nor the random part holds a
// newline, so the first one ends them.
func notifyCarrying(stored []byte) []byte {
	var r [8]byte
	_, _ = crand.Read(r[:])
	v := make([]byte, 0, 48+len(stored))
	v = strconv.AppendInt(v, time.Now().UnixMilli(), 10)
	v = append(v, ' ')
	v = hex.AppendEncode(v, r[:])
	if stored != nil {
		v = append(v, '\n')
		v = append(v, stored...)
	}
	return v
}

// carried returns the value a notify key's content nv carries (see
// notifyCarrying), or nil: none, malformed, or past its TTL at now (the
// value key's copy would read as absent).
func carried(nv []byte, now time.Time) []byte {
	i := bytes.IndexByte(nv, '\n')
	if i < 0 {
		return nil
	}
	v, expired, ok := decodeValue(nv[i+1:], now)
	if !ok || expired {
		return nil
	}
	return v
}

// wakeValue is what a read that wakes a key from st to next (with nv,
// the notify key's content it read) hands to the wake: the value carried
// if the notify key was written after st was read (a later raft index),
// else nil. An index lower than st's (a server whose state was reset or
// restored) carries nothing: that write may predate the subscription.
func wakeValue(st, next state, nv []byte) []byte {
	if next.notify <= st.notify {
		return nil
	}
	return carried(nv, time.Now())
}

// watcher is the blocking query of one key.
type watcher struct {
	cancel  context.CancelFunc
	mu      sync.Mutex // held while the sub is called
	stopped bool       // unwatched: the sub is not called again
}

// seen hands a read to s unless w was stopped.
func (w *watcher) seen(s sub, pairs capi.KVPairs, gap bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return !w.stopped && s.seen(pairs, gap)
}

// failed hands a failed read to s unless w was stopped.
func (w *watcher) failed(s sub) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		s.failed()
	}
}

// subID names one subscription of a key: its wake-ups (Subscribe,
// SubscribeValue, SubscribeMany) or its grants (SubscribeGrants). Each
// has a blocking query (or a place in the poll loop) of its own.
type subID struct {
	key    string
	grants bool
}

// sub is what a subscription does with the reads of its key's lock and
// notify keys (a blocking query's, or the poll loop's). Its methods are
// never called concurrently, nor after the subscription is dropped
// (the poll loop calls them under b.mu).
type sub interface {
	// seen takes a read (gap: the first after a failed one) and reports
	// whether it woke the subscriber.
	seen(pairs capi.KVPairs, gap bool) bool
	// failed takes a failed read.
	failed()
}

// wakeSub is the sub of a key's wake-ups: it wakes by state.wakes,
// from the state last seen.
type wakeSub struct {
	b    *backend
	key  string
	st   state
	wake func([]byte)
}

func (s *wakeSub) seen(pairs capi.KVPairs, gap bool) bool {
	next, nv := s.b.stateOf(s.key, pairs)
	woke := gap || s.st.wakes(next)
	if woke {
		// After a gap (the agent may have restarted, its indexes with
		// it) the wake carries nothing: the subscribers re-check.
		var v []byte
		if !gap {
			v = wakeValue(s.st, next, nv)
		}
		s.wake(v)
	}
	s.st = next
	return woke
}

func (s *wakeSub) failed() { s.wake(nil) }

// state is what a wake-up depends on: which lease holds the key (its
// CreateIndex, 0 if none) and the last notification (the notify key's
// ModifyIndex).
type state struct{ lease, notify uint64 }

// wakes reports whether going from st to next wakes the key's
// subscribers: the notify key moved (a release or Notify, even with a
// claim after it between two reads), or the lease st saw is gone or
// replaced (released, expired and swept, taken over). A claim of a free
// key wakes nobody (a waiter checks the key after Subscribe returned, so
// it sees the claim itself), nor does Extend (it changes neither index).
// Nor does an advanced index with no lease before or after: on a key
// whose directory is empty, Consul reports the whole KV store's index,
// which every write anywhere moves, so it cannot tell a lease that came
// and went without a release (expired and swept) from a neighbour's
// write; waiters bound their wait by the lease they saw, as for polled
// keys.
func (st state) wakes(next state) bool {
	return next.notify != st.notify || (st.lease != 0 && next.lease != st.lease)
}

// stateOf returns the state pairs (a read of key's lock and notify keys)
// show, and the notify key's content.
func (b *backend) stateOf(key string, pairs capi.KVPairs) (state, []byte) {
	var s state
	var nv []byte
	lk, nk := b.lockKey(key), b.notifyKey(key)
	for _, p := range pairs {
		switch p.Key {
		case lk:
			s.lease = p.CreateIndex
		case nk:
			s.notify, nv = p.ModifyIndex, p.Value
		}
	}
	return s, nv
}

// Blocking queries.
const (
	// minWait is the wait of a key's first blocking query, and of the
	// first after a wake-up; each query that returns without waking
	// anybody doubles it, up to Options.WaitTime. Consul does not notice
	// a client that gives up a blocking query (Unsubscribe, Close): its
	// connection stays open on the agent, counting against
	// http_max_conns_per_client, until the query's wait ends. Most
	// subscriptions end within a wake-up or two of their start, so
	// their abandoned queries are short ones.
	minWait = time.Second
	// queryGrace is how long past its wait (plus Consul's jitter of up to
	// a sixteenth of it) a blocking query may take before the driver
	// gives up on it: a connection that died without a word fails the
	// query then, instead of never.
	queryGrace = 5 * time.Second
)

// watch runs the blocking query of one key (its directory dir) for s
// until ctx is cancelled (Unsubscribe, or Close), with waits from minWait
// up to WaitTime. A failed query is handed to s at once (the connection
// is lost or refused: the subscribers re-check, and meet the error or
// take over, rather than wait for a wake-up that cannot come); the
// driver then backs off (jittered, up to 5 s), re-reads without blocking
// and hands s that read as the end of a gap.
func (b *backend) watch(ctx context.Context, dir string, s sub, w *watcher) {
	defer b.watchWG.Done()
	bo := driver.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second, Rand: rand.Float64}
	gap := false
	var idx uint64
	wait := min(minWait, b.o.WaitTime)
	for {
		q := &capi.QueryOptions{WaitIndex: idx, WaitTime: wait}
		qctx, cancel := context.WithTimeout(ctx, wait+wait/16+queryGrace)
		pairs, meta, err := b.watchKV.List(dir, q.WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = indexed(meta)
		}
		if err != nil {
			if !gap {
				w.failed(s)
			}
			if !sleep(ctx, &bo) {
				return
			}
			idx, gap, wait = 0, true, min(minWait, b.o.WaitTime)
			continue
		}
		bo.Reset()
		b.sightLock(dir+"lock", pairs, clock.Now())
		if w.seen(s, pairs, gap) {
			wait = min(minWait, b.o.WaitTime)
		} else if idx != 0 { // a blocking query, not the first read
			wait = min(2*wait, b.o.WaitTime)
		}
		gap = false
		// An index that goes backwards (server state reset) restarts
		// from a non-blocking read.
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
	}
}

// sightLock records the blocking query's read of the lease record in
// pairs (the lock key lk's, if there is one) as a sighting of its write
// (see heldUntil): an Extend, which wakes nobody, still ends the query,
// so a subscribed waiter counts a renewed lease from about when it was
// renewed, not from its own next read.
func (b *backend) sightLock(lk string, pairs capi.KVPairs, at time.Time) {
	for _, p := range pairs {
		if p.Key != lk {
			continue
		}
		if r, ok := parseRecord(p.Value); ok {
			b.heldUntil(lk, p, r, at)
		}
		return
	}
}

// pollBatch is how many keys one poll request reads: two get-or-empty
// operations each (lock and notify key), within Consul's 64 operations
// per transaction.
const pollBatch = 32

// pollLoop reads the keys of b.polled until none is left or ctx is
// cancelled: one read-only transaction per pollBatch keys, every 2 ms
// after a change, backing off to 50 ms (jittered) while nothing changes.
// It wakes by state.wakes, as the blocking queries do. A failed read wakes
// the keys it covered.
func (b *backend) pollLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	bo := driver.Backoff{Min: driver.DefaultPollMin, Max: driver.DefaultPollMax, Rand: rand.Float64}
	for sleep(ctx, &bo) {
		b.mu.Lock()
		if len(b.polled) == 0 || b.closed {
			b.pollDone = nil
			b.mu.Unlock()
			return
		}
		ids := make([]subID, 0, len(b.polled))
		for id := range b.polled {
			ids = append(ids, id)
		}
		b.mu.Unlock()
		for len(ids) > 0 {
			n := min(len(ids), pollBatch)
			if woke, err := b.pollRead(ctx, ids[:n]); woke && err == nil {
				bo.Reset() // after a failure, keep backing off
			}
			ids = ids[n:]
		}
	}
}

// sleep waits for bo's next interval and reports whether ctx is still
// live.
func sleep(ctx context.Context, bo *driver.Backoff) bool {
	d, _ := bo.Next(time.Now(), time.Time{})
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	return ctx.Err() == nil
}

// pollRead reads the keys of ids in one transaction and hands each
// subscription its read; it reports whether any woke its subscriber, and
// the read's failure.
func (b *backend) pollRead(ctx context.Context, ids []subID) (bool, error) {
	ops := make(capi.TxnOps, 0, 2*len(ids))
	for _, id := range ids {
		ops = append(ops, kvOp(capi.KVGetOrEmpty, b.lockKey(id.key), 0, nil), kvOp(capi.KVGetOrEmpty, b.notifyKey(id.key), 0, nil))
	}
	rctx, cancel := context.WithTimeout(ctx, driver.DefaultPollReadTimeout)
	_, resp, err := b.txn(rctx, ops, 0)
	cancel()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err == nil && len(resp.Results) != len(ops) {
		err = errors.New("poll transaction: unexpected answer")
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	woke := false
	for i, id := range ids {
		s := b.polled[id]
		if s == nil {
			continue // unsubscribed meanwhile
		}
		if err != nil {
			s.failed()
			continue
		}
		var pairs capi.KVPairs
		for _, r := range resp.Results[2*i : 2*i+2] {
			if r.KV != nil {
				pairs = append(pairs, r.KV)
			}
		}
		if s.seen(pairs, false) {
			woke = true
		}
	}
	return woke, err
}
