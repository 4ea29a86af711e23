package claim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/stampede-go/stampede/internal/clock"
	"github.com/stampede-go/stampede/internal/opctx"
)

// DefaultOpTimeout bounds each backend call of a Client whose
// Options.OpTimeout is zero, Open's check of the server included.
const DefaultOpTimeout = 5 * time.Second

// call is one backend call in flight: the bounded context it runs under,
// and what the Client records about it when it ends.
type call struct {
	op  string
	ctx context.Context
	// stop ends ctx (and its span); nil when ctx is the caller's own,
	// which the operation timeout would not bound any further.
	stop  stopCtx
	start time.Time // the lease clock (internal/clock) when the call began
}

// keyError is opError's error with its message formatted only when
// asked for: a read of a missing key is an answer, not a failure, and
// callers that only test it with errors.Is (flight's L2 read, on every
// miss) need not pay for formatting it.
type keyError struct {
	op, key string
	err     error
}

func (e *keyError) Error() string { return opError(e.op, e.key, e.err).Error() }

func (e *keyError) Unwrap() error { return e.err }

// begin starts backend call op: its context is ctx bounded by the
// Client's operation timeout (ctx's own deadline, if earlier, stays),
// with the call's span in it when a tracer provider is installed (see
// otel.go). end must follow, with the caller's ctx; a call abandoned
// before any I/O calls cl.abandon instead. A caller whose ctx ends no
// later than the operation timeout (flight bounds each call itself)
// costs no context of the call's own.
func (c *Client) begin(ctx context.Context, op string) call {
	now := time.Now() // the timeout runs on real time; leases on the lease clock
	d := now.Add(c.opTimeout)
	if tr := c.tel.tracer.Tracer(); tr != nil {
		tc := c.startSpan(ctx, tr, op, d)
		return call{op: op, ctx: tc, stop: tc, start: clock.At(now)}
	}
	if opctx.Within(ctx, d) {
		return call{op: op, ctx: ctx, start: clock.At(now)}
	}
	oc := opctx.New(ctx, d)
	return call{op: op, ctx: oc, stop: oc, start: clock.At(now)}
}

// abandon ends a call that made no I/O, without recording it.
func (cl call) abandon() {
	if cl.stop != nil {
		cl.stop.Stop()
	}
}

// end finishes cl: it stops its context, returns err classified
// (classify), unwrapped by opError (the caller wraps), and records the
// call (its span's status, the duration histogram) with that error's
// class.
func (c *Client) end(ctx context.Context, cl call, err error) error {
	if err != nil {
		err = c.classify(ctx, err)
	}
	if tc, ok := cl.stop.(*tracedCtx); ok {
		tc.finish(err)
		ctx = tc.sctx // exemplars point at the span
	} else {
		cl.abandon()
	}
	c.record(ctx, cl, err)
	return err
}

// sentinels are the contract's outcomes: an error wrapping one is an
// answer from the backend, not a failure to reach it.
var sentinels = [...]error{ErrHeld, ErrLost, ErrNotFound, ErrTooLarge, ErrInvalidKey, ErrClosed, ErrConfig, ErrUnavailable}

// classify sorts a driver's error into the classes users test with
// errors.Is: a sentinel (ErrConfig included) is returned as is, and so is
// the context's error when the caller's ctx ended; anything else is the
// backend failing to answer, ErrUnavailable, the driver's error wrapped
// underneath (the operation timeout, when it fired, is named).
func (c *Client) classify(ctx context.Context, err error) error {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return err
		}
	}
	if cerr := ctx.Err(); cerr != nil {
		if errors.Is(err, cerr) {
			return err
		}
		return fmt.Errorf("%w: %w", cerr, err)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: no answer within %s (the operation timeout): %w", ErrUnavailable, c.opTimeout, err)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}
