package memcache

import (
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

// readState is the poll: the lock and the notify counter in one
// multi-get. The token is the notify counter (see incr), the holder the
// lock's. The state may change by itself a second before the end the lock
// records (memcached's clock ticks once a second).
func (b *backend) readState(ctx context.Context, key string) (driver.PollState, error) {
	lk, nk := b.item('l', key), b.item('n', key)
	items, err := do(ctx, b, func() (map[string]*gomemcache.Item, error) { return b.c.GetMulti([]string{lk, nk}) })
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
