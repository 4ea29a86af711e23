package dynamo

import (
	"context"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
)

// valueExpr returns the SET and REMOVE actions storing val with ttl,
// adding their values to vals.
func (b *backend) valueExpr(val []byte, ttl time.Duration, now time.Time, vals map[string]types.AttributeValue) (set, remove string) {
	vals[":v"] = &types.AttributeValueMemberB{Value: append([]byte{}, val...)}
	if ttl == 0 {
		// vp (far future) keeps later lease writes from lowering exp.
		vals[":vp"] = num(farFuture)
		set = "#v = :v, #vp = :vp"
		if b.retention > 0 {
			set += ", #exp = :vp"
		}
		return set, "#ve"
	}
	ve := now.Add(ms(ttl)).UnixMilli()
	vals[":ve"] = num(ve)
	set = "#v = :v, #ve = :ve"
	if b.retention > 0 {
		// At least Retention after the value and after any lease that
		// can be live now (leases are at most Retention long).
		r := max(ve/1000+1, now.Add(b.retention).Unix()) + int64(b.retention/time.Second)
		vals[":reap"] = num(r)
		set += ", #exp = :reap"
	}
	return set, "#vp"
}

// value returns the value stored in item, unless absent or expired at now
// (by this client's clock).
func value(item map[string]types.AttributeValue, now time.Time) ([]byte, bool) {
	v, ok := item["v"].(*types.AttributeValueMemberB)
	if !ok {
		return nil, false
	}
	if ve, ok := attr(item, "ve"); ok && now.UnixMilli() >= ve {
		return nil, false
	}
	if v.Value == nil {
		return []byte{}, true
	}
	return v.Value, true
}

// Get implements driver.Store: a strongly consistent GetItem. A value past
// its TTL (by this client's clock) is never returned.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	item, err := b.getItem(ctx, key, "v", "ve")
	if err != nil {
		return nil, err
	}
	v, ok := value(item, time.Now())
	if !ok {
		return nil, driver.ErrNotFound
	}
	return v, nil
}

// Set implements driver.Store: one unconditional UpdateItem of the value
// attributes (the key's lease and counters are left alone).
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	vals := map[string]types.AttributeValue{}
	set, rem := b.valueExpr(val, ttl, time.Now(), vals)
	_, err := b.update(ctx, key, "SET "+set+" REMOVE "+rem, "", vals, types.ReturnValueNone)
	return err
}

// Delete implements driver.Store: removes the value attributes (the item,
// with its fence, stays).
func (b *backend) Delete(ctx context.Context, key string) error {
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
	return err
}
