package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// The Batcher's requests are go-redis pipelines: every command of a batch
// is written before any reply is read, so a batch costs one round trip on
// one server, and one per master touched on a *ClusterClient (go-redis
// splits the pipeline by node and runs the nodes' parts concurrently).
// The scripts go as EVALSHA; a node that answers NOSCRIPT (its script
// cache was flushed, or it restarted or was promoted since) did not run
// them, and gets those commands again as EVAL: one more round trip, the
// first time only. Each command is its single-key method's script, so
// each key keeps that method's atomicity; nothing is atomic across keys,
// and on a cluster a batch may reach some masters and not others.

// GetMany implements driver.Batcher: a pipeline of GETs of the value keys
// (rather than one MGET, which a cluster node refuses across slots). A reply
// error for any key fails the call, as Get would fail for that key.
func (b *backend) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err // nothing sent
	}
	cmds, err := call(b, ctx, func(ctx context.Context) ([]*goredis.StringCmd, error) {
		pipe := b.rdb.Pipeline()
		cmds := make([]*goredis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, b.valKey(k))
		}
		_, err := pipe.Exec(ctx)
		if errors.Is(err, goredis.Nil) {
			err = nil // an absent key, not a failure: see each command
		}
		return cmds, err
	})
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(keys))
	for i, c := range cmds {
		v, err := c.Bytes()
		switch {
		case errors.Is(err, goredis.Nil):
		case err != nil:
			return nil, classify(err)
		default:
			out[i] = v
		}
	}
	return out, nil
}

// TryClaimMany implements driver.Batcher: one pipeline of the claim
// script, with the read (TryClaimRead), once per key.
func (b *backend) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	ms := millis(ttl)
	cmds, acked, err := b.scripts(ctx, claimScript, len(keys), func(i int) ([]string, []any) {
		k := keys[i]
		return []string{b.lockKey(k), b.fenceKey(k), b.valKey(k)}, []any{holders[i], ms}
	})
	if err != nil {
		return nil, err
	}
	out := make([]driver.Claimed, len(keys))
	var abandoned []driver.Lease
	for i, c := range cmds {
		o := &out[i]
		res, err := c.Slice()
		if err != nil {
			o.Err = classify(err)
			continue
		}
		o.Lease, o.Value, o.Found, o.Err = claimed(keys[i], holders[i], ms, res)
		if o.Err == nil {
			if err := b.replicated("claim", acked); err != nil {
				abandoned = append(abandoned, o.Lease)
				*o = driver.Claimed{Err: err}
			}
		}
	}
	b.abandon(ctx, abandoned...)
	return out, nil
}

// CommitReleaseMany implements driver.Batcher: one pipeline of the
// commit-and-release script, once per commit.
func (b *backend) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	cmd := b.publishCmd()
	cmds, acked, err := b.scripts(ctx, commitReleaseScript, len(commits), func(i int) ([]string, []any) {
		c := commits[i]
		k := c.Lease.Key
		return []string{b.lockKey(k), b.valKey(k)}, []any{lockValue(c.Lease), c.Value, expiry(c.TTL), b.channel(k), cmd, carried(c.Value)}
	})
	if err != nil {
		return nil, err
	}
	return fencedResults(cmds, func() error { return b.replicated("commit-release", acked) }), nil
}

// fencedResults reads the replies of a pipeline of fenced scripts (1:
// done, else the lease was not current: ErrLost); done is a done
// script's outcome (nil, or the replication's).
func fencedResults(cmds []*goredis.Cmd, done func() error) []error {
	errs := make([]error, len(cmds))
	for i, c := range cmds {
		switch ok, err := c.Int64(); {
		case err != nil:
			errs[i] = classify(err)
		case ok != 1:
			errs[i] = driver.ErrLost
		default:
			errs[i] = done()
		}
	}
	return errs
}

