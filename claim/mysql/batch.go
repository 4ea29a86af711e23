package mysql

import (
	"context"
	"strings"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// MaxBatch is Features.MaxBatch: the most keys one GetMany statement
// names (the Client splits larger batches).
const MaxBatch = 1000

// eachLimit bounds the statements TryClaimMany, CommitReleaseMany and
// SubscribeMany run at once (each key is its own statement: its own row
// lock, its own transaction).
const eachLimit = 16

// GetMany implements driver.Batcher: one SELECT of the keys' rows (k IN
// (…)), expiry judged by the server's clock as in Get.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	args := make([]any, len(keys))
	index := make(map[string]int, len(keys))
	for i, k := range keys {
		enc := b.keys.Encode(k)
		args[i] = enc
		index[enc] = i
	}
	marks := strings.TrimSuffix(strings.Repeat("?,", len(keys)), ",")
	rows, err := b.db.QueryContext(ctx, strings.Replace(b.q.getMany, "%s", marks, 1), args...)
	if err != nil {
		return nil, b.classify(err)
	}
	defer rows.Close()
	out := make([][]byte, len(keys))
	for rows.Next() {
		var (
			k string
			v []byte
		)
		if err := rows.Scan(&k, &v); err != nil {
			return nil, b.classify(err)
		}
		if i, ok := index[k]; ok {
			out[i] = nonNil(v)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, b.classify(err)
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: TryClaimRead of each key (one
// statement each, eachLimit at a time): each key's claim is its own row's
// atomic step.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	out := make([]driver.Claimed, len(keys))
	driver.Each(len(keys), eachLimit, func(i int) {
		l, v, found, err := b.TryClaimRead(ctx, keys[i], holders[i], ttl)
		out[i] = driver.Claimed{Lease: l, Value: v, Found: found, Err: err}
	})
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: CommitRelease of each
// commit (one statement each, eachLimit at a time).
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	errs := make([]error, len(commits))
	driver.Each(len(commits), eachLimit, func(i int) {
		c := commits[i]
		errs[i] = b.CommitRelease(ctx, c.Lease, c.Value, c.TTL)
	})
	return errs, nil
}

// SubscribeMany implements driver.Batcher: one SELECT reads every key's
// claim row (pollStates, up to pollBatchKeys keys a statement), and each
// key's poll loop starts from that state (its first read answered from
// it without a statement). Every state is read before SubscribeMany
// returns, so a release or notification after that moves the counter
// from what the loop holds, and its next poll wakes the key's waiters, as
// with Subscribe. A failed read subscribes nothing.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	pre := make(map[string]driver.PollState, len(keys))
	for lo := 0; lo < len(keys); lo += pollBatchKeys {
		part := keys[lo:min(lo+pollBatchKeys, len(keys))]
		sts, err := b.pollStates(ctx, part, nil)
		if err != nil {
			return err
		}
		for i, k := range part {
			pre[k] = sts[i]
		}
	}
	sctx := context.WithValue(ctx, preRead{}, pre)
	for i, k := range keys {
		if err := b.Subscribe(sctx, k, wakes[i]); err != nil {
			return err
		}
	}
	return nil
}

// pollBatchKeys is how many keys one batched poll reads (pollMany): a
// process waiting on hundreds of keys polls them in a few statements
// (driver.NewBatchPoller).
const pollBatchKeys = 100
