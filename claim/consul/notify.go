package consul

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/poll"
)

// Subscribe implements claim.Notifier. The first subscriber of a key in
// this Backend reads the key's state (one round trip) and starts the
// blocking query from the index of that read, so every later change is
// seen; later subscribers join it.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check("subscribe", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("consul: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier: a write of the key's notify key, which
// every subscriber's blocking query sees.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check("notify", key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &capi.KVPair{Key: b.notifyKey(key), Value: notifyValue()}
	if _, err := b.kv.Put(p, wo(ctx)); err != nil {
		return fmt.Errorf("consul: notify %q: %w", key, err)
	}
	return nil
}

// notifyValue is what a notification writes to the notify key: the time
// in Unix milliseconds (by which Sweep judges it), a space, and a random
// part. Every write must differ from the last: Consul does not move a
// key's ModifyIndex for a write of the value it already holds, and then
// nobody would see that notification.
func notifyValue() []byte {
	var r [8]byte
	_, _ = crand.Read(r[:])
	return []byte(strconv.FormatInt(time.Now().UnixMilli(), 10) + " " + hex.EncodeToString(r[:]))
}

// notifyOp is the transaction op that writes key's notify key, as Release
// and CommitRelease do along with the delete of the lock key.
func (b *Backend) notifyOp(key string) *capi.TxnOp {
	return kvOp(capi.KVSet, b.notifyKey(key), 0, notifyValue())
}

// watcher is the blocking query of one key.
type watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// state is what a wake-up depends on: which lease holds the key (its
// CreateIndex, 0 if none) and the last notification (the notify key's
// ModifyIndex, which Release, CommitRelease and Notify all move). A read
// wakes the key's subscribers if the notify key moved, or if the lease the
// previous read saw is gone or replaced (released, expired and swept,
// taken over). A lease appearing where there was none (a claim) wakes
// nobody: waiters wait for the end of a claim, not for its start, and a
// waiter checks the key after Subscribe returned, so it sees such a claim
// itself. A claim, release and claim again between two reads still wakes
// (the notify key moved). Extend changes neither, so it wakes nobody.
type state struct{ lease, notify uint64 }

// wakes reports whether going from st to next (the prefix's index having
// moved from idx to last) wakes the key's subscribers.
func (st state) wakes(next state, idx, last uint64) bool {
	if next.notify != st.notify || (st.lease != 0 && next.lease != st.lease) {
		return true
	}
	// With no lease before or after, an advanced index means a lease
	// came and went in between (its tombstone moved the index) without
	// a notification (a lease swept after expiry, or released by a
	// version of this package that did not write the notify key).
	return next.lease == 0 && st.lease == 0 && last > idx
}

func (b *Backend) stateOf(key string, pairs capi.KVPairs) state {
	var s state
	lk, nk := b.lockKey(key), b.notifyKey(key)
	for _, p := range pairs {
		switch p.Key {
		case lk:
			s.lease = p.CreateIndex
		case nk:
			s.notify = p.ModifyIndex
		}
	}
	return s
}

// substrate plugs the blocking queries into internal/hub.
type substrate struct{ b *Backend }

func (s substrate) Subscribe(ctx context.Context, key string) error {
	b := s.b
	dir := b.dir(key)
	pairs, meta, err := b.kv.List(dir, qo(ctx))
	if err != nil {
		return err
	}
	st := b.stateOf(key, pairs)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return claim.ErrClosed
	}
	if b.maxWatches >= 0 && len(b.watchers) >= b.maxWatches {
		// Every blocking-query slot is taken: the poll loop reads this
		// key from now on, starting from the state just read.
		b.polled[key] = st
		if b.pollDone == nil {
			b.pollDone = make(chan struct{})
			go b.pollLoop(b.ctx, b.pollDone)
		}
		return nil
	}
	wctx, cancel := context.WithCancel(b.ctx)
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	b.watchers[key] = w
	go b.watch(wctx, key, dir, meta.LastIndex, st, w.done)
	return nil
}

func (s substrate) Unsubscribe(key string) {
	b := s.b
	b.mu.Lock()
	w := b.watchers[key]
	delete(b.watchers, key)
	delete(b.polled, key) // the poll loop ends by itself once none is left
	b.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// watch runs the blocking query of one key until ctx is cancelled (last
// subscriber gone, or Close). After a failed query it backs off (jittered,
// up to 5 s), re-reads without blocking and wakes the key's subscribers,
// since it cannot rule out a missed release.
func (b *Backend) watch(ctx context.Context, key, dir string, idx uint64, st state, done chan struct{}) {
	defer close(done)
	var backoff time.Duration
	gap := false
	for {
		q := &capi.QueryOptions{WaitIndex: idx, WaitTime: b.wait}
		pairs, meta, err := b.watchKV.List(dir, q.WithContext(ctx))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			backoff = min(max(2*backoff, 50*time.Millisecond), 5*time.Second)
			t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			idx, gap = 0, true
			continue
		}
		backoff = 0
		next := b.stateOf(key, pairs)
		if gap || st.wakes(next, idx, meta.LastIndex) {
			b.hub.Wake(key)
		}
		st, gap = next, false
		// An index that goes backwards (server state reset) restarts
		// from a non-blocking read.
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
	}
}

