package mysql

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
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
	if pre, ok := ctx.Value(preRead{}).(map[string]driver.PollState); ok {
		if st, ok := pre[key]; ok {
			return st, nil
		}
	}
	if err := b.ensure(ctx); err != nil {
		return driver.PollState{}, b.classify(err)
	}
	start := time.Now()
	var r pollRow
	prev, perr := strconv.ParseUint(since, 10, 64)
	want := since != "" && perr == nil
	err := b.db.QueryRowContext(ctx, b.q.pollValue, want, prev, b.keys.Encode(key)).Scan(&r.holder, &r.token, &r.ev, &r.remain, &r.val, &r.valued)
	if errors.Is(err, sql.ErrNoRows) {
		return driver.PollState{Token: "0"}, nil
	}
	if err != nil {
		return driver.PollState{}, b.classify(err)
	}
	return r.state(start), nil
}

// preRead is the context key under which SubscribeMany hands pollState
// the states its one SELECT read (a map[string]driver.PollState by key),
// so that Poller.Subscribe's first read costs no statement.
type preRead struct{}

// pollRow is a claim row as pollValue and pollMany read it.
type pollRow struct {
	holder sql.NullString
	token  uint64
	ev     uint64
	remain int64
	val    []byte
	valued bool
}

// state is the poll state of r, read by a statement sent at start.
func (r *pollRow) state(start time.Time) driver.PollState {
	st := driver.PollState{Token: strconv.FormatUint(r.ev, 10), Valued: r.valued}
	if r.valued {
		st.Value = nonNil(r.val)
	}
	if r.holder.Valid && r.remain > 0 {
		st.Holder = r.holder.String + "/" + strconv.FormatUint(r.token, 10)
		// The clock read before the request: the server's expiry cannot
		// come before it.
		st.Expires = start.Add(time.Duration(r.remain) * time.Microsecond)
	}
	return st
}

// pollStates is the batched poll (driver.NewBatchPoller): pollState of
// every key in one SELECT (pollMany). since nil: no values (SubscribeMany's
// first reads); a key whose since is not a counter gets none either.
func (b *backend) pollStates(ctx context.Context, keys, since []string) ([]driver.PollState, error) {
	if err := b.ensure(ctx); err != nil {
		return nil, b.classify(err)
	}
	start := time.Now()
	index := make(map[string]int, len(keys))
	want := make([]bool, len(keys))
	pairs := make([]any, 0, 2*len(keys))
	args := make([]any, 0, 1+3*len(keys))
	for i, k := range keys {
		enc := b.keys.Encode(k)
		index[enc] = i
		if since != nil {
			if prev, err := strconv.ParseUint(since[i], 10, 64); err == nil {
				want[i] = true
				pairs = append(pairs, enc, prev)
			}
		}
	}
	if len(pairs) == 0 {
		pairs = append(pairs, "", uint64(0)) // NOT IN needs a list; no key is ""
	}
	args = append(append(args, since != nil), pairs...)
	for _, k := range keys {
		args = append(args, b.keys.Encode(k))
	}
	q := strings.Replace(b.q.pollMany, "%s", strings.TrimSuffix(strings.Repeat("(?,?),", len(pairs)/2), ","), 1)
	q = strings.Replace(q, "%s", strings.TrimSuffix(strings.Repeat("?,", len(keys)), ","), 1)
	rows, err := b.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, b.classify(err)
	}
	defer rows.Close()
	out := make([]driver.PollState, len(keys))
	for i := range out {
		out[i].Token = "0" // no claim row
	}
	for rows.Next() {
		var (
			k string
			r pollRow
		)
		if err := rows.Scan(&k, &r.holder, &r.token, &r.ev, &r.remain, &r.val, &r.valued); err != nil {
			return nil, b.classify(err)
		}
		if i, ok := index[k]; ok {
			r.valued = r.valued && want[i]
			out[i] = r.state(start)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, b.classify(err)
	}
	return out, nil
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
