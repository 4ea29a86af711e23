package memcache

import (
	"context"
	"errors"
	"fmt"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
)

// The batches. memcached's text protocol has one multi-key command, the
// multi-get, which gomemcache sends as one gets per server, to every
// server at once: every read of a batch is one of those, one round trip
// whatever the number of keys. Writes (add, cas, incr) are one key each,
// and gomemcache neither pipelines nor multiplexes a connection: a batch
// sends them concurrently, each on a pooled connection, at most par at
// once for all of the client's batches together (max_idle_conns, 16 by
// default), so that batches never dial more connections than the pool
// keeps (a herd of concurrent batches otherwise runs memcached out of
// connections). A batch of n keys therefore costs its
// writes' round trips ⌈n/par⌉ times in latency. memcached takes a
// multi-get of any length (5000 keys of 250 bytes checked), so
// Features.MaxBatch is 0: the Client does not split batches. Nothing is
// atomic across keys, nor, memcached having no multi-key step, within
// one key beyond what the single-key method guarantees.

// GetMany implements driver.Batcher: one multi-get of the value items
// (one round trip). A value past its TTL (by this client's clock) is nil,
// as Get finds it absent; a malformed item fails the call, as it fails
// Get.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	vks := make([]string, len(keys))
	for i, k := range keys {
		vks[i] = b.item('v', k)
	}
	items, err := b.getMulti(ctx, vks...)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([][]byte, len(keys))
	for i, vk := range vks {
		if it := items[vk]; it != nil {
			v, found, err := decodeValue(it.Value, now)
			if err != nil {
				return nil, fmt.Errorf("key %q: %w", keys[i], err)
			}
			if found {
				out[i] = v
			}
		}
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: each key's TryClaim (add of the
// lock, then incr of the fence counter; a held key's lock read for its
// remaining lifetime instead), concurrently, then one multi-get of the
// value items of the keys claimed. That is TryClaimRead as the Client
// makes it on this driver, TryClaim then Get, so a value committed
// between a key's claim and the read is seen too. Latency: three round
// trips (four when a fence counter is created) for up to max_idle_conns
// keys. A ttl whose end is past memcached's exptime range fails the call
// before any I/O; a failed multi-get fails it after releasing the leases
// granted (or they expire by their TTL if that fails too).
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if _, err := b.lockItem(keys[0], holders[0], seconds(ttl), time.Now()); err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	b.each(len(keys), func(i int) {
		out[i].Lease, out[i].Err = b.TryClaim(ctx, keys[i], holders[i], ttl)
	})
	var vks []string
	var claimed []int
	for i, c := range out {
		if c.Err == nil {
			vks = append(vks, b.item('v', keys[i]))
			claimed = append(claimed, i)
		}
	}
	if len(claimed) == 0 {
		return out, nil
	}
	items, err := b.getMulti(ctx, vks...)
	now := time.Now()
	for j := 0; err == nil && j < len(claimed); j++ {
		c := &out[claimed[j]]
		if it := items[vks[j]]; it != nil {
			c.Value, c.Found, err = decodeValue(it.Value, now)
			if err != nil {
				err = fmt.Errorf("key %q: %w", keys[claimed[j]], err)
			}
		}
	}
	if err != nil {
		b.each(len(claimed), func(j int) { _ = b.Release(ctx, out[claimed[j]].Lease) })
		return nil, err
	}
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: each commit's Commit then
// Release (HandOff for a lease of Client.AcquireFair, Lease.Fair: a gets,
// an incr and a cas, the grant delivered by the waiters' polls), as the
// Client makes CommitRelease on this driver (Release
// finding the lease lost after the value landed is not an error), with
// the reads shared: one multi-get of every lock and value item, then,
// concurrently, each key's conditional write of its value (commit, which
// reads again after a conflict) and the cas of the lock read to an expired
// item (release, which reads again if the lock changed since, e.g. by an
// Extend), then the incr of its notify counter. Latency: four round trips
// (five when a notify counter is created) for up to max_idle_conns keys,
// one less than Commit then Release. A value whose TTL ends past
// memcached's exptime range is its key's error.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs := make([]error, len(commits))
	its := make([]*gomemcache.Item, len(commits))
	ks := make([]string, 0, 2*len(commits))
	for i, c := range commits {
		it, err := b.valueItem(c.Lease.Key, c.Value, c.TTL)
		if err != nil {
			errs[i] = err
			continue
		}
		its[i] = it
		ks = append(ks, b.item('l', c.Lease.Key), it.Key)
	}
	if len(ks) == 0 {
		return errs, nil
	}
	read, err := b.getMulti(ctx, ks...)
	if err != nil {
		return nil, err
	}
	b.each(len(commits), func(i int) {
		if its[i] == nil {
			return
		}
		l := commits[i].Lease
		lk := b.item('l', l.Key)
		// This key's own view of the read: commit may retry with fresh
		// reads, and release changes the lock item it is given.
		mine := map[string]*gomemcache.Item{lk: read[lk], its[i].Key: read[its[i].Key]}
		if errs[i] = b.commit(ctx, l, its[i], mine); errs[i] != nil {
			return
		}
		release := func() error { return b.release(ctx, l, mine[lk]) }
		if l.Fair {
			// A fair lease (Client.AcquireFair) is handed over, its queue
			// kept; the grant reaches its waiter by the polls.
			release = func() error { _, err := b.HandOff(ctx, l); return err }
		}
		if err := release(); err != nil && !errors.Is(err, driver.ErrLost) {
			errs[i] = fmt.Errorf("value committed, release failed: %w", err)
		}
	})
	return errs, nil
}

// SubscribeMany implements driver.Batcher: one multi-get reads every
// key's lock and notify counter, and each key's poll loop starts from
// that state (Poller.Subscribe, its first read answered from it without
// a request). Every state is read before SubscribeMany returns, so a
// release or notification after that changes what the loop holds, and
// its next poll wakes the key's waiters, as with Subscribe. A failed read
// subscribes nothing.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	sts, err := b.readStates(ctx, keys, nil)
	if err != nil {
		return err
	}
	pre := make(map[string]driver.PollState, len(keys))
	for i, k := range keys {
		pre[k] = sts[i]
	}
	sctx := context.WithValue(ctx, preRead{}, pre)
	for i, k := range keys {
		if err := b.Poller.Subscribe(sctx, k, wakes[i]); err != nil {
			return err
		}
	}
	return nil
}

// each runs fn(i) for every i in [0, n) concurrently, each holding one of
// the client's b.par write tokens while it runs, and waits for them.
func (b *backend) each(n int, fn func(i int)) {
	driver.Each(n, b.par, func(i int) {
		b.writes <- struct{}{}
		defer func() { <-b.writes }()
		fn(i)
	})
}
