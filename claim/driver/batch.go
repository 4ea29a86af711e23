package driver

import (
	"context"
	"sync"
	"time"
)

// Batcher is optional: the operations of a batch of keys (flight's
// GetMany) in as few round trips as the substrate allows, whatever the
// number of keys: a pipeline or a script (Redis), one statement
// (PostgreSQL), one transaction (etcd, Consul), a batch read and
// concurrent conditional writes (DynamoDB), a multi-get (memcached), a
// multi-op or pipelined requests (ZooKeeper). Each method is, key by key,
// exactly the single-key method it batches, with the same atomicity per
// key; nothing is atomic across keys. The client passes distinct keys,
// already checked, never an empty batch, and splits batches larger than
// the driver's own limit (Features.MaxBatch). Without Batcher the client
// runs the single-key methods concurrently (a bounded number at a time).
type Batcher interface {
	// GetMany is Get of each key: values[i] is keys[i]'s value, nil if
	// it is absent or expired. A failure of the whole call returns an
	// error and no values.
	GetMany(ctx context.Context, keys []string) (values [][]byte, err error)

	// TryClaimMany is TryClaimRead of each key (keys[i] for holders[i],
	// every lease for ttl): out[i] is keys[i]'s lease and value, or its
	// error (a *HeldError if another lease is live). A failure of the
	// whole call returns an error; then no claim may be held (a claim
	// that did land expires by its TTL, as with an abandoned TryClaim).
	TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) (out []Claimed, err error)

	// CommitReleaseMany is CommitRelease of each commit: errs[i] is nil
	// if commits[i]'s value was stored and its lease released (waking the
	// key's subscribers), ErrLost if its lease was not current (nothing
	// changed for that key), or another error. A failure of the whole
	// call returns an error and no errs.
	CommitReleaseMany(ctx context.Context, commits []Commit) (errs []error, err error)

	// SubscribeMany is Subscribe of each key (keys[i] calls wakes[i]),
	// returning once every subscription is live. On an error the client
	// calls Unsubscribe for each key (a key that was not subscribed is
	// ignored).
	SubscribeMany(ctx context.Context, keys []string, wakes []func()) error
}

// Claimed is one key's outcome of Batcher.TryClaimMany.
type Claimed struct {
	// Lease is the lease granted (Deadline unset: the client sets it).
	Lease Lease
	// Value is the key's value as of the claim, if Found.
	Value []byte
	Found bool
	// Err is the key's error: nil if the lease was granted, a *HeldError
	// if another lease is live, or another error.
	Err error
}

// ReleaseBatcher is optional, for a Batcher whose substrate can release
// many leases in one request (one transaction, one statement, one
// pipeline). ReleaseMany is Release of each lease: errs[i] is nil if
// leases[i] was current and is released (waking the key's subscribers),
// ErrLost if it was not (nothing changed for that key: a stale lease
// never ends a newer holder's), or another error. A failure of the whole
// call returns an error and no errs. The leases are of distinct keys.
// The client releases this way the leases a batch's claims took and
// will not use (a claim that found the value committed meanwhile:
// claim.Client.GetOrAcquireMany), one key at a time otherwise.
type ReleaseBatcher interface {
	ReleaseMany(ctx context.Context, leases []Lease) (errs []error, err error)
}

// Commit is one fenced write of Batcher.CommitReleaseMany.
type Commit struct {
	Lease Lease
	Value []byte
	TTL   time.Duration // 0: no expiry
}

// Each runs fn(i) for every i in [0, n), each on a goroutine of its own,
// at most limit at a time (limit <= 0: all at once), and returns when all
// have returned; n == 1 runs on the caller's goroutine. It is how a
// Batcher without a batch primitive sends a batch's requests
// concurrently, and how the client runs single-key calls for a driver
// without a Batcher.
func Each(n, limit int, fn func(i int)) {
	if n == 1 {
		fn(0)
		return
	}
	if limit <= 0 || limit > n {
		limit = n
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}
