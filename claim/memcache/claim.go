package memcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
)

// seconds rounds ttl up to whole seconds, at least one.
func seconds(ttl time.Duration) int64 {
	return max(1, int64((ttl+time.Second-1)/time.Second))
}

// exptime converts a lifetime in seconds to memcached's exptime: relative
// up to 30 days, an absolute Unix time beyond (memcached reads any larger
// number as one).
func exptime(sec int64, now time.Time) (int32, error) {
	if sec <= maxRelative {
		return int32(sec), nil
	}
	abs := now.Unix() + sec
	if abs > 1<<31-1 {
		return 0, fmt.Errorf("ttl of %ds ends after 2038, beyond memcached's exptime", sec)
	}
	return int32(abs), nil
}

// lockItem is holder's lock item for a lease of sec seconds from start.
// Its value is "HOLDER UNIXMS", UNIXMS being the latest time (holder's
// clock) the server can keep the item: start + exptime.
func (b *backend) lockItem(key, holder string, sec int64, start time.Time) (*gomemcache.Item, error) {
	exp, err := exptime(sec+lockSlack, start)
	if err != nil {
		return nil, err
	}
	latest := start.Add(time.Duration(sec+lockSlack) * time.Second)
	v := holder + " " + strconv.FormatInt(latest.UnixMilli(), 10)
	return &gomemcache.Item{Key: b.item('l', key), Value: []byte(v), Expiration: exp}, nil
}

func parseLock(v []byte) (holder string, latest time.Time) {
	h, ms, ok := strings.Cut(string(v), " ")
	if !ok {
		return h, time.Time{}
	}
	n, _ := strconv.ParseInt(ms, 10, 64)
	return h, time.UnixMilli(n)
}

// TryClaim implements driver.Claimer: add of the lock item, then incr of
// the fence counter (two round trips; three when the counter must be
// created). ttl is rounded up to whole seconds.
func (b *backend) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	sec := seconds(ttl)
	lock, err := b.lockItem(key, holder, sec, time.Now())
	if err != nil {
		return driver.Lease{}, err
	}
	err = do0(ctx, b, func() error { return b.c.Add(lock) })
	if errors.Is(err, gomemcache.ErrNotStored) {
		he := &driver.HeldError{}
		if it, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(lock.Key) }); err == nil {
			if _, latest := parseLock(it.Value); !latest.IsZero() {
				he.Remaining = max(0, time.Until(latest))
			}
		}
		return driver.Lease{}, he
	}
	if err != nil {
		return driver.Lease{}, err
	}
	// The token is drawn after the add succeeded, so tokens are issued in
	// the order the leases were granted.
	token, err := b.incr(ctx, b.item('f', key))
	if err != nil {
		// No token, no lease: free the key again if we still can (else
		// the lock expires by its TTL).
		_, _ = b.swapLock(ctx, driver.Lease{Key: key, Holder: holder}, false, func(it *gomemcache.Item) { it.Expiration = -1 })
		return driver.Lease{}, err
	}
	return driver.Lease{Key: key, Holder: holder, Token: token, TTL: time.Duration(sec) * time.Second}, nil
}

// incr increments a counter that never expires, creating it (at the
// current Unix time in microseconds, so a counter lost to eviction or a
// restart comes back larger than it was) when missing.
func (b *backend) incr(ctx context.Context, k string) (uint64, error) {
	increment := func() (uint64, error) { return b.c.Increment(k, 1) }
	n, err := do(ctx, b, increment)
	if !errors.Is(err, gomemcache.ErrCacheMiss) {
		return n, err
	}
	base := uint64(time.Now().UnixMicro())
	err = do0(ctx, b, func() error {
		return b.c.Add(&gomemcache.Item{Key: k, Value: []byte(strconv.FormatUint(base, 10))})
	})
	if err == nil {
		return base, nil
	}
	if !errors.Is(err, gomemcache.ErrNotStored) {
		return 0, err
	}
	return do(ctx, b, increment) // someone else created it just now
}

// checkLock checks it, l's lock item as read (nil: missing): ErrLost if
// it is gone or another holder's, or (unless endedOK) if the lease's
// recorded end has passed. ended reports that it has: the lease is no
// longer current, though memcached (whole seconds, and lockSlack) may not
// have dropped the item yet.
func checkLock(it *gomemcache.Item, l driver.Lease, endedOK bool) (ended bool, err error) {
	if it == nil {
		return false, driver.ErrLost
	}
	h, latest := parseLock(it.Value)
	// latest is when memcached drops the item at the latest: the lease's
	// own end plus lockSlack.
	ended = !latest.IsZero() && !time.Now().Before(latest.Add(-lockSlack*time.Second))
	if h != l.Holder || (ended && !endedOK) {
		return false, driver.ErrLost
	}
	return ended, nil
}

