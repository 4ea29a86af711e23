package dynamo

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/poll"
)

// Subscribe implements claim.Notifier. The first subscriber of a key in
// this Backend reads the key's item (one GetItem) and starts its poll
// loop; later subscribers join it. A release or notification after
// Subscribe returns is seen by a later poll, within the poll cap (50 ms by
// default) of happening.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("dynamo: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier: one UpdateItem that bumps the key's
// notify counter, which every poll loop of the key compares; this
// Backend's own subscribers are woken at once.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check(ctx, "notify", key); err != nil {
		return err
	}
	vals := map[string]types.AttributeValue{}
	expr := "SET " + bumpNotify(vals)
	if b.retention > 0 {
		vals[":reap"] = num(time.Now().Add(b.retention).Unix())
		expr += ", #exp = if_not_exists(#exp, :reap)"
	}
	if _, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone); err != nil {
		return wrap("notify", key, err)
	}
	b.hub.Wake(key)
	return nil
}

// readState is the poll: one strongly consistent GetItem of the lease
// attributes. The token is the notify counter, which Release,
// CommitRelease and Notify bump in the same write; the holder is the live
// lease's fence ("" when there is none or it ran out, which is also when
// the state is due to change by itself). So a claim on a free key wakes
// nobody, and a release, notification, expiry or takeover does (see
// internal/poll).
func (b *Backend) readState(ctx context.Context, key string) (poll.State, error) {
	out, err := b.c.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(b.table),
		Key:                      b.itemKey(key),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     aws.String("#h, #le, #f, #n"),
		ExpressionAttributeNames: map[string]string{"#h": "h", "#le": "le", "#f": "f", "#n": "n"},
	})
	if err != nil {
		return poll.State{}, err
	}
	var st poll.State
	n, _ := attr(out.Item, "n")
	st.Token = strconv.FormatInt(n, 10)
	if le, ok := attr(out.Item, "le"); ok && out.Item["h"] != nil {
		if exp := b.expiry(le); time.Now().Before(exp) {
			f, _ := attr(out.Item, "f")
			st.Holder, st.Expires = strconv.FormatInt(f, 10), exp
		}
	}
	return st, nil
}
