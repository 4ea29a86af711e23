package memcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
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
// Its value is "HOLDER;0;SEC UNIXMS", UNIXMS being the lease's end
// (holder's clock: start + sec) plus lockSlack: the fair format
// (queue.go) with no token and no queue, so that the lock records its
// lease's TTL (for takeovers by sightings, heldUntil), while readers of
// the plain format "HOLDER UNIXMS" (parseLock; earlier versions, which
// wrote it) read the same holder and end. memcached keeps it lockKeep
// seconds past that end.
func (b *backend) lockItem(key, holder string, sec int64, start time.Time) (*gomemcache.Item, error) {
	exp, err := exptime(sec+lockKeep, start)
	if err != nil {
		return nil, err
	}
	latest := start.Add(time.Duration(sec+lockSlack) * time.Second)
	v := holder + ";0;" + secField(sec, true) + " " + strconv.FormatInt(latest.UnixMilli(), 10)
	return &gomemcache.Item{Key: b.item('l', key), Value: []byte(v), Expiration: exp}, nil
}

// parseLock reads a lock item's value, "HOLDER UNIXMS" (as earlier
// versions wrote it; HOLDER is "~NONCE:HOLDER" in a Revoke's tombstone,
// see entomb), or "HOLDER;FAIR... UNIXMS" (see lockItem, and parseState
// where the lock holds a fair queue): it returns the holder and the
// recorded end.
func parseLock(v []byte) (holder string, latest time.Time) {
	h, ms, ok := strings.Cut(string(v), " ")
	h, _, _ = strings.Cut(h, ";")
	if !ok {
		return h, time.Time{}
	}
	n, _ := strconv.ParseInt(ms, 10, 64)
	return h, time.UnixMilli(n)
}

// TryClaim implements driver.Claimer: add of the lock item (or, where a
// lock whose lease ended is still stored, a gets and a cas over it: see
// takeLock), then incr of the fence counter. Two round trips on a free
// key, four on a dead holder's; one more when the fence counter is
// created. ttl is rounded up to whole seconds.
func (b *backend) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	sec := seconds(ttl)
	lock, err := b.lockItem(key, holder, sec, clock.Now())
	if err != nil {
		return driver.Lease{}, err
	}
	if err := b.takeLock(ctx, key, lock); err != nil {
		return driver.Lease{}, err
	}
	// The token is drawn after the lock was stored, so tokens are issued
	// in the order the leases were granted.
	token, err := b.incr(ctx, b.item('f', key))
	if err != nil {
		// No token, no lease: free the key again if we still can (else
		// the lock expires by its TTL).
		_, _ = b.swapLock(ctx, driver.Lease{Key: key, Holder: holder}, false, nil, func(it *gomemcache.Item) { it.Expiration = -1 })
		return driver.Lease{}, err
	}
	return driver.Lease{Key: key, Holder: holder, Token: token, TTL: time.Duration(sec) * time.Second}, nil
}

// takeTries bounds takeLock's attempts when the lock changes (or
// vanishes) between its read and its write.
const takeTries = 3

// heldUntil returns when the lease that key's lock records as st, in an
// answer that arrived at at (clock.Now), may be taken over. By the clock
// rule, b.skew after the end of its lease (st.end: latest less
// lockSlack), by this client's clock: its holder gave up at that end by
// its own clock (checkLock, and its Deadline is no later), so two holders
// never overlap while the clients' clocks differ by less than b.skew. Or
// sooner if this process has watched that write of the lock since about
// when it was made (driver.Sightings: its first sighting plus the TTL
// the lock records, plus driver.TakeoverMargin, whatever the clocks
// read; the holder's Deadline counts from before it sent the write). A
// lock that does not record its TTL, or whose holder does not run this
// rule (lockState.sighted: written by or granted to an earlier version),
// is judged by the clock rule alone. The judgement is about the lease the lock
// records, not the item, which memcached keeps lockKeep seconds longer
// by its own whole-second clock.
func (b *backend) heldUntil(key string, st *lockState, at time.Time) time.Time {
	if !st.sighted {
		return driver.TakeoverAt(st.end(), b.skew, time.Time{})
	}
	end := b.seen.End(key, st.rev(), time.Duration(st.sec)*time.Second, at)
	return driver.TakeoverAt(st.end(), b.skew, end)
}

