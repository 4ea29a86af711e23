package postgres

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim/driver"
)

// MaxBatch is Features.MaxBatch: the most keys one batch statement names
// (the Client splits larger batches). PostgreSQL takes any number of
// array elements up to its 1 GiB limit on a message and on an array; with
// keys of up to 256 encoded bytes this keeps every batch statement's
// message far below it (about 20 MiB of keys and holders), and bounds the
// claim rows one statement keeps locked until it commits.
const MaxBatch = 1 << 16

// maxChunkBytes is the default for backend.chunkBytes: CommitReleaseMany
// sends values of this many bytes at most (or a single larger value) in
// one statement, so a statement's message and its bytea array stay far
// below PostgreSQL's 1 GiB limits even when every value is as large as
// MaxValueLimit allows.
const maxChunkBytes = 64 << 20

// GetMany implements driver.Batcher: one SELECT of the keys' rows (key =
// ANY of an array), expiry judged by the server's clock as in Get.
func (b *backend) GetMany(ctx context.Context, keys []string) (_ [][]byte, err error) {
	defer func() { err = b.classify(err) }()
	if err := b.ensure(ctx); err != nil {
		return nil, err
	}
	encs := b.encodeAll(keys)
	got, err := b.readMany(ctx, encs)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(keys))
	for i, enc := range encs {
		if v, ok := got[enc]; ok {
			out[i] = nonNil(v)
		}
	}
	return out, nil
}

// readMany returns the unexpired values of the encoded keys encs that have
// one: one statement.
func (b *backend) readMany(ctx context.Context, encs []string) (map[string][]byte, error) {
	rows, err := b.pool.Query(ctx, b.q.getMany, encs)
	if err != nil {
		return nil, err
	}
	got := make(map[string][]byte, len(encs))
	var (
		k string
		v []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error {
		got[k] = v
		return nil
	})
	if err != nil {
		return nil, err
	}
	return got, nil
}

// TryClaimMany implements driver.Batcher: one statement (claimMany in
// schema.go) that is, key by key, tryClaim's claimRead: an INSERT … ON
// CONFLICT of every key, with each claimed key's value read in the same
// statement, and each held key's remaining lifetime. As with
// TryClaimRead, a key whose claim waited for a transaction that released
// it may have had a value committed that the statement's snapshot misses:
// those keys' values are read again, all in a second statement (a second
// round trip, in that race only). Each key is claimed atomically on its
// own; nothing is atomic across keys.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) (_ []driver.Claimed, err error) {
	defer func() { err = b.classify(err) }()
	if err := b.ensure(ctx); err != nil {
		return nil, err
	}
	encs := b.encodeAll(keys)
	ttl = leaseTTL(ttl)
	rows, err := b.pool.Query(ctx, b.q.claimMany, encs, holders, micros(ttl))
	if err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	seen := make([]bool, len(keys))
	var (
		i                      int64
		got, found, snapshotOK bool
		token, remain          int64
		val                    []byte
		reread                 []int // claimed keys whose value the snapshot may miss
	)
	_, err = pgx.ForEachRow(rows, []any{&i, &got, &token, &remain, &val, &found, &snapshotOK}, func() error {
		j := int(i) - 1 // WITH ORDINALITY counts from 1
		if j < 0 || j >= len(keys) || seen[j] {
			return fmt.Errorf("claim-many: unexpected row %d", i)
		}
		seen[j] = true
		c := &out[j]
		if !got {
			c.Err = &driver.HeldError{Remaining: max(0, time.Duration(remain)*time.Microsecond)}
			return nil
		}
		c.Lease = driver.Lease{Key: keys[j], Holder: holders[j], Token: uint64(token), TTL: ttl}
		if !snapshotOK {
			reread = append(reread, j)
			return nil
		}
		if found {
			c.Value, c.Found = nonNil(val), true
		}
		return nil
	})
	if err == nil {
		for j, ok := range seen {
			if !ok {
				err = fmt.Errorf("claim-many: no row for key %d", j)
				break
			}
		}
	}
	if err != nil {
		// Claims the statement granted, if it committed, expire by
		// their TTL, as after an abandoned TryClaim.
		return nil, err
	}
	if len(reread) > 0 {
		b.rereadClaimed(ctx, out, encs, reread)
	}
	return out, nil
}

// rereadClaimed reads, as of now, the values of the keys out[j] (j in
// idx) were just granted, as tryClaim does when its snapshot was too early.
// If the read fails, those keys get its error and their leases are given
// back (best effort: a lease not given back expires).
func (b *backend) rereadClaimed(ctx context.Context, out []driver.Claimed, encs []string, idx []int) {
	want := make([]string, len(idx))
	for n, j := range idx {
		want[n] = encs[j]
	}
	got, err := b.readMany(ctx, want)
	for _, j := range idx {
		c := &out[j]
		if err != nil {
			_ = b.Release(ctx, c.Lease)
			*c = driver.Claimed{Err: fmt.Errorf("read after claim: %w", b.classify(err))}
			continue
		}
		if v, ok := got[encs[j]]; ok {
			c.Value, c.Found = nonNil(v), true
		}
	}
}

