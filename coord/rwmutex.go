package coord

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/clock"
)

// DefaultReaders is a read/write lock's reader slots when the options
// leave it zero.
const DefaultReaders = 16

// RWMutexOptions tune an RWMutex. nil, and every zero field, means the
// default.
type RWMutexOptions struct {
	// TTL is each holder's lease. Default DefaultTTL.
	TTL time.Duration
	// Readers is how many readers may hold the lock at once (1 to
	// MaxSlots; every process must agree, like a semaphore's count). A
	// writer holds every reader slot, so a larger value makes writing
	// dearer. Default DefaultReaders.
	Readers int
}

// RWMutex is a named read/write lock across every process using the name
// on the backend: many readers (up to Readers at once) or one writer.
//
// Entry goes through a turnstile, a lease every reader and writer takes
// in turn: a reader holds it only while it takes a reader slot; a writer
// keeps it while it takes every reader slot, as their readers leave, and
// while it writes. So a writer waits for the readers inside, never for
// readers that came after it: a stream of readers does not starve
// writers. On a backend with a fair queue (driver.Queuer) the turnstile
// is taken first come, first served (AcquireFair); otherwise whoever
// claims first after a release.
//
// A writer's fencing token is its turnstile lease's token, strictly
// greater than every earlier writer's; a reader's is its slot's.
type RWMutex struct {
	c         *claim.Client
	name      string
	ttl       time.Duration
	turnstile string
	slots     []string
}

// NewRWMutex returns the read/write lock called name on c's backend.
// Asking with another Readers than the first process to use the name is
// an error wrapping ErrShape.
func NewRWMutex(ctx context.Context, c *claim.Client, name string, opt *RWMutexOptions) (*RWMutex, error) {
	if name == "" {
		return nil, fmt.Errorf("coord: rwmutex: %w", claim.ErrInvalidKey)
	}
	var o RWMutexOptions
	if opt != nil {
		o = *opt
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Readers == 0 {
		o.Readers = DefaultReaders
	}
	if o.Readers < 1 || o.Readers > MaxSlots {
		return nil, fmt.Errorf("coord: rwmutex %q: readers %d out of [1, %d]", name, o.Readers, MaxSlots)
	}
	base := "\x00coord:rw:" + name
	if err := agree(ctx, c, base, "readers", o.Readers); err != nil {
		return nil, fmt.Errorf("coord: rwmutex %q: %w", name, err)
	}
	return &RWMutex{c: c, name: name, ttl: o.TTL, turnstile: base + ":turnstile", slots: slotKeys(base+":r", o.Readers)}, nil
}

// enter takes the turnstile.
func (m *RWMutex) enter(ctx context.Context) (claim.Lease, error) {
	l, err := m.c.AcquireFair(ctx, m.turnstile, m.ttl)
	if errors.Is(err, claim.ErrUnsupported) {
		l, err = m.c.Acquire(ctx, m.turnstile, m.ttl)
	}
	return l, err
}

// RLock blocks until the caller holds the lock for reading, or ctx is
// done.
func (m *RWMutex) RLock(ctx context.Context) (*Hold, error) {
	t, err := m.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("coord: rlock %q: %w", m.name, err)
	}
	// The turnstile is held only while a slot is taken; its lease is
	// long enough for that (a reader that dies here frees it by TTL).
	l, _, err := takeSlot(ctx, m.c, m.slots, m.ttl, true)
	rerr := m.c.Release(context.WithoutCancel(ctx), t)
	if err != nil {
		return nil, fmt.Errorf("coord: rlock %q: %w", m.name, err)
	}
	if rerr != nil && !errors.Is(rerr, claim.ErrLost) {
		_ = m.c.Release(context.WithoutCancel(ctx), l)
		return nil, fmt.Errorf("coord: rlock %q: leaving the turnstile: %w", m.name, rerr)
	}
	return newHold(ctx, m.c, l.Token, false, l), nil
}

// Lock blocks until the caller holds the lock for writing, or ctx is
// done: it takes the turnstile (no new reader enters), then every reader
// slot as the readers inside leave.
func (m *RWMutex) Lock(ctx context.Context) (*Hold, error) {
	t, err := m.enter(ctx)
	if err != nil {
		return nil, fmt.Errorf("coord: lock %q: %w", m.name, err)
	}
	// Renewed while the readers inside finish: they may take longer than
	// one TTL.
	tk := m.c.KeepAlive(context.WithoutCancel(ctx), t, nil)
	leases, err := m.takeAll(ctx, tk)
	if err != nil {
		bg := context.WithoutCancel(ctx)
		releaseAll(bg, m.c, leases)
		_ = m.c.Release(bg, tk.Stop())
		return nil, fmt.Errorf("coord: lock %q: %w", m.name, err)
	}
	h := newHold(ctx, m.c, t.Token, true, leases...)
	h.adopt(tk)
	return h, nil
}