// takeLock stores lock, a new holder's lock item: an add where the key
// has no lock, or, where it has one whose lease is over (heldUntil
// passed, by this client's clock: a holder that died or gave up without
// a release, its item still kept by memcached for up to lockKeep seconds
// past its end), a cas over the lock as just read. The cas
// fails if anything changed the lock since the read (a late Extend or
// Release of its holder, a rival's takeover), so exactly one of them
// wins. Otherwise it answers a HeldError whose Remaining runs to the
// lock's heldUntil. A lock that changed or vanished between the read and
// the write is looked at again, at most takeTries times in all.
func (b *backend) takeLock(ctx context.Context, key string, lock *gomemcache.Item) error {
	for range takeTries {
		err := do0(ctx, b, func() error { return b.c.Add(lock) })
		if !errors.Is(err, gomemcache.ErrNotStored) {
			return err
		}
		cur, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(lock.Key) })
		if errors.Is(err, gomemcache.ErrCacheMiss) {
			continue // dropped since the add: add again
		}
		if err != nil {
			return &driver.HeldError{}
		}
		now := clock.Now()
		st := parseState(cur.Value)
		if st.latest.IsZero() {
			return &driver.HeldError{} // not written by this package: held, end unknown
		}
		if free := b.heldUntil(key, &st, now); now.Before(free) {
			return &driver.HeldError{Remaining: free.Sub(now)}
		}
		lock.CasID = cur.CasID
		err = do0(ctx, b, func() error { return b.c.CompareAndSwap(lock) })
		if !errors.Is(err, gomemcache.ErrCASConflict) && !errors.Is(err, gomemcache.ErrCacheMiss) {
			return err
		}
	}
	return &driver.HeldError{}
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
// longer current, though memcached (lockKeep) may not have dropped the
// item yet.
func checkLock(it *gomemcache.Item, l driver.Lease, endedOK bool) (ended bool, err error) {
	if it == nil {
		return false, driver.ErrLost
	}
	h, latest := parseLock(it.Value)
	// latest is the lease's own end plus lockSlack.
	ended = !latest.IsZero() && !clock.Now().Before(latest.Add(-lockSlack*time.Second))
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
// returns, with CompareAndSwap. first, if not nil, is the lock item as a
// multi-get just read it: the first attempt uses it instead of reading
// again. A CAS conflict is read again and checked: one caused by the same
// holder (a concurrent Extend of this lease) or by waiters queueing into
// a fair lock (queue.go) is tried again, at most fairTries times in all,
// and then fails without ErrLost (the lease is still held); one by
// another holder means the lease was lost.
func (b *backend) swapLock(ctx context.Context, l driver.Lease, endedOK bool, first *gomemcache.Item, next func(it *gomemcache.Item)) (ended bool, err error) {
	for range fairTries {
		it := first
		if it != nil {
			first = nil
			ended, err = checkLock(it, l, endedOK)
		} else {
			it, ended, err = b.ownLock(ctx, l, endedOK)
		}
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
	return false, fmt.Errorf("the lock changed %d times during the call (waiters queueing into it?); the lease is still held", fairTries)
}

// Extend implements driver.Claimer: gets the lock, check the holder and
// the lease's recorded end, CAS it with the new expiry. A fair lock's
// token and queue (see queue.go) are kept.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	sec := seconds(ttl)
	now := clock.Now()
	lock, err := b.lockItem(l.Key, l.Holder, sec, now)
	if err != nil {
		return driver.Lease{}, err
	}
	_, err = b.swapLock(ctx, l, false, nil, func(it *gomemcache.Item) {
		st := parseState(it.Value)
		it.Value, it.Expiration = lock.Value, lock.Expiration
		latest := now.Add(time.Duration(sec+lockSlack) * time.Second)
		if latest.UnixMilli() <= st.latest.UnixMilli() {
			// Every write of one lease records a later end than the
			// write before it, so that each is a write of its own to
			// the takeovers by sightings (lockState.rev): a renewal on
			// a clock behind the one that granted the lease (or a step
			// of this one) could record the same end. The end recorded
			// is then later than this holder's Deadline (by as much as
			// the granting clock was ahead), which only delays a
			// takeover by the clock rule.
			latest = time.UnixMilli(st.latest.UnixMilli() + 1)
		}
		if !st.fair {
			it.Value = []byte(l.Holder + ";0;" + secField(sec, true) + " " + strconv.FormatInt(latest.UnixMilli(), 10))
			return
		}
		st.sec, st.latest, st.sighted = sec, latest, true
		it.Value = st.encode()
		if exp, err := st.expiration(now); err == nil {
			it.Expiration = exp // else the lease's own (entries past 2038)
		}
	})
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
	return b.release(ctx, l, nil)
}

// release is Release, starting from lock, l's lock item as just read, if
// not nil (see swapLock).
func (b *backend) release(ctx context.Context, l driver.Lease, lock *gomemcache.Item) error {
	ended, err := b.swapLock(ctx, l, true, lock, func(it *gomemcache.Item) { it.Expiration = -1 })
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
	return b.commit(ctx, l, it, nil)
}

// commit is Commit of the value item it. read, if not nil, holds the lock
// and the value item as a multi-get just read them: the first attempt
// uses it instead of reading again.
func (b *backend) commit(ctx context.Context, l driver.Lease, it *gomemcache.Item, read map[string]*gomemcache.Item) error {
	lk := b.item('l', l.Key)
	for range commitTries {
		items := read
		if items != nil {
			read = nil
		} else {
			var err error
			if items, err = b.getMulti(ctx, lk, it.Key); err != nil {
				return err
			}
		}
		if _, err := checkLock(items[lk], l, false); err != nil {
			return err
		}
		err := b.writeOver(ctx, it, items[it.Key])
		switch {
		case err == nil:
			return b.landed(ctx, l, it)
		case errors.Is(err, errRaced):
			continue // written or deleted since the read: read again
		default:
			return err
		}
	}
	return fmt.Errorf("the value was written by others %d times during the commit (unfenced Set calls?)", commitTries)
}

// errRaced is writeOver's refusal: the item changed since it was read.
var errRaced = errors.New("the item changed since it was read")

// writeOver stores it in place of cur, the item as read (nil: missing),
// only if it is still that item: a cas with cur's CAS id, or an add where
// there was none. A refusal (EXISTS, NOT_FOUND, NOT_STORED: written or
// deleted since the read) is errRaced. So a write that reaches the server
// late never replaces an item written after the read.
func (b *backend) writeOver(ctx context.Context, it, cur *gomemcache.Item) error {
	write := b.c.Add
	if cur != nil {
		it.CasID, write = cur.CasID, b.c.CompareAndSwap
	}
	err := do0(ctx, b, func() error { return write(it) })
	switch {
	case errors.Is(err, gomemcache.ErrNotStored), errors.Is(err, gomemcache.ErrCASConflict), errors.Is(err, gomemcache.ErrCacheMiss):
		return errRaced
	default:
		return serverErr(err)
	}
}

// landed judges Commit's acknowledged write of it: before the lease's
// local Deadline it was applied while the lease was certainly live;
// later, it may have landed after the lease ended: it is taken back
// (gets, compare the bytes, CAS to expired; within ctx) unless someone
// replaced it, and the lease is reported lost.
func (b *backend) landed(ctx context.Context, l driver.Lease, it *gomemcache.Item) error {
	if !l.Expired(clock.Now()) {
		return nil
	}
	cur, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(it.Key) })
	if err == nil && bytes.Equal(cur.Value, it.Value) {
		cur.Expiration = -1
		_ = do0(ctx, b, func() error { return b.c.CompareAndSwap(cur) })
	}
	return fmt.Errorf("%w (write acknowledged after the local deadline, withdrawn)", driver.ErrLost)
}

