package dynamo

import (
	"context"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Notify implements driver.Notifier: one UpdateItem that bumps the key's
// notify counter, which every poll loop of the key compares.
func (b *backend) Notify(ctx context.Context, key string) error {
	vals := map[string]types.AttributeValue{}
	expr := "SET " + bumpNotify(vals)
	if b.retention > 0 {
		vals[":reap"] = num(time.Now().Add(b.retention).Unix())
		expr += ", #exp = if_not_exists(#exp, :reap)"
	}
	_, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone)
	return err
}

// pollAttrs are the attributes a poll reads.
var pollAttrs = []string{"h", "le", "f", "lw", "n"}

// preRead is the context key under which SubscribeMany hands readState
// the states its one BatchGetItem read (a map[string]driver.PollState by
// key), so that Poller.Subscribe's first read costs no request.
type preRead struct{}

// readState is the poll: one strongly consistent GetItem of the lease
// attributes (pollState), or, for a key SubscribeMany has just read, that
// state.
func (b *backend) readState(ctx context.Context, key string) (driver.PollState, error) {
	if pre, ok := ctx.Value(preRead{}).(map[string]driver.PollState); ok {
		if st, ok := pre[key]; ok {
			return st, nil
		}
	}
	item, err := b.getItem(ctx, key, pollAttrs...)
	if err != nil {
		return driver.PollState{}, err
	}
	return b.pollState(key, item, clock.Now()), nil
}

// pollState is the state of key's item (nil if absent) read at at (a
// clock.Now reading after the answer), a sighting of its lease (sight).
// The token is the notify counter (see bumpNotify), the holder the live
// lease's fence ("" when there is none or it may be taken over, which is
// also when the state is due to change by itself: Expires, the lease's
// takeover time).
func (b *backend) pollState(key string, item map[string]types.AttributeValue, at time.Time) driver.PollState {
	var st driver.PollState
	n, _ := attr(item, "n")
	st.Token = strconv.FormatInt(n, 10)
	if until, held := b.observe(key, item, at); held && at.Before(until) {
		f, _ := attr(item, "f")
		st.Holder, st.Expires = strconv.FormatInt(f, 10), until
	}
	return st
}