// ReleaseMany implements driver.ReleaseBatcher: one pipeline of the
// release script, once per lease.
func (b *backend) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	cmd := b.publishCmd()
	cmds, _, err := b.scripts(ctx, releaseScript, len(leases), func(i int) ([]string, []any) {
		l := leases[i]
		return []string{b.lockKey(l.Key)}, []any{lockValue(l), b.channel(l.Key), cmd}
	})
	if err != nil {
		return nil, err
	}
	return fencedResults(cmds, func() error { return nil }), nil
}

// SubscribeMany implements driver.Batcher: every key's channel goes to
// the pub/sub connection (one SUBSCRIBE naming them all; on a cluster one
// SSUBSCRIBE per channel, as a sharded subscription stays within a slot,
// on each master's connection), followed by one barrier per connection,
// and it returns once every barrier confirmed them: one round trip per
// pub/sub connection, the connections' overlapping (see notifier).
func (b *backend) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	names := make([]string, len(keys))
	fires := make([]func([]byte, bool), len(keys))
	for i, k := range keys {
		names[i] = b.channel(k)
		wake := wakes[i]
		fires[i] = func([]byte, bool) { wake() }
	}
	return classify(b.n.joinMany(ctx, names, fires))
}

// scripts runs script n times, the i-th on the keys and arguments args(i)
// returns, as one pipeline of EVALSHA, then those a node answered
// NOSCRIPT as a second pipeline of EVAL (which runs them: NOSCRIPT means
// they were not). It fails as a whole, returning the first error, only
// if no command got a reply from Redis (the connections failed, or ctx
// ended); otherwise each command carries its own reply or error (on a
// cluster, a master that could not be reached fails only its keys).
//
// In the WAIT mode each pipeline ends with WAIT (on its own connection,
// the one its scripts ran on), and acked is the least count of the two
// (-1 outside the WAIT mode); a WAIT that failed fails every command
// that had succeeded, as eval does.
func (b *backend) scripts(ctx context.Context, script *goredis.Script, n int, args func(i int) ([]string, []any)) ([]*goredis.Cmd, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, -1, err // nothing sent
	}
	type result struct {
		cmds  []*goredis.Cmd
		acked int64
	}
	r, err := call(b, ctx, func(ctx context.Context) (result, error) {
		var cmds []*goredis.Cmd
		acked := int64(-1)
		// exec runs pipe, with WAIT in the WAIT mode, and lowers acked
		// (or fails cmds[idx...]) by WAIT's reply.
		exec := func(pipe goredis.Pipeliner, idx []int) {
			var w *goredis.Cmd
			if b.waiting() {
				w = b.wait(ctx, pipe)
			}
			_, _ = pipe.Exec(ctx) // each command's outcome is read below
			if w == nil {
				return
			}
			a, err := w.Int64()
			if err != nil {
				for _, i := range idx {
					if cmds[i].Err() == nil {
						cmds[i].SetErr(fmt.Errorf("WAIT after the write: %w", err))
					}
				}
				return
			}
			if acked < 0 || a < acked {
				acked = a
			}
		}
		cmds = make([]*goredis.Cmd, n)
		all := make([]int, n)
		pipe := b.rdb.Pipeline()
		for i := range n {
			keys, argv := args(i)
			cmds[i] = script.EvalSha(ctx, pipe, keys, argv...)
			all[i] = i
		}
		exec(pipe, all)
		var again []int
		for i, c := range cmds {
			if goredis.HasErrorPrefix(c.Err(), "NOSCRIPT") {
				again = append(again, i)
			}
		}
		if len(again) > 0 {
			pipe := b.rdb.Pipeline()
			for _, i := range again {
				keys, argv := args(i)
				cmds[i] = script.Eval(ctx, pipe, keys, argv...)
			}
			exec(pipe, again)
		}
		var first error
		for _, c := range cmds {
			err := c.Err()
			var re goredis.Error
			if err == nil || errors.As(err, &re) {
				return result{cmds, acked}, nil // Redis answered
			}
			if first == nil {
				first = err
			}
		}
		return result{}, first
	})
	return r.cmds, r.acked, err
}
