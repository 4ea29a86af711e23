package dynamo

import (
	"context"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
)

// Subscribe implements driver.Notifier: it reads the key's item (one
// GetItem) and starts its poll loop (see driver.Poller). A release or
// notification after Subscribe returns is seen by a later poll, within the
// poll cap (50 ms by default) of happening; one made through this driver
// calls wake at once.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	if err := b.poller.Subscribe(ctx, key, wake); err != nil {
		return err
	}
	b.mu.Lock()
	b.wakes[key] = wake
	b.mu.Unlock()
	return nil
}

// Unsubscribe implements driver.Notifier. A poll in flight is not aborted
// (dynalite crashes on aborted requests); its result wakes nobody.
func (b *backend) Unsubscribe(key string) {
	b.mu.Lock()
	delete(b.wakes, key)
	b.mu.Unlock()
	b.poller.Unsubscribe(key)
}

// wakeLocal calls key's wake if this driver is subscribed to key: what
// this process's own Release, CommitRelease or Notify changed (visible to
// every read once its UpdateItem returned) needs no poll.
func (b *backend) wakeLocal(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.wakes[key]; w != nil {
		w()
	}
}

// Notify implements driver.Notifier: one UpdateItem that bumps the key's
// notify counter, which every poll loop of the key compares; this Client's
// own subscribers are woken at once.
func (b *backend) Notify(ctx context.Context, key string) error {
	vals := map[string]types.AttributeValue{}
	expr := "SET " + bumpNotify(vals)
	if b.retention > 0 {
		vals[":reap"] = num(time.Now().Add(b.retention).Unix())
		expr += ", #exp = if_not_exists(#exp, :reap)"
	}
	if _, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone); err != nil {
		return err
	}
	b.wakeLocal(key)
	return nil
}

// readState is the poll: one strongly consistent GetItem of the lease
// attributes. The token is the notify counter, which Release,
// CommitRelease and Notify bump in the same write; the holder is the live
// lease's fence ("" when there is none or it ran out, which is also when
// the state is due to change by itself). So a claim on a free key wakes
// nobody, and a release, notification, expiry or takeover does (see
// driver.PollState).
func (b *backend) readState(ctx context.Context, key string) (driver.PollState, error) {
	item, err := b.getItem(ctx, key, "h", "le", "f", "n")
	if err != nil {
		return driver.PollState{}, err
	}
	var st driver.PollState
	n, _ := attr(item, "n")
	st.Token = strconv.FormatInt(n, 10)
	if le, ok := attr(item, "le"); ok && item["h"] != nil {
		if exp := b.expiry(le); time.Now().Before(exp) {
			f, _ := attr(item, "f")
			st.Holder, st.Expires = strconv.FormatInt(f, 10), exp
		}
	}
	return st, nil
}
