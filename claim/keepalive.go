package claim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/internal/clock"
)

// KeepAliveOptions tune KeepAlive. The zero value (or nil) is the default.
type KeepAliveOptions struct {
	// Interval between renewals; 0 means the lease's TTL/3.
	Interval time.Duration
	// TTL requested at each renewal; 0 means the lease's TTL.
	TTL time.Duration
	// Margin: the keeper declares the lease lost this long before its
	// local Deadline when no renewal succeeded by then, so work under
	// Context stops while the lease is still certainly held, even if the
	// local and server clocks drift apart a little or the last request
	// was slow to arrive. 0 means TTL/10 (at most one second); negative
	// means none (loss at the Deadline itself).
	Margin time.Duration
	// OnLost, if set, is called once (on the keeper's goroutine) with the
	// cause when the lease is lost.
	OnLost func(cause error)
}

// Keeper renews one lease in the background. See KeepAlive.
type Keeper struct {
	c      *Client
	opt    KeepAliveOptions
	ctx    context.Context
	cancel context.CancelCauseFunc
	lost   chan struct{}
	done   chan struct{}
	stop   chan struct{}
	once   sync.Once

	mu    sync.Mutex
	lease Lease
	err   error
}

// KeepAlive renews l in the background, every opt.Interval (default TTL/3),
// until Stop is called, ctx is done, or the lease is lost. Loss is reported
// the moment it is known: a renewal answered ErrLost, or the lease's local
// Deadline, less opt.Margin, passed without a successful renewal (for example while the
// network is cut: the keeper does not wait for a failing call to time out,
// it fences itself by the local clock). On loss the Keeper's Context is
// cancelled with a cause wrapping ErrLost, Lost is closed, and
// opt.OnLost runs. A renewal that fails for another reason (a timeout, a
// dropped connection) is retried quickly until the deadline, since renewals
// are idempotent. The keeper runs one goroutine (and one more while a
// renewal is in flight), which Stop ends.
func (c *Client) KeepAlive(ctx context.Context, l Lease, opt *KeepAliveOptions) *Keeper {
	k := &Keeper{c: c, lease: l, lost: make(chan struct{}), done: make(chan struct{}), stop: make(chan struct{})}
	if opt != nil {
		k.opt = *opt
	}
	if k.opt.TTL <= 0 {
		k.opt.TTL = l.TTL
	}
	if k.opt.Interval <= 0 {
		k.opt.Interval = k.opt.TTL / 3
	}
	if k.opt.Interval <= 0 {
		k.opt.Interval = time.Millisecond
	}
	switch {
	case k.opt.Margin == 0:
		k.opt.Margin = min(k.opt.TTL/10, time.Second)
	case k.opt.Margin < 0:
		k.opt.Margin = 0
	}
	k.ctx, k.cancel = context.WithCancelCause(ctx)
	go k.run()
	return k
}

// Context is cancelled when the lease is lost (cause wraps ErrLost: see
// context.Cause), when Stop is called, or when KeepAlive's ctx is done.
// Work done under the lease should run under this context.
func (k *Keeper) Context() context.Context { return k.ctx }

// Lost is closed when the lease is lost (not when the keeper is stopped).
func (k *Keeper) Lost() <-chan struct{} { return k.lost }

// Err returns nil while the lease is held or after a clean Stop, and the
// cause (wrapping ErrLost) once it is lost.
func (k *Keeper) Err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.err
}

// Lease returns the lease as last renewed (same Token, later Deadline).
func (k *Keeper) Lease() Lease {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.lease
}

// Stop stops renewing, waits for the keeper's goroutine to end, and returns
// the lease as last renewed. It does not release the lease. Idempotent.
func (k *Keeper) Stop() Lease {
	k.once.Do(func() { close(k.stop) })
	<-k.done
	return k.Lease()
}

func (k *Keeper) fail(cause error) {
	k.mu.Lock()
	k.err = cause
	k.mu.Unlock()
	close(k.lost)
	k.cancel(cause)
	if k.opt.OnLost != nil {
		k.opt.OnLost(cause)
	}
}

// fence is when the keeper gives l up: its Deadline less the margin.
func (k *Keeper) fence(l Lease) time.Time { return l.Deadline.Add(-k.opt.Margin) }

func (k *Keeper) run() {
	defer close(k.done)
	defer k.cancel(context.Canceled)
	next := time.NewTimer(k.opt.Interval)
	defer next.Stop()
	var lastErr error
	for {
		cur := k.Lease()
		deadline := time.NewTimer(clock.Until(k.fence(cur)))
		select {
		case <-k.stop:
			deadline.Stop()
			return
		case <-k.ctx.Done():
			deadline.Stop()
			return
		case <-deadline.C:
			if lastErr == nil {
				lastErr = errors.New("no renewal before the deadline")
			}
			k.fail(fmt.Errorf("%w: local deadline passed (%v)", ErrLost, lastErr))
			return
		case <-next.C:
		}
		deadline.Stop()
		if !clock.Now().Before(k.fence(cur)) {
			if lastErr == nil {
				lastErr = errors.New("no renewal before the deadline")
			}
			k.fail(fmt.Errorf("%w: local deadline passed (%v)", ErrLost, lastErr))
			return
		}
		// Bound the renewal by the lease's deadline: past it the lease is
		// lost whatever the server says. The call runs on its own
		// goroutine so that the loss is reported at the deadline even if
		// the driver overruns its context (a client whose I/O timeout
		// does not follow the context, a connection gone silent).
		rctx, cancel := context.WithTimeout(k.ctx, clock.Until(k.fence(cur)))
		type renewal struct {
			l   Lease
			err error
		}
		rc := make(chan renewal, 1)
		go func() {
			nl, err := k.c.Extend(rctx, cur, k.opt.TTL)
			rc <- renewal{nl, err}
		}()
		deadline = time.NewTimer(clock.Until(k.fence(cur)))
		var r renewal
		select {
		case r = <-rc:
			deadline.Stop()
		case <-deadline.C:
			k.fail(fmt.Errorf("%w: local deadline passed during a renewal", ErrLost))
			cancel()
			<-rc
			return
		case <-k.stop:
			deadline.Stop()
			cancel()
			<-rc
			return
		}
		cancel()
		nl, err := r.l, r.err
		switch {
		case err == nil:
			lastErr = nil
			k.mu.Lock()
			k.lease = nl
			k.mu.Unlock()
			next.Reset(k.opt.Interval)
		case errors.Is(err, ErrLost):
			k.fail(err)
			return
		case errors.Is(err, ErrClosed):
			k.fail(fmt.Errorf("%w: %w", ErrLost, err))
			return
		default:
			select {
			case <-k.stop:
				return
			default:
			}
			if k.ctx.Err() != nil {
				return
			}
			lastErr = err
			// Transient: retry soon, well before the deadline.
			retry := k.opt.Interval / 4
			if retry < time.Millisecond {
				retry = time.Millisecond
			}
			next.Reset(retry)
		}
	}
}
