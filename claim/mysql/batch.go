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

// SubscribeMany implements driver.Batcher: Subscribe of each key, its
// first reads eachLimit at a time.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	errs := make([]error, len(keys))
	driver.Each(len(keys), eachLimit, func(i int) {
		errs[i] = b.Subscribe(ctx, keys[i], wakes[i])
	})
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
