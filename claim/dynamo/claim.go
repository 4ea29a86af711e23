package dynamo

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// tryClaim is the driver's claim (driver.ClaimFunc): one conditional
// UpdateItem. With read, it returns the whole new item (ReturnValues
// ALL_NEW), value included, so the value is read in the same atomic write.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := b.checkRetention(ttl); err != nil {
		return driver.Lease{}, nil, false, err
	}
	ttl = ms(ttl)
	start := clock.Now()
	le := leaseEnd(start, ttl)
	vals := map[string]types.AttributeValue{
		":h": str(holder), ":le": num(le), ":one": num(1),
		":base": num(start.UnixMicro()), ":cut": num(start.Add(-b.skew).UnixMilli()),
	}
	expr := b.leaseReap("SET #h = :h, #le = :le, #f = if_not_exists(#f, :base) + :one", vals, le)
	ret := types.ReturnValueUpdatedNew
	if read {
		ret = types.ReturnValueAllNew
	}
	out, err := b.update(ctx, key, expr, "attribute_not_exists(#h) OR #le < :cut", vals, ret)
	if item, ok := conditionFailed(err); ok {
		he := &driver.HeldError{}
		if old, ok := attr(item, "le"); ok {
			he.Remaining = max(0, clock.Until(b.expiry(old)))
		}
		return driver.Lease{}, nil, false, he
	}
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	token, ok := attr(out.Attributes, "f")
	if !ok || token <= 0 {
		return driver.Lease{}, nil, false, errors.New("no valid fence in the reply")
	}
	l := driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl}
	if !read {
		return l, nil, false, nil
	}
	v, found := value(out.Attributes, time.Now())
	return l, v, found, nil
}

// checkRetention refuses a lease longer than the retention: its item could
// be reaped under it.
func (b *backend) checkRetention(ttl time.Duration) error {
	if b.retention > 0 && ttl > b.retention {
		return fmt.Errorf("ttl %s longer than the retention %s", ttl, b.retention)
	}
	return nil
}

// leaseReap sets exp for a lease write: Retention after the lease's
// expiry, unless the item holds a value without expiry (vp).
func (b *backend) leaseReap(expr string, vals map[string]types.AttributeValue, le int64) string {
	if b.retention <= 0 {
		return expr
	}
	vals[":reap"] = num(le/1000 + 1 + int64(b.retention/time.Second))
	return expr + ", #exp = if_not_exists(#vp, :reap)"
}

// leaseEnd is the expiry recorded for a lease of ttl requested at start:
// Unix ms, rounded up, so that it is never before the lease's local
// Deadline (which the client stamps from a clock read before start): a
// Release or Commit sent before the Deadline is judged (start < le, or
// le > :now) in time even within the Deadline's last millisecond.
func leaseEnd(start time.Time, ttl time.Duration) int64 {
	return (start.Add(ttl).UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
}

// expiry is when other clients consider a lease with recorded expiry le
// (Unix ms) expired: ClockSkew later, and strictly after (le < cut).
func (b *backend) expiry(le int64) time.Time {
	return time.UnixMilli(le).Add(b.skew + time.Millisecond)
}

// current is the condition for the holder of l: same holder and token, and
// (with :now) unexpired by the holder's clock.
const current = "#h = :h AND #f = :tok AND #le > :now"

func leaseVals(l driver.Lease, now time.Time) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{":h": str(l.Holder), ":tok": num(int64(l.Token)), ":now": num(now.UnixMilli())}
}

// lost maps a failed condition to ErrLost.
func lost(err error) error {
	if _, ok := conditionFailed(err); ok {
		return driver.ErrLost
	}
	return err
}

// Extend implements driver.Claimer: one conditional UpdateItem of the
// lease's expiry.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	if err := b.checkRetention(ttl); err != nil {
		return driver.Lease{}, err
	}
	start := clock.Now()
	ttl = ms(ttl)
	le := leaseEnd(start, ttl)
	vals := leaseVals(l, start)
	vals[":le"] = num(le)
	expr := b.leaseReap("SET #le = :le", vals, le)
	if _, err := b.update(ctx, l.Key, expr, current, vals, types.ReturnValueNone); err != nil {
		return driver.Lease{}, lost(err)
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: one conditional UpdateItem that
// removes the holder and bumps the notify counter (for the pollers).
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	vals := map[string]types.AttributeValue{":h": str(l.Holder), ":tok": num(int64(l.Token))}
	start := clock.Now()
	// UPDATED_OLD returns the lease's expiry as last extended (#le,
	// removed here): past it when the request was sent, the lease was no
	// longer current.
	out, err := b.update(ctx, l.Key, "SET "+bumpNotify(vals)+" REMOVE #h, #le", "#h = :h AND #f = :tok", vals, types.ReturnValueUpdatedOld)
	if err != nil {
		return lost(err)
	}
	if le, ok := attr(out.Attributes, "le"); ok && start.UnixMilli() >= le {
		return fmt.Errorf("%w (it had expired; its lock, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// bumpNotify returns the SET action that increments the notify counter n
// (for the pollers), adding its values to vals. A missing counter starts
// at the current Unix time in microseconds, like the fence, so the counter
// never comes back to a value it had, even after the item was reaped.
func bumpNotify(vals map[string]types.AttributeValue) string {
	vals[":one"] = num(1)
	vals[":nbase"] = num(time.Now().UnixMicro())
	return "#n = if_not_exists(#n, :nbase) + :one"
}

// commit is Commit (release false: the value is written into the lease's
// item by one UpdateItem conditional on the lease, atomic) and
// CommitRelease (release true: the same UpdateItem also removes the holder
// and bumps the notify counter, as Release, so pollers see the release and
// the value together).
func (b *backend) commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration, release bool) error {
	now := clock.Now()
	vals := leaseVals(l, now)
	set, rem := b.valueExpr(val, ttl, now, vals)
	if release {
		set, rem = set+", "+bumpNotify(vals), rem+", #h, #le"
	}
	_, err := b.update(ctx, l.Key, "SET "+set+" REMOVE "+rem, current, vals, types.ReturnValueNone)
	return lost(err)
}

// Revoke implements driver.Claimer: one unconditional UpdateItem of the
// key's item that removes the holder and its expiry, stores or removes
// the value, and bumps the notify counter. The fence (f) stays, so the
// next claim's token is greater than the revoked one's. Lease, value and
// counter live in one item, so the change is atomic: a Commit or
// CommitRelease with the revoked lease either landed before it (and its
// value is replaced) or fails its condition on the holder (ErrLost), and
// a poller sees the lease gone, the new value and the bump in one read,
// which wakes it (the counter changed). Revoking twice rewrites the same
// state and bumps the counter again.
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	now := time.Now()
	vals := map[string]types.AttributeValue{}
	var set, rem string
	if val != nil {
		set, rem = b.valueExpr(val, ttl, now, vals)
		set, rem = set+", ", rem+", "
	} else {
		rem = "#v, #ve, #vp, "
		if b.retention > 0 {
			// Nothing live is left in the item: no lease, no value.
			vals[":reap"] = num(now.Add(b.retention).Unix())
			set = "#exp = :reap, "
		}
	}
	expr := "SET " + set + bumpNotify(vals) + " REMOVE " + rem + "#h, #le"
	_, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone)
	return err
}
