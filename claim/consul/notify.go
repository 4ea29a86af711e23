package consul

import (
	"context"
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
	p := &capi.KVPair{Key: b.notifyKey(key), Value: []byte(strconv.FormatInt(time.Now().UnixMilli(), 10))}
	if _, err := b.kv.Put(p, wo(ctx)); err != nil {
		return fmt.Errorf("consul: notify %q: %w", key, err)
	}
	return nil
}

// watcher is the blocking query of one key.
type watcher struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// state is what a wake-up depends on: which lease holds the key (its
// CreateIndex, 0 if none) and the last notification. Extend changes
// neither, so it wakes nobody; a release always shows (the lease is gone,
// or replaced by one with a new CreateIndex, or, if a lease came and went
// between two reads, the prefix's index moved with nothing in it).
type state struct{ lease, notify uint64 }

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
		// With no lease before or after, an advanced index means a lease
		// came and went in between (its tombstone moved the index).
		churn := next.lease == 0 && st.lease == 0 && meta.LastIndex > idx
		if gap || churn || next != st {
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
			ms, err := strconv.ParseInt(string(p.Value), 10, 64)
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
