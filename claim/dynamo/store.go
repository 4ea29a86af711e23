package dynamo

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim"
)

// valueExpr returns the update expression storing val with ttl, adding
// its values to vals.
func (b *Backend) valueExpr(op, key string, val []byte, ttl time.Duration, now time.Time, vals map[string]types.AttributeValue) (string, error) {
	if ttl < 0 {
		return "", fmt.Errorf("dynamo: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, MaxValueLen); err != nil {
		return "", fmt.Errorf("dynamo: %s %q: %w", op, key, err)
	}
	vals[":v"] = &types.AttributeValueMemberB{Value: append([]byte{}, val...)}
	if ttl == 0 {
		// vp (far future) keeps later lease writes from lowering exp.
		vals[":vp"] = num(farFuture)
		expr := "SET #v = :v, #vp = :vp"
		if b.retention > 0 {
			expr += ", #exp = :vp"
		}
		return expr + " REMOVE #ve", nil
	}
	ve := now.Add(ms(ttl)).UnixMilli()
	vals[":ve"] = num(ve)
	expr := "SET #v = :v, #ve = :ve"
	if b.retention > 0 {
		// At least Retention after the value and after any lease that
		// can be live now (leases are at most Retention long).
		r := max(ve/1000+1, now.Add(b.retention).Unix()) + int64(b.retention/time.Second)
		vals[":reap"] = num(r)
		expr += ", #exp = :reap"
	}
	return expr + " REMOVE #vp", nil
}

// Get implements claim.Store: a strongly consistent GetItem. A value past
// its TTL (by this client's clock) is never returned.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check(ctx, "get", key); err != nil {
		return nil, err
	}
	out, err := b.c.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(b.table),
		Key:                      b.itemKey(key),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     aws.String("#v, #ve"),
		ExpressionAttributeNames: map[string]string{"#v": "v", "#ve": "ve"},
	})
	if err != nil {
		return nil, wrap("get", key, err)
	}
	v, ok := value(out.Item, time.Now())
	if !ok {
		return nil, fmt.Errorf("dynamo: get %q: %w", key, claim.ErrNotFound)
	}
	return v, nil
}

// Set implements claim.Store: one unconditional UpdateItem of the value
// attributes (the key's lease and counters are left alone).
func (b *Backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.check(ctx, "set", key); err != nil {
		return err
	}
	vals := map[string]types.AttributeValue{}
	expr, err := b.valueExpr("set", key, val, ttl, time.Now(), vals)
	if err != nil {
		return err
	}
	if _, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone); err != nil {
		return wrap("set", key, err)
	}
	return nil
}

// Delete implements claim.Store: removes the value attributes (the item,
// with its fence, stays).
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check(ctx, "delete", key); err != nil {
		return err
	}
	vals := map[string]types.AttributeValue{}
	expr := "REMOVE #v, #ve, #vp"
	if b.retention > 0 {
		vals[":reap"] = num(time.Now().Add(2 * b.retention).Unix())
		expr = "SET #exp = :reap " + expr
	}
	_, err := b.update(ctx, key, expr, "attribute_exists(#v)", vals, types.ReturnValueNone)
	if _, ok := conditionFailed(err); ok {
		return nil // nothing stored
	}
	if err != nil {
		return wrap("delete", key, err)
	}
	return nil
}
