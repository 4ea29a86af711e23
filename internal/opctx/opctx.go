// Package opctx is a cheap deadline context for one backend call, shared
// by package claim (per-operation bounds) and package flight (loader and
// backend calls).
package opctx

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Ctx is the context of one backend call: its parent (the flight's
// context) with a deadline. It arms a timer only if the callee needs one.
// Until then Deadline and Err answer from the deadline, the clock and the
// parent; the first call to Done or Value (which context.WithCancel,
// AfterFunc, Cause and the like make on a context derived from it) builds
// the real context.WithDeadline, which answers everything from then on. A
// backend that only checks Err (the in-process one) costs one allocation
// per call instead of a context, a timer and a registration on the
// parent; a network backend, which waits on Done, pays for the real one
// as before.
//
// Stop is the CancelFunc: it cancels the real context if there is one,
// and makes a later one start cancelled, as a cancelled context would
// answer.
type Ctx struct {
	parent   context.Context
	deadline time.Time
	armed    atomic.Pointer[armedCtx]
	stopped  atomic.Bool
	mu       sync.Mutex // serialises arm and stop
}

type armedCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// Within reports whether parent ends no later than deadline: a Ctx for
// that deadline would bound nothing parent does not (whichever of the two
// deadlines passes first, parent's Err is set at that moment too), so a
// caller may run under parent itself and save the Ctx.
func Within(parent context.Context, deadline time.Time) bool {
	d, ok := parent.Deadline()
	return ok && !d.After(deadline)
}

// New returns a context that is parent with deadline (no later than
// parent's own); call Stop when the call returns.
func New(parent context.Context, deadline time.Time) *Ctx {
	return &Ctx{parent: parent, deadline: deadline}
}

func (o *Ctx) arm() context.Context {
	if a := o.armed.Load(); a != nil {
		return a.ctx
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if a := o.armed.Load(); a != nil {
		return a.ctx
	}
	ctx, cancel := context.WithDeadline(o.parent, o.deadline)
	if o.stopped.Load() {
		cancel()
	}
	o.armed.Store(&armedCtx{ctx: ctx, cancel: cancel})
	return ctx
}

func (o *Ctx) Stop() {
	o.mu.Lock()
	o.stopped.Store(true)
	a := o.armed.Load()
	o.mu.Unlock()
	if a != nil {
		a.cancel()
	}
}

func (o *Ctx) Deadline() (time.Time, bool) {
	if d, ok := o.parent.Deadline(); ok && d.Before(o.deadline) {
		return d, true
	}
	return o.deadline, true
}

func (o *Ctx) Done() <-chan struct{} { return o.arm().Done() }

func (o *Ctx) Err() error {
	if a := o.armed.Load(); a != nil {
		return a.ctx.Err()
	}
	if err := o.parent.Err(); err != nil {
		return err
	}
	if o.stopped.Load() {
		return context.Canceled
	}
	if !time.Now().Before(o.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

func (o *Ctx) Value(key any) any { return o.arm().Value(key) }

func (o *Ctx) String() string { return "opctx.Ctx(" + o.deadline.String() + ")" }