// tombMark starts the holder of a Revoke's tombstone (see entomb). Holder
// ids are hexadecimal digits, so no lease's holder matches a tombstone's.
const tombMark = "~"

// deletedHold is how long memcached keeps the value item Revoke writes in
// place of a deleted value (deletedItem), in seconds.
const deletedHold = 60

// Revoke implements driver.Claimer. memcached has no multi-key step, so
// it ends the lease first and then replaces the value, and blocks the key
// in between, so that nobody claims it or is woken before the value is
// replaced:
//
//  1. one multi-get reads the lock and the value item, with CAS ids;
//  2. the lock, if any, is swapped (cas) for a tombstone, or a tombstone
//     is added where there was none (entomb): the lease is lost from
//     then on (Extend, Commit and Release compare holders and find the
//     tombstone's), TryClaim finds the key held, and pollers still see
//     the holder the tombstone replaced;
//  3. the value item is written over what step 1 read (writeOver, read
//     again on a conflict): value, or, for a nil value, an item Get reads
//     as absent (deletedItem) rather than nothing, so that a write
//     conditional on an earlier read fails even where there was no value;
//  4. the tombstone, if still Revoke's own, is swapped for an expired
//     item (gets, then cas): the key is free, and pollers that saw the
//     lock see it gone;
//  5. the notify counter is bumped, waking pollers that saw no lock.
//
// Six round trips (seven when the notify counter is created), one after
// the other. The fence counter is not touched, so the next lease's token
// is larger. A Commit of the revoked lease that read the lock before step
// 2 writes conditionally on the value it read with it: it lands before
// step 3 (which then fails its cas, reads again and replaces it) or is
// refused on the server, reads again and finds the tombstone (ErrLost).
// The tombstone records an end about 3 × 5 × io_timeout away, after which
// (plus ClockSkew, or its TTL after a claimer first saw it: heldUntil) a
// claim takes it over as it takes over a dead holder's lock (takeLock): a
// Revoke that fails after step 2 (or a revoker that dies) blocks the key
// until then at most, and a Revoke slower than that lets a claim in
// before step 3 (which still replaces the value).
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	it := b.deletedItem(key)
	if val != nil {
		var err error
		if it, err = b.valueItem(key, val, ttl); err != nil {
			return err
		}
	}
	lk := b.item('l', key)
	read, err := b.getMulti(ctx, lk, it.Key)
	if err != nil {
		return err
	}
	tomb, err := b.entomb(ctx, key, read[lk])
	if err != nil {
		return err
	}
	if err := b.replace(ctx, it, read[it.Key]); err != nil {
		// Free the key again (the lease stays ended) rather than block
		// it until the tombstone expires.
		_ = b.unblock(ctx, tomb)
		return err
	}
	if err := b.unblock(ctx, tomb); err != nil {
		return fmt.Errorf("lease ended and value replaced, but the key stays held for up to %s: %w",
			time.Duration(seconds(3*b.slowest))*time.Second+b.skew, err)
	}
	if _, err := b.incr(ctx, b.item('n', key)); err != nil {
		return fmt.Errorf("revoked, but the notify counter was not bumped (a poller that never saw the lock misses it): %w", err)
	}
	return nil
}

