package dynamo

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// MaxBatch is the most keys one BatchGetItem request may name, and so
// Features.MaxBatch: the Client splits larger batches.
const MaxBatch = 100

// GetMany implements driver.Batcher: one strongly consistent BatchGetItem
// of the value attributes (batchGet). A value past its TTL (by this
// client's clock) is nil, as Get would find it absent.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	items, err := b.batchGet(ctx, keys, "v", "ve")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := make([][]byte, len(keys))
	for i, item := range items {
		if v, ok := value(item, now); ok {
			out[i] = v
		}
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: each key's TryClaimRead (one
// conditional UpdateItem returning the new item), all sent at once
// (concurrent HTTP/1.1 requests, a connection each). DynamoDB has no conditional batch write
// (BatchWriteItem takes no conditions, and TransactWriteItems fails
// whole, and dynalite lacks it), so a batch of n keys is n requests but
// costs the latency of one. Each key is atomic on its own, as TryClaimRead;
// nothing is atomic across keys. A ttl longer than the retention, a done
// ctx or a failed table creation fail the whole call before any claim is
// sent; any other error is its key's.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	if err := b.checkRetention(ttl); err != nil {
		return nil, err
	}
	if err := b.ensureTable(ctx); err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	driver.Each(len(keys), 0, func(i int) {
		c := &out[i]
		c.Lease, c.Value, c.Found, c.Err = b.tryClaim(ctx, keys[i], holders[i], ttl, true)
	})
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: each commit's
// CommitRelease (one UpdateItem conditional on the lease that writes the
// value, removes the holder and bumps the notify counter, waking the
// key's pollers), all sent at once as in TryClaimMany: n requests, the
// latency of one, each atomic on its own key. A done ctx or a failed
// table creation fail the whole call before any write is sent.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	if err := b.ensureTable(ctx); err != nil {
		return nil, err
	}
	errs := make([]error, len(commits))
	driver.Each(len(commits), 0, func(i int) {
		c := commits[i]
		errs[i] = b.commit(ctx, c.Lease, c.Value, c.TTL, true)
	})
	return errs, nil
}

// SubscribeMany implements driver.Batcher: one strongly consistent
// BatchGetItem reads every key's poll state, and each key's poll loop
// starts from it (Poller.Subscribe, its first read answered from that
// state without a request). Every state is read before SubscribeMany
// returns, so a release or notification after that changes the notify
// counter from what the loop holds, and its next poll wakes the key's
// waiters, as with Subscribe. A failed read subscribes nothing.
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

// readStates is the batched poll (driver.NewBatchPoller): every key's
// poll state in one strongly consistent BatchGetItem (batchGet).
func (b *backend) readStates(ctx context.Context, keys, _ []string) ([]driver.PollState, error) {
	items, err := b.batchGet(ctx, keys, pollAttrs...)
	if err != nil {
		return nil, err
	}
	at := clock.Now()
	out := make([]driver.PollState, len(keys))
	for i, k := range keys {
		out[i] = b.pollState(k, items[i], at)
	}
	return out, nil
}

// batchGet reads attrs of the items of keys, strongly consistent, with
// BatchGetItem: items[i] is keys[i]'s item, nil if there is none. One
// request names at most MaxBatch keys, so a batch the Client split is one
// request, unless DynamoDB leaves keys unprocessed: a reply is at most
// 16 MB (about 40 values of MaxValueLen), and throttling may cut it
// short. Those keys go in the next request, sent only if the previous one
// processed at least one key: a request that made no progress fails the
// call (unavailability) rather than loop. A configuration error wraps
// ErrConfig (classify). Nothing is sent if ctx is done.
func (b *backend) batchGet(ctx context.Context, keys []string, attrs ...string) ([]map[string]types.AttributeValue, error) {
	if err := b.ensureTable(ctx); err != nil {
		return nil, err
	}
	proj := "#k, #" + strings.Join(attrs, ", #")
	items := make([]map[string]types.AttributeValue, len(keys))
	// The Client passes distinct keys, which map to distinct items;
	// BatchGetItem refuses a key named twice, so be sure of it.
	at := make(map[string][]int, len(keys)) // item key -> indexes in keys
	pending := make([]map[string]types.AttributeValue, 0, len(keys))
	for i, k := range keys {
		ik := b.itemKey(k)
		s := ik["k"].(*types.AttributeValueMemberS).Value
		if _, dup := at[s]; !dup {
			pending = append(pending, ik)
		}
		at[s] = append(at[s], i)
	}
	for len(pending) > 0 {
		n := min(len(pending), MaxBatch)
		out, err := b.c.BatchGetItem(ctx, &dynamodb.BatchGetItemInput{
			RequestItems: map[string]types.KeysAndAttributes{b.table: {
				Keys:                     pending[:n],
				ConsistentRead:           aws.Bool(true),
				ProjectionExpression:     aws.String(proj),
				ExpressionAttributeNames: names(proj),
			}},
		})
		if err != nil {
			return nil, classify(b.table, err)
		}
		for _, item := range out.Responses[b.table] {
			if s, ok := item["k"].(*types.AttributeValueMemberS); ok {
				for _, i := range at[s.Value] {
					items[i] = item
				}
			}
		}
		left := out.UnprocessedKeys[b.table].Keys
		if len(left) >= n {
			return nil, fmt.Errorf("BatchGetItem processed none of %d keys (throttled?)", n)
		}
		pending = append(left, pending[n:]...)
	}
	return items, nil
}
