package coord

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// MaxSlots bounds a semaphore's count and a read/write lock's reader
// slots: a waiter subscribes to every slot.
const MaxSlots = 256

// expirySlack is added to a holder's remaining lease before a waiter
// tries again, so the retry lands after the backend expired it.
const expirySlack = 5 * time.Millisecond

// SemaphoreOptions tune a Semaphore. nil, and every zero field, means the
// default.
type SemaphoreOptions struct {
	// TTL is each holder's lease: a holder that dies frees its slot
	// within TTL. Default DefaultTTL.
	TTL time.Duration
}

// Semaphore admits at most N holders of a name at once, across every
// process using the name on the backend. Each holder has a slot of its
// own: a lease with its own fencing token, kept alive while it holds.
type Semaphore struct {
	c    *claim.Client
	name string
	n    int
	ttl  time.Duration
	keys []string
	// turn is held by the one Acquire of this Semaphore that is trying
	// the slots; the others wait for it here, in process, so a release
	// wakes one waiter per process, not every goroutine of every process.
	turn chan struct{}
}

// NewSemaphore returns the semaphore called name, of count n (1 to
// MaxSlots), on c's backend. Every process must ask for the same n: the
// first to use the name records it, and asking with another n is an error
// wrapping ErrShape (one round trip, two the first time).
func NewSemaphore(ctx context.Context, c *claim.Client, name string, n int, opt *SemaphoreOptions) (*Semaphore, error) {
	if name == "" {
		return nil, fmt.Errorf("coord: semaphore: %w", claim.ErrInvalidKey)
	}
	if n < 1 || n > MaxSlots {
		return nil, fmt.Errorf("coord: semaphore %q: count %d out of [1, %d]", name, n, MaxSlots)
	}
	base := "\x00coord:sem:" + name
	if err := agree(ctx, c, base, "count", n); err != nil {
		return nil, fmt.Errorf("coord: semaphore %q: %w", name, err)
	}
	s := &Semaphore{c: c, name: name, n: n, ttl: DefaultTTL, keys: slotKeys(base, n), turn: make(chan struct{}, 1)}
	s.turn <- struct{}{}
	if opt != nil && opt.TTL > 0 {
		s.ttl = opt.TTL
	}
	return s, nil
}

func slotKeys(base string, n int) []string {
	keys := make([]string, n)
	for i := range keys {
		keys[i] = base + ":" + strconv.Itoa(i)
	}
	return keys
}

// agree records shape (e.g. "count=3") under key if nothing is recorded,
// and otherwise checks that it is what is recorded (ErrShape if not).
func agree(ctx context.Context, c *claim.Client, key, what string, n int) error {
	want := what + "=" + strconv.Itoa(n)
	got, err := c.GetOrAcquire(ctx, key, 10*time.Second, nil)
	if err != nil {
		return err
	}
	if got.Found {
		if string(got.Value) != want {
			return fmt.Errorf("%w: %s recorded, asked %s", ErrShape, got.Value, want)
		}
		return nil
	}
	return c.CommitRelease(ctx, got.Lease, []byte(want), 0)
}

// Count is the semaphore's N.
func (s *Semaphore) Count() int { return s.n }

// Acquire blocks until the caller holds one of the semaphore's slots, or
// ctx is done. A free slot costs one claim per slot tried (slots are
// tried from a random one on); when every slot is held the caller
// subscribes to them all and waits for a release's wake-up or the end of
// a holder's lease, whichever comes first, then tries again. Within one
// Semaphore value the callers of Acquire take turns: one of them tries
// the slots while the others wait in process (share one Semaphore per
// name in a process, so that a release does not wake all its goroutines).
func (s *Semaphore) Acquire(ctx context.Context) (*Permit, error) {
	select {
	case <-s.turn:
	case <-ctx.Done():
		return nil, fmt.Errorf("coord: semaphore %q: %w", s.name, ctx.Err())
	}
	l, slot, err := takeSlot(ctx, s.c, s.keys, s.ttl, true)
	s.turn <- struct{}{}
	if err != nil {
		return nil, fmt.Errorf("coord: semaphore %q: %w", s.name, err)
	}
	return s.permit(ctx, l, slot), nil
}

// TryAcquire is Acquire without the wait: an error wrapping claim.ErrHeld
// if every slot is held.
func (s *Semaphore) TryAcquire(ctx context.Context) (*Permit, error) {
	l, slot, err := takeSlot(ctx, s.c, s.keys, s.ttl, false)
	if err != nil {
		return nil, fmt.Errorf("coord: semaphore %q: %w", s.name, err)
	}
	return s.permit(ctx, l, slot), nil
}