// entomb puts a tombstone in place of key's lock item, read as cur (nil:
// missing), with a cas of cur or an add where there was none, and returns
// it. A tombstone is a lock item (lockItem) whose holder is
// "~NONCE:HOLDER": HOLDER is cur's holder (empty without a lock; the one
// it names if cur is another Revoke's tombstone), and NONCE makes it this
// call's own (see unblock). It records an end about 3 × 5 × io_timeout
// away. A lock that changed since it was read (an Extend, a Release, a
// claim) is read again, at most three times.
func (b *backend) entomb(ctx context.Context, key string, cur *gomemcache.Item) (*gomemcache.Item, error) {
	lk := b.item('l', key)
	mark := tombMark + strconv.FormatUint(rand.Uint64(), 16) + ":"
	for range 3 {
		var h string
		if cur != nil {
			h, _ = parseLock(cur.Value)
			h = revokedHolder(h)
		}
		tomb, err := b.lockItem(key, mark+h, seconds(3*b.slowest), time.Now())
		if err != nil {
			return nil, err
		}
		err = b.writeOver(ctx, tomb, cur)
		if !errors.Is(err, errRaced) {
			return tomb, err
		}
		cur, err = do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(lk) })
		if errors.Is(err, gomemcache.ErrCacheMiss) {
			cur, err = nil, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return nil, fmt.Errorf("the lock changed 3 times during the revoke")
}

// revokedHolder is the holder a tombstone's holder h names (see entomb),
// or h itself if it is not a tombstone's.
func revokedHolder(h string) string {
	if rest, ok := strings.CutPrefix(h, tombMark); ok {
		_, revoked, _ := strings.Cut(rest, ":")
		return revoked
	}
	return h
}

// replace writes it over key's value item, read as cur (nil: missing),
// with writeOver, reading it again after a conflict (a Commit that read
// the lock before the tombstone, an unfenced Set), at most commitTries
// times.
func (b *backend) replace(ctx context.Context, it, cur *gomemcache.Item) error {
	for range commitTries {
		err := b.writeOver(ctx, it, cur)
		if !errors.Is(err, errRaced) {
			return err
		}
		cur, err = do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(it.Key) })
		if errors.Is(err, gomemcache.ErrCacheMiss) {
			cur, err = nil, nil
		}
		if err != nil {
			return err
		}
	}
	return fmt.Errorf("the value was written by others %d times during the revoke (unfenced Set calls?)", commitTries)
}

// unblock frees the key of tomb, a tombstone entomb wrote: gets the lock,
// and if it is still tomb (same bytes, nonce included), cas it to an
// already-expired item. A tombstone gone (expired) or replaced (by
// another Revoke, which frees the key itself) is left alone.
func (b *backend) unblock(ctx context.Context, tomb *gomemcache.Item) error {
	cur, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(tomb.Key) })
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil
	}
	if err != nil {
		return err
	}
	if !bytes.Equal(cur.Value, tomb.Value) {
		return nil
	}
	cur.Expiration = -1
	err = do0(ctx, b, func() error { return b.c.CompareAndSwap(cur) })
	if errors.Is(err, gomemcache.ErrCASConflict) || errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil
	}
	return err
}
