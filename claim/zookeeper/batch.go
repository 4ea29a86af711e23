package zookeeper

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// A batch is its keys' single-key calls, made concurrently on the one
// connection: pipelined requests. go-zk has no batched read (no multiRead)
// and a multi-op is all-or-nothing (one held key or stale lease would fail
// every key's claim or commit), so each key keeps the requests, and the
// atomicity, of its single-key method. Concurrent calls do not wait for
// each other's replies: go-zk queues each request (Conn.sendChan) for its
// one sender goroutine, which writes it to the socket as soon as it is
// dequeued, and its one receiver goroutine matches each reply to its
// request by xid. A batch therefore takes the latency of its slowest key's
// requests, not their sum: one round trip for GetMany, SubscribeMany and,
// in the usual case, TryClaimMany (free keys without values) and
// CommitReleaseMany (current leases, no value nodes yet), whatever the
// number of keys (TestBatchPipelined checks that every request of such a
// batch is sent before any reply arrives). The server still handles one
// request per key (one transaction per write).

// inFlight is how many keys of one batch have requests in flight at once:
// ZooKeeper's default globalOutstandingLimit, past which the server stops
// reading from its connections anyway. It also bounds the goroutines a
// batch starts. A larger batch is served as a sliding window, not split
// into round trips (so Features.MaxBatch is not set).
const inFlight = 1000

// firstErr returns the first non-nil error of errs.
func firstErr(errs []error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// GetMany implements driver.Batcher: Get of each key, pipelined. One round
// trip, and one more only to delete the values found expired (as Get
// does). Any key's error fails the whole call.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	vals := make([][]byte, len(keys))
	errs := make([]error, len(keys))
	// One sync for every read after it (see Get).
	if err := b.do(ctx, func() error { _, err := b.conn.Sync(b.root); return err }); err != nil {
		return nil, err
	}
	driver.Each(len(keys), inFlight, func(i int) { vals[i], _, errs[i] = b.getValue(ctx, keys[i], false) })
	if err := firstErr(errs); err != nil {
		return nil, err
	}
	return vals, nil
}

// TryClaimMany implements driver.Batcher: TryClaimRead of each key,
// pipelined, each its own multi-op (see tryClaim: one round trip for a
// free key without a value, three for a free key with one, more for a
// held key). Only a check before any I/O fails the whole call; a key's
// failure, a done ctx included, is that key's Err, and the claims that
// landed are returned held.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	driver.Each(len(keys), inFlight, func(i int) {
		c := &out[i]
		c.Lease, c.Value, c.Found, c.Err = b.tryClaim(ctx, keys[i], holders[i], ttl, true)
	})
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: CommitRelease of each
// commit, pipelined, each its own multi-op (one round trip for a current
// lease whose key has no value node, two when it has one; a read more for
// a lease that may have run out). Only a check before any I/O fails the
// whole call; a commit not answered when ctx is done gets ctx's error (it
// may still land, as an abandoned CommitRelease may).
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	errs := make([]error, len(commits))
	driver.Each(len(commits), inFlight, func(i int) {
		c := commits[i]
		errs[i] = b.CommitRelease(ctx, c.Lease, c.Value, c.TTL)
	})
	return errs, nil
}

// SubscribeMany implements driver.Batcher: Subscribe of each key, the
// existence watches set by pipelined requests, one round trip. It returns
// once every watch is set, or the first key's error (the Client then
// unsubscribes every key).
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := b.setup(ctx); err != nil {
		return err
	}
	errs := make([]error, len(keys))
	driver.Each(len(keys), inFlight, func(i int) { errs[i] = b.Subscribe(ctx, keys[i], wakes[i]) })
	return firstErr(errs)
}

// releaseManyOps bounds the keys of one ReleaseMany's multi-op (two
// deletes each): well within jute.maxbuffer (1 MiB by default) for keys of
// any length the driver accepts.
const releaseManyOps = 200

// ReleaseMany implements driver.ReleaseBatcher: the leases a batch's
// claims have just taken, released in one multi-op of every lease's
// Release deletes (its owner node, then its lock node): one transaction
// instead of one per key. A multi-op is all or nothing, so it is tried
// only while every lease is surely live by its grant (no lease that may
// have lapsed, which Release judges with reads first), and if it fails
// because a lease was not current (a node gone), or the batch is larger
// than releaseManyOps keys, every lease is released on its own, as
// Release: each key's answer is then Release's.
func (b *backend) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	now := time.Now()
	together := len(leases) <= releaseManyOps
	var ops []any
	for _, l := range leases {
		granted, err := strconv.ParseInt(l.Handle, 10, 64)
		if !together || !validHolder(l.Holder) || l.Expired(now) || err != nil || now.UnixMilli() >= granted+ceilMS(l.TTL) {
			together = false
			break
		}
		ops = append(ops, b.releaseOps(l.Key, l.Holder)...)
	}
	if together {
		_, _, err := b.multi(ctx, ops...)
		if err == nil {
			return make([]error, len(leases)), nil
		}
		if !errors.Is(err, zk.ErrNoNode) {
			return nil, err
		}
	}
	errs := make([]error, len(leases))
	driver.Each(len(leases), inFlight, func(i int) { errs[i] = b.Release(ctx, leases[i]) })
	return errs, nil
}
