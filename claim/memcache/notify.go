package memcache

import (
	"cmp"
	"context"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Notify implements driver.Notifier: incr of the key's notify counter,
// which every poll loop of the key compares.
func (b *backend) Notify(ctx context.Context, key string) error {
	_, err := b.incr(ctx, b.item('n', key))
	return err
}

// preRead is the context key under which SubscribeMany hands readState
// the states its one multi-get read (a map[string]driver.PollState by
// key), so that Poller.Subscribe's first read costs no request.
type preRead struct{}

// readState is the poll: the lock and the notify counter in one
// multi-get (pollState), or, for a key SubscribeMany has just read, that
// state.
func (b *backend) readState(ctx context.Context, key string) (driver.PollState, error) {
	if pre, ok := ctx.Value(preRead{}).(map[string]driver.PollState); ok {
		if st, ok := pre[key]; ok {
			return st, nil
		}
	}
	lk, nk := b.item('l', key), b.item('n', key)
	items, err := b.getMulti(ctx, lk, nk)
	if err != nil {
		return driver.PollState{}, err
	}
	return b.pollState(key, items[lk], items[nk], clock.Now()), nil
}

// readStates is the batched poll (driver.NewBatchPoller): every key's
// lock and notify counter in one multi-get.
func (b *backend) readStates(ctx context.Context, keys, _ []string) ([]driver.PollState, error) {
	ks := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		ks = append(ks, b.item('l', k), b.item('n', k))
	}
	items, err := b.getMulti(ctx, ks...)
	if err != nil {
		return nil, err
	}
	now := clock.Now()
	out := make([]driver.PollState, len(keys))
	for i, k := range keys {
		out[i] = b.pollState(k, items[ks[2*i]], items[ks[2*i+1]], now)
	}
	return out, nil
}

// pollState is the state of key, whose lock and notify counter items
// were read as lock and n (nil: missing) in an answer that arrived at now
// (clock.Now). The token is the notify counter (see incr), the holder the
// lock's, or none once the lock's lease is over and this client may take
// it over (heldUntil passed: its recorded end plus ClockSkew, or sooner
// if this client saw the lock written when it was made): then the poll
// that sees it wakes the waiters, who take it over (TryClaim judges by
// the same sightings). The state is due to change by itself at that
// time, when the poller looks again. A Revoke's tombstone (see entomb)
// shows as the holder it replaced, so replacing the lock by it wakes
// nobody: the waiters are woken once the tombstone is gone, after the
// value was replaced.
func (b *backend) pollState(key string, lock, n *gomemcache.Item, now time.Time) driver.PollState {
	var st driver.PollState
	if lock != nil {
		ls := parseState(lock.Value)
		h := ls.holder
		if strings.HasPrefix(h, tombMark) {
			h = cmp.Or(revokedHolder(h), tombMark)
		}
		if h == "" {
			h = "?" // not written by this package: held all the same
		}
		if ls.latest.IsZero() {
			st.Holder = h
		} else if free := b.heldUntil(key, &ls, now); now.Before(free) {
			st.Holder, st.Expires = h, free
		}
	} else {
		b.seen.Forget(key) // the key is free: what was seen of it is over
	}
	st.Token = "-"
	if n != nil {
		st.Token = strings.TrimSpace(string(n.Value))
	}
	return st
}
