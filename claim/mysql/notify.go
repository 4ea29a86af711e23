package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// pollState is the driver.PollValueReader of the driver's Poller: one
// SELECT of the key's claim row (pollValue). Token is the row's wake-up
// counter (ev), which Release, CommitRelease, Revoke, Notify and HandOff
// bump and nothing lowers; Holder names the live lease (holder and token)
// if there is one, and Expires is when it runs out by the server's
// clock, translated to the local one. When since is not "" and the
// counter differs from it and is odd (a CommitRelease set it), the same
// SELECT reads the key's value too (up to maxWakeValue bytes): Value.
func (b *backend) pollState(ctx context.Context, key, since string) (driver.PollState, error) {
	if err := b.ensure(ctx); err != nil {
		return driver.PollState{}, b.classify(err)
	}
	start := time.Now()
	var (
		holder sql.NullString
		token  uint64
		ev     uint64
		remain int64
		val    []byte
		valued bool
	)
	prev, perr := strconv.ParseUint(since, 10, 64)
	want := since != "" && perr == nil
	err := b.db.QueryRowContext(ctx, b.q.pollValue, want, prev, b.keys.Encode(key)).Scan(&holder, &token, &ev, &remain, &val, &valued)
	if errors.Is(err, sql.ErrNoRows) {
		return driver.PollState{Token: "0"}, nil
	}
	if err != nil {
		return driver.PollState{}, b.classify(err)
	}
	st := driver.PollState{Token: strconv.FormatUint(ev, 10), Valued: valued}
	if valued {
		st.Value = nonNil(val)
	}
	if holder.Valid && remain > 0 {
		st.Holder = holder.String + "/" + strconv.FormatUint(token, 10)
		// The clock read before the request: the server's expiry cannot
		// come before it.
		st.Expires = start.Add(time.Duration(remain) * time.Microsecond)
	}
	return st, nil
}

// Subscribe implements driver.Notifier by polling the key's claim row
// (driver.Poller): one loop per key per process, however many waiters.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return b.classify(b.poll.Subscribe(ctx, key, wake))
}

// SubscribeValue implements driver.ValueNotifier: Subscribe, whose
// wake-up after a CommitRelease carries the value it stored (read by the
// poll that saw the release, in the same SELECT), up to maxWakeValue
// bytes.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func(value []byte)) error {
	return b.classify(b.poll.SubscribeWithValue(ctx, key, wake))
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) { b.poll.Unsubscribe(key) }

// Notify implements driver.Notifier: one upsert that bumps the key's
// wake-up counter, which every process polling the key sees.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := b.ensure(ctx); err != nil {
		return b.classify(err)
	}
	_, err := b.db.ExecContext(ctx, b.q.notify, b.keys.Encode(key))
	return b.classify(err)
}