// pollBatch is how many keys one poll request reads: two get-or-empty
// operations each (lock and notify key), within Consul's 64 operations
// per transaction.
const pollBatch = 32

// pollLoop reads the keys of b.polled (those subscribed while every
// blocking-query slot was taken) until none is left or ctx is cancelled:
// one read-only transaction per pollBatch keys, every 2 ms after a change,
// backing off to 50 ms (jittered) while nothing changes. A read wakes a
// key's subscribers by the same rule as a blocking query (state.wakes),
// except that an index moved with no lease before or after cannot be told
// apart from a neighbour's write here: a lease swept after expiry without
// a release goes unseen, and waiters bound their wait by the lease they
// saw (claim.Acquire, flight). A failed read wakes the keys it covered,
// since it cannot rule out a missed release.
func (b *Backend) pollLoop(ctx context.Context, done chan struct{}) {
	defer close(done)
	bo := poll.Backoff{Min: poll.DefaultMin, Max: poll.DefaultMax, Rand: rand.Float64}
	for {
		d, _ := bo.Next(time.Now(), time.Time{})
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		b.mu.Lock()
		if len(b.polled) == 0 || b.closed {
			b.pollDone = nil
			b.mu.Unlock()
			return
		}
		keys := make([]string, 0, len(b.polled))
		for k := range b.polled {
			keys = append(keys, k)
		}
		b.mu.Unlock()
		for len(keys) > 0 {
			n := min(len(keys), pollBatch)
			if woke, err := b.pollRead(ctx, keys[:n]); woke && err == nil {
				bo.Reset() // after a failure, keep backing off
			}
			keys = keys[n:]
		}
		if ctx.Err() != nil {
			return
		}
	}
}

// pollRead reads keys in one transaction, wakes those whose state calls
// for it and records the new states; it reports whether it woke any, and
// the read's failure (after which it woke them all).
func (b *Backend) pollRead(ctx context.Context, keys []string) (bool, error) {
	ops := make(capi.TxnOps, 0, 2*len(keys))
	for _, k := range keys {
		ops = append(ops, kvOp(capi.KVGetOrEmpty, b.lockKey(k), 0, nil), kvOp(capi.KVGetOrEmpty, b.notifyKey(k), 0, nil))
	}
	rctx, cancel := context.WithTimeout(ctx, poll.DefaultReadTimeout)
	ok, resp, _, err := b.c.Txn().Txn(ops, qo(rctx))
	cancel()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	if err == nil && (!ok || resp == nil || len(resp.Results) != len(ops)) {
		err = errors.New("poll transaction: unexpected answer")
	}
	if err != nil {
		for _, k := range keys {
			b.hub.Wake(k)
		}
		return true, err
	}
	woke := false
	for i, k := range keys {
		var pairs capi.KVPairs
		for _, r := range resp.Results[2*i : 2*i+2] {
			if r.KV != nil {
				pairs = append(pairs, r.KV)
			}
		}
		next := b.stateOf(k, pairs)
		b.mu.Lock()
		prev, still := b.polled[k]
		if still {
			b.polled[k] = next
		}
		b.mu.Unlock()
		if still && prev.wakes(next, 0, 0) {
			b.hub.Wake(k)
			woke = true
		}
	}
	return woke, nil
}

// Sweep deletes what expired under the backend's prefix: stored values
// past their TTL, lease records expired for longer than ClockSkew (crashed
// holders'), and notify keys older than a minute. Consul KV has no TTL of
// its own, and values nobody reads again are otherwise never deleted. It
// lists the whole prefix, so run it now and then from one process (a
// cron job), not from every instance. Each deletion is a compare-and-delete
// on the index read, so a concurrent write survives. It returns how many
// keys it deleted.
func (b *Backend) Sweep(ctx context.Context) (int, error) {
	if err := b.check("sweep", "-"); err != nil {
		return 0, err
	}
	pairs, _, err := b.kv.List(b.prefix+"/", qo(ctx))
	if err != nil {
		return 0, fmt.Errorf("consul: sweep: %w", err)
	}
	now := time.Now()
	n := 0
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, b.prefix+"/")
		var stale bool
		switch {
		case strings.HasPrefix(rest, "v/"):
			_, expired, ok := decodeValue(p.Value, now)
			stale = ok && expired
		case strings.HasSuffix(rest, "/lock"):
			r, ok := parseRecord(p.Value)
			stale = ok && now.After(time.UnixMilli(r.Expiry).Add(b.skew))
		case strings.HasSuffix(rest, "/notify"):
			t, _, _ := strings.Cut(string(p.Value), " ")
			ms, err := strconv.ParseInt(t, 10, 64)
			stale = err == nil && now.Sub(time.UnixMilli(ms)) > time.Minute
		}
		if !stale {
			continue
		}
		ok, _, err := b.kv.DeleteCAS(&capi.KVPair{Key: p.Key, ModifyIndex: p.ModifyIndex}, wo(ctx))
		if err != nil {
			return n, fmt.Errorf("consul: sweep: %w", err)
		}
		if ok {
			n++
		}
	}
	return n, nil
}
