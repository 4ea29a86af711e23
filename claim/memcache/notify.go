package memcache

import (
	"context"
	"strings"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// Subscribe implements driver.Notifier: it reads the key's state (one
// round trip) and starts the key's poll loop. A release or notification
// after Subscribe returns is seen by a later poll, within the poll cap
// (50 ms by default) of happening; this process's own Release and Notify
// call wake at once.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	if err := b.poller.Subscribe(ctx, key, wake); err != nil {
		return err
	}
	b.mu.Lock()
	b.wakes[key] = wake
	b.mu.Unlock()
	return nil
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) {
	b.mu.Lock()
	delete(b.wakes, key)
	b.mu.Unlock()
	b.poller.Unsubscribe(key)
}

// wake calls key's wake if this process subscribed to it; under mu, so
// never after Unsubscribe returned.
func (b *backend) wake(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.wakes[key]; w != nil {
		w()
	}
}

// Notify implements driver.Notifier: incr of the key's notify counter,
// which every poll loop of the key compares; this process's own
// subscribers are woken at once.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := b.incr(b.item('n', key)); err != nil {
		return err
	}
	b.wake(key)
	return nil
}

// readState is the poll: the lock and the notify counter in one
// multi-get. The token is the notify counter, which Release and Notify
// bump, and which never comes back to a value it had (a counter lost to
// eviction or a restart is re-created at the current Unix time in
// microseconds); the holder is the lock's. So a claim on a free key wakes
// nobody, and a release, notification, expiry or takeover does (see
// driver.Poller). The state may change by itself a second before the end
// the lock records (memcached's clock ticks once a second).
func (b *backend) readState(ctx context.Context, key string) (driver.PollState, error) {
	if err := ctx.Err(); err != nil {
		return driver.PollState{}, err
	}
	lk, nk := b.item('l', key), b.item('n', key)
	items, err := b.c.GetMulti([]string{lk, nk})
	if err != nil {
		return driver.PollState{}, err
	}
	var st driver.PollState
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
	st.Token = "-"
	if it := items[nk]; it != nil {
		st.Token = strings.TrimSpace(string(it.Value))
	}
	return st, nil
}