// ownLock reads l's lock with gets and checks it (checkLock).
func (b *backend) ownLock(ctx context.Context, l driver.Lease, endedOK bool) (it *gomemcache.Item, ended bool, err error) {
	it, err = do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(b.item('l', l.Key)) })
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil, false, driver.ErrLost
	}
	if err != nil {
		return nil, false, err
	}
	ended, err = checkLock(it, l, endedOK)
	return it, ended, err
}

// swapLock replaces l's lock item, read with ownLock, by the item next
// returns, with CompareAndSwap. A CAS conflict caused by the same holder
// (a concurrent Extend of this lease) is retried; one by another holder
// means the lease was lost.
func (b *backend) swapLock(ctx context.Context, l driver.Lease, endedOK bool, next func(it *gomemcache.Item)) (ended bool, err error) {
	for range 3 {
		it, ended, err := b.ownLock(ctx, l, endedOK)
		if err != nil {
			return false, err
		}
		next(it)
		err = do0(ctx, b, func() error { return b.c.CompareAndSwap(it) })
		switch {
		case err == nil:
			return ended, nil
		case errors.Is(err, gomemcache.ErrCacheMiss):
			return false, driver.ErrLost
		case !errors.Is(err, gomemcache.ErrCASConflict):
			return false, err
		}
	}
	return false, driver.ErrLost
}

// Extend implements driver.Claimer: gets the lock, check the holder and
// the lease's recorded end, CAS it with the new expiry.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	sec := seconds(ttl)
	lock, err := b.lockItem(l.Key, l.Holder, sec, time.Now())
	if err != nil {
		return driver.Lease{}, err
	}
	_, err = b.swapLock(ctx, l, false, func(it *gomemcache.Item) { it.Value, it.Expiration = lock.Value, lock.Expiration })
	if err != nil {
		return driver.Lease{}, err
	}
	l.TTL = time.Duration(sec) * time.Second
	return l, nil
}

// Release implements driver.Claimer: gets the lock, check the holder, CAS
// the lock to an already-expired item, then incr the notify counter (three
// round trips). Pollers see the lock gone or the counter changed only
// once the key is free. A lease past its recorded end still frees its
// lock, and gets ErrLost.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	ended, err := b.swapLock(ctx, l, true, func(it *gomemcache.Item) { it.Expiration = -1 })
	if err != nil {
		return err
	}
	if _, err := b.incr(ctx, b.item('n', l.Key)); err != nil {
		return fmt.Errorf("released, but the notify counter was not bumped (a poller that never saw the lock misses the release): %w", err)
	}
	if ended {
		return fmt.Errorf("%w (it had expired; its lock, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// commitTries bounds Commit's attempts when the value item changes
// between its read and its write.
const commitTries = 3

// Commit implements driver.Claimer. It is not atomic; see the package
// documentation for exactly what it guarantees. One multi-get reads the
// lock (checked as Extend does) and the value item with its CAS id; the
// write is conditional on that read: a cas of the value item read, or an
// add where there was none. So a write that reaches the server late (it
// outlived its call's I/O timeout, or its context) never replaces a value
// written after that read, such as a newer holder's: it fails on the
// server. A value that changed between the read and the write is read
// again (the lock too).
func (b *backend) Commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	it, err := b.valueItem(l.Key, val, ttl)
	if err != nil {
		return err
	}
	lk := b.item('l', l.Key)
	for range commitTries {
		items, err := do(ctx, b, func() (map[string]*gomemcache.Item, error) { return b.c.GetMulti([]string{lk, it.Key}) })
		if err != nil {
			return err
		}
		if _, err := checkLock(items[lk], l, false); err != nil {
			return err
		}
		write := b.c.Add
		if cur := items[it.Key]; cur != nil {
			it.CasID, write = cur.CasID, b.c.CompareAndSwap
		}
		err = do0(ctx, b, func() error { return write(it) })
		switch {
		case err == nil:
			return b.landed(ctx, l, it)
		case errors.Is(err, gomemcache.ErrNotStored), errors.Is(err, gomemcache.ErrCASConflict), errors.Is(err, gomemcache.ErrCacheMiss):
			continue // written or deleted since the read: read again
		default:
			return serverErr(err)
		}
	}
	return fmt.Errorf("the value was written by others %d times during the commit (unfenced Set calls?)", commitTries)
}

// landed judges Commit's acknowledged write of it: before the lease's
// local Deadline it was applied while the lease was certainly live;
// later, it may have landed after the lease ended: it is taken back
// (gets, compare the bytes, CAS to expired; within ctx) unless someone
// replaced it, and the lease is reported lost.
func (b *backend) landed(ctx context.Context, l driver.Lease, it *gomemcache.Item) error {
	if !l.Expired(time.Now()) {
		return nil
	}
	cur, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(it.Key) })
	if err == nil && bytes.Equal(cur.Value, it.Value) {
		cur.Expiration = -1
		_ = do0(ctx, b, func() error { return b.c.CompareAndSwap(cur) })
	}
	return fmt.Errorf("%w (write acknowledged after the local deadline, withdrawn)", driver.ErrLost)
}