// CommitReleaseMany implements driver.Batcher: commitReleaseMany in
// schema.go, which is, commit by commit, CommitRelease's statement:
// release only a current lease, write the value only then, one NOTIFY per
// released key on commit (asynchronous with AsyncRelease, as
// CommitRelease). Values are sent chunkBytes at a time (one statement
// each); the statements go out together (one pipeline, one round trip)
// and run in one implicit transaction. Each commit is atomic on its own
// (nothing is atomic across keys, even if the transaction spans them).
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) (_ []error, err error) {
	defer func() { err = b.classify(err) }()
	if err := b.ensure(ctx); err != nil {
		return nil, err
	}
	encs := make([]string, len(commits))
	index := make(map[string]int, len(commits))
	for i, c := range commits {
		encs[i] = b.keys.Encode(c.Lease.Key)
		index[encs[i]] = i
	}
	// The chunks go in key order: each statement locks its rows in key
	// order, and so, chunk after chunk in the one transaction, does the
	// batch, as every other batch does (doc.go: concurrent batches cannot
	// deadlock). In the caller's order, a batch whose values fill several
	// chunks deadlocked with a TryClaimMany of the same keys (found by
	// review).
	order := make([]int, len(commits))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(x, y int) int { return strings.Compare(encs[x], encs[y]) })
	released := make([]bool, len(commits))
	var batch pgx.Batch
	for lo := 0; lo < len(order); {
		hi, size := lo, 0
		for hi < len(order) && (hi == lo || size+len(commits[order[hi]].Value) <= b.chunkBytes) {
			size += len(commits[order[hi]].Value)
			hi++
		}
		n := hi - lo
		var (
			keys    = make([]string, n)
			tokens  = make([]int64, n)
			holders = make([]string, n)
			vals    = make([][]byte, n)
			ttls    = make([]int64, n)
		)
		for j, i := range order[lo:hi] {
			c := commits[i]
			keys[j], tokens[j], holders[j], vals[j], ttls[j] = encs[i], int64(c.Lease.Token), c.Lease.Holder, nonNil(c.Value), micros(c.TTL)
		}
		batch.Queue(b.q.commitReleaseMany, keys, tokens, holders, vals, ttls, b.channel).Query(func(rows pgx.Rows) error {
			var k string
			_, err := pgx.ForEachRow(rows, []any{&k, nil}, func() error {
				if i, ok := index[k]; ok {
					released[i] = true
				}
				return nil
			})
			return err
		})
		lo = hi
	}
	if err := b.pool.SendBatch(ctx, &batch).Close(); err != nil {
		return nil, err
	}
	b.maybeSweep()
	errs := make([]error, len(commits))
	for i, ok := range released {
		if !ok {
			errs[i] = driver.ErrLost
		}
	}
	return errs, nil
}

// ReleaseMany implements driver.ReleaseBatcher: releaseMany in
// schema.go, which is, lease by lease, Release's statement (release only
// a current lease, one NOTIFY per released key on commit), in one
// statement: one round trip and one commit for the batch.
func (b *backend) ReleaseMany(ctx context.Context, leases []driver.Lease) (_ []error, err error) {
	defer func() { err = b.classify(err) }()
	if err := b.ensure(ctx); err != nil {
		return nil, err
	}
	encs := make([]string, len(leases))
	tokens := make([]int64, len(leases))
	holders := make([]string, len(leases))
	index := make(map[string]int, len(leases))
	for i, l := range leases {
		encs[i], tokens[i], holders[i] = b.keys.Encode(l.Key), int64(l.Token), l.Holder
		index[encs[i]] = i
	}
	rows, err := b.pool.Query(ctx, b.q.releaseMany, encs, tokens, holders, b.channel)
	if err != nil {
		return nil, err
	}
	released := make([]bool, len(leases))
	var k string
	if _, err := pgx.ForEachRow(rows, []any{&k, nil}, func() error {
		if i, ok := index[k]; ok {
			released[i] = true
		}
		return nil
	}); err != nil {
		return nil, err
	}
	errs := make([]error, len(leases))
	for i, ok := range released {
		if !ok {
			errs[i] = driver.ErrLost
		}
	}
	return errs, nil
}

// SubscribeMany implements driver.Batcher. Subscriptions are local, on
// the driver's one LISTEN connection (one channel for every key), so the
// keys are added at once and, like Subscribe, it returns once that
// connection is live: no round trip when it already is.
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	fs := make([]func([]byte), len(wakes))
	for i, wake := range wakes {
		fs[i] = func([]byte) { wake() }
	}
	return b.classify(join(ctx, b, b.l.keys, b.encodeAll(keys), fs))
}

func (b *backend) encodeAll(keys []string) []string {
	encs := make([]string, len(keys))
	for i, k := range keys {
		encs[i] = b.keys.Encode(k)
	}
	return encs
}
