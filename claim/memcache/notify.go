package memcache

import (
	"cmp"
	"context"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
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
	return pollState(items[lk], items[nk]), nil
}

// pollState is the state of a key whose lock and notify counter items
// were read as lock and n (nil: missing). The token is the notify counter
// (see incr), the holder the lock's. A Revoke's tombstone (see entomb)
// shows as the holder it replaced, so replacing the lock by it wakes
// nobody: the waiters are woken once the tombstone is gone, after the
// value was replaced. The state may change by itself a second before the
// end the lock records (memcached's clock ticks once a second).
func pollState(lock, n *gomemcache.Item) driver.PollState {
	var st driver.PollState
	if lock != nil {
		var latest time.Time
		st.Holder, latest = parseLock(lock.Value)
		if strings.HasPrefix(st.Holder, tombMark) {
			st.Holder = cmp.Or(revokedHolder(st.Holder), tombMark)
		}
		if st.Holder == "" {
			st.Holder = "?" // not written by this package: held all the same
		}
		if !latest.IsZero() {
			st.Expires = latest.Add(-time.Second)
		}
	}
	st.Token = "-"
	if n != nil {
		st.Token = strings.TrimSpace(string(n.Value))
	}
	return st
}
