package claim

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"
)

// ClaimNotifier is what Acquire needs: claims and wake-ups on one
// substrate. Every Backend is one.
type ClaimNotifier interface {
	Claimer
	Notifier
}

// expirySlack is added to a holder's remaining lease time before a waiter
// retries the claim, so the retry lands after the substrate expired it.
const expirySlack = 5 * time.Millisecond

// unknownRecheck bounds a wait when the backend cannot report how long the
// holder's lease has left (HeldError.Remaining == 0).
const unknownRecheck = time.Second

// Acquire blocks until it holds a lease on key for ttl, ctx is done, or the
// backend fails. It tries to claim first (a free key costs one round
// trip); if the key is held, it subscribes to key and then tries again, so
// a release that lands between the first try and the subscription is
// never lost. While the key is held it waits for a wake-up (the holder's
// release, pushed or polled by the backend) or for the holder's lease to
// run out, whichever comes first, and tries again. It never polls a push
// backend and never waits past the holder's lease, so a crashed holder
// delays it by at most one lease (by at most a second more if the backend
// cannot report the holder's remaining lease time). Cancelling ctx returns
// ctx's error promptly; no lease is held then. Safe for concurrent use.
func Acquire(ctx context.Context, b ClaimNotifier, key string, ttl time.Duration) (Lease, error) {
	if err := CheckKey(key); err != nil {
		return Lease{}, err
	}
	l, err := b.TryClaim(ctx, key, ttl)
	if err == nil || !errors.Is(err, ErrHeld) {
		return l, err
	}
	sub, err := b.Subscribe(ctx, key)
	if err != nil {
		return Lease{}, err
	}
	defer sub.Close()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		l, err := b.TryClaim(ctx, key, ttl)
		if err == nil {
			return l, nil
		}
		var held *HeldError
		if !errors.As(err, &held) {
			if errors.Is(err, ErrHeld) {
				held = &HeldError{Key: key}
			} else {
				return Lease{}, err
			}
		}
		wait := held.Remaining + expirySlack
		if held.Remaining <= 0 {
			// The backend cannot tell when the holder's lease ends:
			// re-check at least every unknownRecheck (jittered).
			wait = min(ttl, unknownRecheck)
			wait -= time.Duration(rand.Int64N(int64(wait/4) + 1))
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case _, ok := <-sub.C():
			if !ok {
				return Lease{}, ErrClosed
			}
		case <-timer.C:
		case <-ctx.Done():
			return Lease{}, ctx.Err()
		}
	}
}
