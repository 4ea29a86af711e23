package redis

import (
	"context"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// ReplicationError is the error of a write, in the WAIT mode
// (Options.WaitReplicas, wait_replicas), that the primary applied but
// fewer replicas than asked acknowledged within the WAIT timeout: a
// failover now may lose it. A claim is then not reported as held (the
// driver releases it, best effort), a renewal leaves the lease's local
// deadline where it was, and a commit or revoke is ambiguous (it may be
// read, and may be lost). claim.Client reports it as claim.ErrUnavailable;
// errors.As finds it.
type ReplicationError struct {
	Op     string // "claim", "extend", "commit", "commit-release", "revoke", "set", "delete"
	Acked  int    // replicas that acknowledged
	Wanted int    // Options.WaitReplicas
}

func (e *ReplicationError) Error() string {
	return fmt.Sprintf("redis: %s acknowledged by %d of %d replicas within the WAIT timeout (a failover may lose it)", e.Op, e.Acked, e.Wanted)
}

// noQueue is the driver in the WAIT mode: every interface of backend but
// driver.Queuer. A fair grant is published from inside its script, before
// a WAIT could confirm it, so the waiter would hold a lease a failover may
// lose; AcquireFair then fails with claim.ErrUnsupported instead.
type noQueue struct{ unqueued }

type unqueued interface {
	driver.Driver
	driver.Pinger
	driver.ClaimReader
	driver.CommitReleaser
	driver.ValueNotifier
	driver.Batcher
	driver.Broadcaster
	driver.Aser
}

// driver is b as the client sees it: without driver.Queuer in the WAIT
// mode.
func (b *backend) driver() driver.Driver {
	if b.waiting() {
		return noQueue{b}
	}
	return b
}

// waiting reports whether the WAIT mode is on.
func (b *backend) waiting() bool { return b.opt.WaitReplicas > 0 }

// replicated is nil outside the WAIT mode or when acked replicas are
// enough, else op's *ReplicationError.
func (b *backend) replicated(op string, acked int64) error {
	if !b.waiting() || acked >= int64(b.opt.WaitReplicas) {
		return nil
	}
	return &ReplicationError{Op: op, Acked: int(acked), Wanted: b.opt.WaitReplicas}
}

// wait queues WAIT on pipe: it counts the replicas that acknowledged every
// write the pipeline's connection made before it. Its reply must arrive
// within go-redis's ReadTimeout, which is why newBackend wants WaitTimeout
// below it.
func (b *backend) wait(ctx context.Context, pipe goredis.Pipeliner) *goredis.Cmd {
	return pipe.Do(ctx, "WAIT", b.opt.WaitReplicas, millis(b.opt.WaitTimeout))
}

// eval runs script s on keys and args and returns its command and, in the
// WAIT mode, how many replicas acknowledged it (else -1). Outside the
// WAIT mode it is s.Run (EVALSHA, then EVAL after NOSCRIPT). In it, the
// script and WAIT go as one pipeline, so on one connection in one round
// trip (two after NOSCRIPT: the EVAL and a WAIT again). A WAIT that
// failed (the connection dropped after the script) fails the command:
// whether the write landed and replicated is unknown, and the caller must
// not take it as done.
func (b *backend) eval(ctx context.Context, s *goredis.Script, keys []string, args ...any) (*goredis.Cmd, int64) {
	if !b.waiting() {
		return s.Run(ctx, b.rdb, keys, args...), -1
	}
	var cmd *goredis.Cmd
	var w *goredis.Cmd
	for _, sha := range [...]bool{true, false} {
		pipe := b.rdb.Pipeline()
		if sha {
			cmd = s.EvalSha(ctx, pipe, keys, args...)
		} else {
			cmd = s.Eval(ctx, pipe, keys, args...)
		}
		w = b.wait(ctx, pipe)
		_, _ = pipe.Exec(ctx) // each command's outcome is read below
		if !goredis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
			break
		}
	}
	acked, err := w.Int64()
	if err != nil && cmd.Err() == nil {
		cmd.SetErr(fmt.Errorf("WAIT after the write: %w", err))
	}
	return cmd, acked
}

// evalCall is call of eval: decode's value of the reply, and the count of
// replicas that acknowledged (-1 outside the WAIT mode).
func evalCall[T any](b *backend, ctx context.Context, s *goredis.Script, keys []string, decode func(*goredis.Cmd) (T, error), args ...any) (T, int64, error) {
	type result struct {
		v     T
		acked int64
	}
	r, err := call(b, ctx, func(ctx context.Context) (result, error) {
		cmd, acked := b.eval(ctx, s, keys, args...)
		v, err := decode(cmd)
		return result{v, acked}, err
	})
	return r.v, r.acked, err
}

func slice(c *goredis.Cmd) ([]any, error)   { return c.Slice() }
func int64Of(c *goredis.Cmd) (int64, error) { return c.Int64() }

// abandon releases leases that were granted but not replicated enough,
// best effort: one pipeline of the release script (no WAIT), bounded by
// a second of its own (not by ctx, as the client's own clean-up
// releases); its outcome is not reported (a lease it could not release
// expires by its TTL).
func (b *backend) abandon(ctx context.Context, leases ...driver.Lease) {
	if len(leases) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_, _ = call(b, ctx, func(ctx context.Context) (struct{}, error) {
		pipe := b.rdb.Pipeline()
		for _, l := range leases {
			releaseScript.Eval(ctx, pipe, []string{b.lockKey(l.Key)}, lockValue(l), b.channel(l.Key), b.publishCmd())
		}
		_, err := pipe.Exec(ctx)
		return struct{}{}, err
	})
}