// takeAll claims every reader slot, waiting on wake-ups for the held
// ones, as long as the turnstile's keeper holds.
func (m *RWMutex) takeAll(ctx context.Context, tk *claim.Keeper) ([]claim.Lease, error) {
	held := make([]claim.Lease, len(m.slots))
	have := 0
	var w *watcher
	defer func() {
		if w != nil {
			w.close()
		}
	}()
	var leases []claim.Lease
	collect := func() []claim.Lease {
		leases = leases[:0]
		for _, l := range held {
			if l.Key != "" {
				leases = append(leases, l)
			}
		}
		return leases
	}
	for {
		minRem := time.Duration(0)
		for i, k := range m.slots {
			if held[i].Key != "" {
				continue
			}
			l, err := m.c.TryClaim(ctx, k, m.ttl)
			var he *claim.HeldError
			switch {
			case err == nil:
				held[i] = l
				have++
			case errors.As(err, &he):
				if he.Remaining > 0 && (minRem == 0 || he.Remaining < minRem) {
					minRem = he.Remaining
				}
			default:
				return collect(), err
			}
		}
		if have == len(m.slots) {
			return collect(), nil
		}
		if w == nil {
			// Subscribed, then checked again: no release is missed.
			var err error
			if w, err = watch(ctx, m.c, m.slots); err != nil {
				return collect(), err
			}
			continue
		}
		// The slots already taken must not expire while the rest wait:
		// renew them (one Extend each per wait, well within their TTL).
		for i, l := range held {
			if l.Key != "" && clock.Until(l.Deadline) < m.ttl/2 {
				nl, err := m.c.Extend(ctx, l, m.ttl)
				if err != nil {
					return collect(), err
				}
				held[i] = nl
			}
		}
		wctx, cancel := context.WithCancel(ctx)
		stop := context.AfterFunc(tk.Context(), cancel)
		err := w.wait(wctx, minRem, m.ttl)
		stop()
		cancel()
		if err != nil {
			if ctx.Err() == nil && tk.Context().Err() != nil {
				return collect(), fmt.Errorf("the turnstile's lease: %w", context.Cause(tk.Context()))
			}
			return collect(), err
		}
	}
}

func releaseAll(ctx context.Context, c *claim.Client, leases []claim.Lease) {
	var wg sync.WaitGroup
	for _, l := range leases {
		wg.Go(func() { _ = c.Release(ctx, l) })
	}
	wg.Wait()
}

// Hold is a held read or write lock, its leases kept alive until Release
// or loss.
type Hold struct {
	c       *claim.Client
	token   uint64
	write   bool
	keepers []*claim.Keeper
	ctx     context.Context
	cancel  context.CancelCauseFunc
	stops   []func() bool
	once    sync.Once
}

func newHold(ctx context.Context, c *claim.Client, token uint64, write bool, leases ...claim.Lease) *Hold {
	h := &Hold{c: c, token: token, write: write}
	h.ctx, h.cancel = context.WithCancelCause(context.WithoutCancel(ctx))
	for _, l := range leases {
		h.adopt(c.KeepAlive(context.WithoutCancel(ctx), l, nil))
	}
	return h
}

// adopt adds a keeper: its loss is the hold's.
func (h *Hold) adopt(k *claim.Keeper) {
	h.keepers = append(h.keepers, k)
	h.stops = append(h.stops, context.AfterFunc(k.Context(), func() {
		select {
		case <-k.Lost():
			h.cancel(k.Err())
		default:
		}
	}))
}

// Token is the hold's fencing token: a writer's is greater than every
// earlier writer's.
func (h *Hold) Token() uint64 { return h.token }

// Write reports whether the hold is a write lock.
func (h *Hold) Write() bool { return h.write }

// Context is cancelled when any of the hold's leases is lost, or the hold
// is released.
func (h *Hold) Context() context.Context { return h.ctx }

// Release unlocks, waking the waiters. Releasing twice returns
// ErrNotHeld.
func (h *Hold) Release(ctx context.Context) error {
	err := ErrNotHeld
	h.once.Do(func() {
		for _, s := range h.stops {
			s()
		}
		leases := make([]claim.Lease, len(h.keepers))
		for i, k := range h.keepers {
			leases[i] = k.Stop()
		}
		h.cancel(context.Canceled)
		// Slots first, the turnstile (a writer's, adopted last) after:
		// the next writer finds the slots free.
		var errs []error
		var mu sync.Mutex
		var wg sync.WaitGroup
		last := len(leases)
		if h.write {
			last--
		}
		for _, l := range leases[:last] {
			wg.Go(func() {
				if err := h.c.Release(ctx, l); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if h.write {
			if err := h.c.Release(ctx, leases[last]); err != nil {
				errs = append(errs, err)
			}
		}
		err = errors.Join(errs...)
	})
	return err
}
