package claim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Claimed is one key's outcome of TryClaimMany: a lease (Err nil), with
// the key's value as of the claim if Found, or the key's error (ErrHeld
// when another holder has it, with its remaining lease in the
// *HeldError when the backend can tell).
type Claimed = driver.Claimed

// Commit is one fenced write of CommitReleaseMany.
type Commit = driver.Commit

// batchConcurrency bounds the single-key calls a batch runs at once on a
// driver without driver.Batcher.
const batchConcurrency = 16

// checkKeys refuses a batch with an invalid or repeated key, a closed
// Client or a done ctx, before any I/O.
func (c *Client) checkKeys(ctx context.Context, op string, keys []string) error {
	seen := make(map[string]struct{}, len(keys))
	for _, k := range keys {
		if err := c.check(ctx, op, k); err != nil {
			return err
		}
		if _, dup := seen[k]; dup {
			return opError(op, k, fmt.Errorf("%w: %w", ErrInvalidKey, errDuplicateKey))
		}
		seen[k] = struct{}{}
	}
	if len(keys) == 0 && c.closed.Load() {
		return opError(op, "", ErrClosed)
	}
	return nil
}

// chunks calls fn on consecutive slices [lo, hi) of n items, each at most
// the driver's Features.MaxBatch long, a few at a time concurrently, and
// returns the first error (by position) once all have returned.
func (c *Client) chunks(n int, fn func(lo, hi int) error) error {
	size := n
	if m := c.feat.MaxBatch; m > 0 && m < size {
		size = m
	}
	if size == 0 {
		return nil
	}
	count := (n + size - 1) / size
	errs := make([]error, count)
	driver.Each(count, chunkConcurrency, func(i int) {
		lo := i * size
		errs[i] = fn(lo, min(lo+size, n))
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// chunkConcurrency bounds the parts of a batch larger than
// Features.MaxBatch that are sent at once.
const chunkConcurrency = 4

// batchOpKey names a batch in errors: its first key, and how many more.
func batchOpKey(keys []string) string {
	if len(keys) <= 1 {
		if len(keys) == 1 {
			return keys[0]
		}
		return ""
	}
	return fmt.Sprintf("%s (+%d keys)", keys[0], len(keys)-1)
}

// GetMany returns the values stored under keys: values[i] is keys[i]'s,
// nil if it is absent or expired. On a backend with driver.Batcher it
// costs one round trip per Features.MaxBatch keys; otherwise the reads
// run concurrently. Keys must be distinct.
func (c *Client) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := c.checkKeys(ctx, "get-many", keys); err != nil {
		return nil, err
	}
	return c.getMany(ctx, keys)
}

func (c *Client) getMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if c.bat == nil {
		errs := make([]error, len(keys))
		driver.Each(len(keys), batchConcurrency, func(i int) {
			v, err := c.get(ctx, keys[i])
			if err != nil && !errors.Is(err, ErrNotFound) {
				errs[i] = err
			}
			out[i] = v
		})
		if err := errors.Join(errs...); err != nil {
			return nil, err
		}
		return out, nil
	}
	err := c.chunks(len(keys), func(lo, hi int) error {
		cl := c.begin(ctx, "get-many")
		vals, err := c.bat.GetMany(cl.ctx, keys[lo:hi])
		if err = c.end(ctx, cl, err); err != nil {
			return opError("get-many", batchOpKey(keys[lo:hi]), err)
		}
		if len(vals) != hi-lo {
			return opError("get-many", batchOpKey(keys[lo:hi]), fmt.Errorf("driver returned %d values for %d keys", len(vals), hi-lo))
		}
		copy(out[lo:hi], vals)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// TryClaimMany is TryClaimRead of each key, every lease for ttl: out[i]
// is keys[i]'s lease and value (Found), or its error (ErrHeld if another
// holder has it). A held lease must be released or committed like any
// other. On a backend with driver.Batcher it costs one round trip per
// Features.MaxBatch keys; otherwise the claims run concurrently. Keys must
// be distinct. An error of the whole call (the backend unreachable)
// leaves no lease held.
func (c *Client) TryClaimMany(ctx context.Context, keys []string, ttl time.Duration) ([]Claimed, error) {
	if err := c.checkKeys(ctx, "claim-many", keys); err != nil {
		return nil, err
	}
	if len(keys) > 0 {
		if err := c.checkTTL("claim-many", keys[0], ttl); err != nil {
			return nil, err
		}
	}
	return c.tryClaimMany(ctx, keys, ttl)
}

func (c *Client) tryClaimMany(ctx context.Context, keys []string, ttl time.Duration) ([]Claimed, error) {
	out := make([]Claimed, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	if c.bat == nil {
		driver.Each(len(keys), batchConcurrency, func(i int) {
			o := &out[i]
			o.Lease, o.Value, o.Found, o.Err = c.tryClaimRead(ctx, keys[i], ttl)
		})
		return out, nil
	}
	err := c.chunks(len(keys), func(lo, hi int) error {
		holders := make([]string, hi-lo)
		for i := range holders {
			holders[i] = newHolder()
		}
		start := clock.Now()
		cl := c.begin(ctx, "claim-many")
		res, err := c.bat.TryClaimMany(cl.ctx, keys[lo:hi], holders, ttl)
		if err = c.end(ctx, cl, err); err != nil {
			return opError("claim-many", batchOpKey(keys[lo:hi]), err)
		}
		if len(res) != hi-lo {
			return opError("claim-many", batchOpKey(keys[lo:hi]), fmt.Errorf("driver returned %d results for %d keys", len(res), hi-lo))
		}
		for j, r := range res {
			k := keys[lo+j]
			if r.Err != nil {
				r.Lease, r.Value, r.Found = Lease{}, nil, false
				r.Err = opError("claim", k, c.classify(ctx, r.Err))
			} else {
				r.Lease = stamp(r.Lease, k, holders[j], start)
				if !r.Found {
					r.Value = nil
				}
			}
			out[lo+j] = r
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// CommitReleaseMany is CommitRelease of each commit: errs[i] is nil if
// commits[i]'s value was stored and its lease released (waking the key's
// waiters), or its error (ErrLost: the lease was not current and nothing
// changed for that key; ErrTooLarge, found before any I/O). On a backend
// with driver.Batcher it costs one round trip per Features.MaxBatch
// commits; otherwise the commits run concurrently, each CommitRelease.
// An error of the whole call (the backend unreachable) says nothing of
// which commits landed: release the leases.
func (c *Client) CommitReleaseMany(ctx context.Context, commits []Commit) ([]error, error) {
	keys := make([]string, len(commits))
	for i, cm := range commits {
		keys[i] = cm.Lease.Key
	}
	if err := c.checkKeys(ctx, "commit-release-many", keys); err != nil {
		return nil, err
	}
	return c.commitReleaseMany(ctx, commits)
}

func (c *Client) commitReleaseMany(ctx context.Context, commits []Commit) ([]error, error) {
	const op = "commit-release"
	errs := make([]error, len(commits))
	if c.bat == nil {
		driver.Each(len(commits), batchConcurrency, func(i int) {
			cm := commits[i]
			errs[i] = c.commitRelease(ctx, cm.Lease, cm.Value, cm.TTL)
		})
		return errs, nil
	}
	// What the client refuses without I/O is answered here; the rest goes
	// to the driver.
	now := clock.Now()
	var send []Commit
	var idx, fair []int
	for i, cm := range commits {
		if cm.Lease.Fair && c.q != nil {
			fair = append(fair, i) // handed over, not released: below
			continue
		}
		if err := c.checkValue(op, cm.Lease.Key, cm.Value, cm.TTL); err != nil {
			errs[i] = err
			continue
		}
		if err := checkLive(op, cm.Lease, now); err != nil {
			errs[i] = err
			continue
		}
		send = append(send, cm)
		idx = append(idx, i)
	}
	// A fair lease (AcquireFair) is committed, then handed over to the
	// next waiter in its queue, one by one: a batch release would drop
	// the queue.
	driver.Each(len(fair), batchConcurrency, func(j int) {
		cm := commits[fair[j]]
		errs[fair[j]] = c.commitRelease(ctx, cm.Lease, cm.Value, cm.TTL)
	})
	err := c.chunks(len(send), func(lo, hi int) error {
		cl := c.begin(ctx, "commit-release-many")
		res, err := c.bat.CommitReleaseMany(cl.ctx, send[lo:hi])
		if err = c.end(ctx, cl, err); err != nil {
			return opError("commit-release-many", send[lo].Lease.Key, err)
		}
		if len(res) != hi-lo {
			return opError("commit-release-many", send[lo].Lease.Key, fmt.Errorf("driver returned %d results for %d commits", len(res), hi-lo))
		}
		for j, e := range res {
			k := send[lo+j].Lease.Key
			if e != nil {
				errs[idx[lo+j]] = opError(op, k, c.classify(ctx, e))
				continue
			}
			c.wakeLocal(k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return errs, nil
}

// SubscribeMany is Subscribe of each key: subs[i] is keys[i]'s
// Subscription (close each). The keys this Client has no substrate
// subscription for yet are subscribed together: one round trip on a
// backend with driver.Batcher. Keys must be distinct.
func (c *Client) SubscribeMany(ctx context.Context, keys []string) ([]*Subscription, error) {
	if err := c.checkKeys(ctx, "subscribe-many", keys); err != nil {
		return nil, err
	}
	subs := make([]*Subscription, len(keys))
	ms := make([]*member, len(keys))
	for i, k := range keys {
		subs[i] = newSubscription(k)
		ms[i] = &subs[i].m
	}
	if err := c.joinKeys(ctx, ms); err != nil {
		return nil, err
	}
	return subs, nil
}

// joinKeys joins members of the key fanout, the new keys subscribed in
// one batch where the driver can. It records the call as one
// "subscribe-many" (or "subscribe") operation.
func (c *Client) joinKeys(ctx context.Context, ms []*member) error {
	op := "subscribe-many"
	if len(ms) == 1 {
		op = "subscribe"
	}
	cl := c.begin(ctx, op)
	err := c.end(ctx, cl, c.keys.joinMany(cl.ctx, ms))
	if err != nil {
		names := make([]string, len(ms))
		for i, m := range ms {
			names[i] = m.name
		}
		return opError(op, batchOpKey(names), err)
	}
	return nil
}