func (s *Semaphore) permit(ctx context.Context, l claim.Lease, slot int) *Permit {
	return &Permit{c: s.c, slot: slot, token: l.Token, keeper: s.c.KeepAlive(context.WithoutCancel(ctx), l, nil)}
}

// tryEach claims the first free key of keys, tried from a random one on:
// its lease and index, or ErrHeld with the shortest remaining lease seen
// (0: unknown).
func tryEach(ctx context.Context, c *claim.Client, keys []string, ttl time.Duration) (claim.Lease, int, time.Duration, error) {
	start := rand.IntN(len(keys))
	minRem := time.Duration(0)
	for i := range keys {
		slot := (start + i) % len(keys)
		l, err := c.TryClaim(ctx, keys[slot], ttl)
		if err == nil {
			return l, slot, 0, nil
		}
		var held *claim.HeldError
		if !errors.As(err, &held) {
			return claim.Lease{}, -1, 0, err
		}
		if held.Remaining > 0 && (minRem == 0 || held.Remaining < minRem) {
			minRem = held.Remaining
		}
	}
	return claim.Lease{}, -1, minRem, claim.ErrHeld
}

// takeSlot claims one of keys, waiting (wait) until one is free.
func takeSlot(ctx context.Context, c *claim.Client, keys []string, ttl time.Duration, wait bool) (claim.Lease, int, error) {
	l, slot, _, err := tryEach(ctx, c, keys, ttl)
	if err == nil || !errors.Is(err, claim.ErrHeld) || !wait {
		return l, slot, err
	}
	w, err := watch(ctx, c, keys)
	if err != nil {
		return claim.Lease{}, -1, err
	}
	defer w.close()
	for {
		l, slot, rem, err := tryEach(ctx, c, keys, ttl)
		if err == nil || !errors.Is(err, claim.ErrHeld) {
			return l, slot, err
		}
		if err := w.wait(ctx, rem, ttl); err != nil {
			return claim.Lease{}, -1, err
		}
	}
}

// watcher merges the wake-ups of several keys into one channel.
type watcher struct {
	subs []*claim.Subscription
	wake chan struct{}
	wg   sync.WaitGroup
}

// watch subscribes to every key (the subscriptions are live when it
// returns: check state after it, then wait).
func watch(ctx context.Context, c *claim.Client, keys []string) (*watcher, error) {
	w := &watcher{wake: make(chan struct{}, 1)}
	for _, k := range keys {
		sub, err := c.Subscribe(ctx, k)
		if err != nil {
			w.close()
			return nil, err
		}
		w.subs = append(w.subs, sub)
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for range sub.C() {
				select {
				case w.wake <- struct{}{}:
				default:
				}
			}
		}()
	}
	return w, nil
}

// wait returns at a wake-up, when a holder's lease should have run out
// (rem, plus slack; without it at most ttl/3 later, to re-check), or with
// ctx's error.
func (w *watcher) wait(ctx context.Context, rem, ttl time.Duration) error {
	d := rem + expirySlack
	if rem <= 0 {
		d = max(ttl/3, 10*time.Millisecond)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.wake:
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (w *watcher) close() {
	for _, s := range w.subs {
		s.Close()
	}
	w.wg.Wait()
}

// Permit is one held slot of a Semaphore, its lease kept alive until
// Release or loss.
type Permit struct {
	c      *claim.Client
	slot   int
	token  uint64
	keeper *claim.Keeper
	once   sync.Once
}

// Slot is the index of the slot held, in [0, N).
func (p *Permit) Slot() int { return p.slot }

// Token is the slot lease's fencing token: greater than every earlier
// holder's of the same slot.
func (p *Permit) Token() uint64 { return p.token }

// Context is cancelled when the permit is lost (its lease refused or run
// out) or released.
func (p *Permit) Context() context.Context { return p.keeper.Context() }

// Lost is closed when the permit is lost (not when it is released).
func (p *Permit) Lost() <-chan struct{} { return p.keeper.Lost() }

// Release gives the slot back, waking the waiters. Releasing twice
// returns ErrNotHeld; releasing a lost permit an error wrapping
// claim.ErrLost.
func (p *Permit) Release(ctx context.Context) error {
	err := ErrNotHeld
	p.once.Do(func() { err = p.c.Release(ctx, p.keeper.Stop()) })
	return err
}
