package consul

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
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
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return claim.ErrClosed
	}
	wctx, cancel := context.WithCancel(b.ctx)
	w := &watcher{cancel: cancel, done: make(chan struct{})}
	b.watchers[key] = w
	b.mu.Unlock()
	go b.watch(wctx, key, dir, meta.LastIndex, b.stateOf(key, pairs), w.done)
	return nil
}

func (s substrate) Unsubscribe(key string) {
	b := s.b
	b.mu.Lock()
	w := b.watchers[key]
	delete(b.watchers, key)
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
		pairs, meta, err := b.kv.List(dir, q.WithContext(ctx))
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
