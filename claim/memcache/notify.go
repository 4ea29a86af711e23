package memcache

import (
	"context"
	"fmt"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/poll"
)

// Subscribe implements claim.Notifier. The first subscriber of a key in
// this Backend reads the key's state (one round trip) and starts its poll
// loop; later subscribers join it. A release or notification after
// Subscribe returns is seen by a later poll, within the poll cap (50 ms by
// default) of happening.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("memcache: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier: incr of the key's notify counter,
// which every poll loop of the key compares; this Backend's own
// subscribers are woken at once.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check(ctx, "notify", key); err != nil {
		return err
	}
	if _, err := b.incr(b.item('n', key)); err != nil {
		return wrap("notify", key, err)
	}
	b.hub.Wake(key)
	return nil
}

// readState is the poll: the lock and the notify counter in one
// multi-get. The token is the notify counter, which Release and Notify
// bump, and which never comes back to a value it had (a counter lost to
// eviction or a restart is re-created at the current Unix time in
// microseconds); the holder is the lock's. So a claim on a free key wakes
// nobody, and a release, notification, expiry or takeover does (see
// internal/poll). The lock's earliest possible expiry (its exptime is one
// second longer than the lease) is when the state may change by itself.
func (b *Backend) readState(ctx context.Context, key string) (poll.State, error) {
	if err := ctx.Err(); err != nil {
		return poll.State{}, err
	}
	lk, nk := b.item('l', key), b.item('n', key)
	items, err := b.c.GetMulti([]string{lk, nk})
	if err != nil {
		return poll.State{}, err
	}
	var st poll.State
	if it := items[lk]; it != nil {
		var latest time.Time
		st.Holder, latest = parseLock(it.Value)
		if st.Holder == "" {
			st.Holder = "?" // not written by this package: held all the same
		}
		if !latest.IsZero() {
			st.Expires = latest.Add(-time.Second)
		}
	}
	st.Token = counter(items[nk])
	return st, nil
}

func counter(it *gomemcache.Item) string {
	if it == nil {
		return "-"
	}
	return strings.TrimSpace(string(it.Value))
}
