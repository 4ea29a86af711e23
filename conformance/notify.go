package conformance

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("WakeEveryWaiter", checkWakeEveryWaiter)
	register("NoLostWakeup", checkNoLostWakeup)
	register("AcquireHandoff", checkAcquireHandoff)
	register("Notify", checkNotify)
	register("Resubscribe", checkResubscribe)
	register("Cancel", checkCancel)
}

// wakeBound is how long a wake-up may take. It is a bound, not a timing
// goal: a push backend wakes within a round trip, a poll backend within its
// backoff cap.
const wakeBound = 15 * time.Second

// woken waits for one wake-up on s, bounded.
func woken(t *T, s *claim.Subscription) bool { return received(t, s.C()) }

// received waits for one value on ch within wakeBound: false if ch was
// closed, the bound passed or the check ended.
func received(t *T, ch <-chan struct{}) bool {
	timer := time.NewTimer(wakeBound)
	defer timer.Stop()
	select {
	case _, ok := <-ch:
		return ok
	case <-timer.C:
		return false
	case <-t.Context().Done():
		return false
	}
}

// checkWakeEveryWaiter: one Release wakes every subscriber in every client.
func checkWakeEveryWaiter(t *T) {
	ctx := t.Context()
	holder := t.Client()
	k := t.Key("k")
	l, err := holder.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	const clients, perClient = 3, 10
	var subs []*claim.Subscription
	for i := 0; i < clients; i++ {
		c := t.Client()
		for j := 0; j < perClient; j++ {
			s, err := c.Subscribe(ctx, k)
			if err != nil {
				t.Fatalf("Subscribe: %v", err)
			}
			defer s.Close()
			subs = append(subs, s)
		}
	}
	// The holder's own client subscribes too.
	s, err := holder.Subscribe(ctx, k)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer s.Close()
	subs = append(subs, s)
	if err := holder.Release(ctx, l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	var missed atomic.Int32
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !woken(t, s) {
				missed.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := missed.Load(); n > 0 {
		t.Errorf("%d of %d subscribers were not woken within %s of one Release", n, len(subs), wakeBound)
	}
	// Another key's release wakes nobody here.
	other := t.Key("other")
	lo, err := holder.TryClaim(ctx, other, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := holder.Release(ctx, lo); err != nil {
		t.Fatalf("Release: %v", err)
	}
}

// checkNoLostWakeup: a release that lands after Subscribe returns but
// before the subscriber waits is delivered.
func checkNoLostWakeup(t *T) {
	ctx := t.Context()
	holder, waiter := t.Client(), t.Client()
	for i := 0; i < 10; i++ {
		k := t.Key("k" + string(rune('a'+i)))
		l, err := holder.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
		s, err := waiter.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		if err := holder.Release(ctx, l); err != nil {
			t.Fatalf("Release: %v", err)
		}
		// Only now does the subscriber look.
		if !woken(t, s) {
			t.Errorf("round %d: release between Subscribe and wait was lost", i)
		}
		s.Close()
	}
}

// checkAcquireHandoff: waiters in Acquire get the key when the holder
// releases, well before the holder's (long) lease would have expired: the
// wake-up, not the expiry, hands the key over. Releases race the waiters'
// subscribe-and-check.
func checkAcquireHandoff(t *T) {
	ctx := t.Context()
	const waiters = 6
	cs := []*claim.Client{t.Client(), t.Client(), t.Client()}
	k := t.Key("k")
	l, err := cs[0].TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	// Each waiter must get through before a held lease could expire.
	actx, cancel := context.WithTimeout(ctx, t.LongTTL()/2)
	defer cancel()
	type held struct {
		l claim.Lease
		c *claim.Client
	}
	got := make(chan held)
	errs := make(chan error, waiters)
	for i := 0; i < waiters; i++ {
		go func(c *claim.Client) {
			l, err := c.Acquire(actx, k, t.LongTTL())
			if err != nil {
				errs <- err
				return
			}
			select {
			case got <- held{l, c}:
			case <-ctx.Done():
			}
		}(cs[i%3])
	}
	time.Sleep(20 * time.Millisecond)
	cur, curC := l, cs[0]
	for i := 0; i < waiters; i++ {
		if err := curC.Release(ctx, cur); err != nil {
			t.Fatalf("Release: %v", err)
		}
		select {
		case h := <-got:
			cur, curC = h.l, h.c
		case err := <-errs:
			t.Fatalf("waiter %d did not get the key after a release: %v (a lost wake-up leaves it waiting for the lease to expire)", i, err)
		}
	}
	if err := curC.Release(ctx, cur); err != nil {
		t.Errorf("Release: %v", err)
	}
}

func checkNotify(t *T) {
	ctx := t.Context()
	a, b, c := t.Client(), t.Client(), t.Client()
	k := t.Key("k")
	var subs []*claim.Subscription
	for _, x := range []*claim.Client{b, b, c} {
		s, err := x.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		defer s.Close()
		subs = append(subs, s)
	}
	if err := a.Notify(ctx, k); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	for i, s := range subs {
		if !woken(t, s) {
			t.Errorf("subscriber %d not woken by Notify", i)
		}
	}
}

// checkResubscribe: subscriptions that come and go on one key (the last
// one dropping the substrate subscription each time) never leave a new
// subscriber deaf.
func checkResubscribe(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	k := t.Key("k")
	for i := 0; i < 8; i++ {
		s1, err := b.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		if err := s1.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := s1.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if _, ok := <-s1.C(); ok {
			t.Errorf("closed subscription's channel delivered a value instead of being closed")
		}
		s2, err := b.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		if err := a.Notify(ctx, k); err != nil {
			t.Fatalf("Notify: %v", err)
		}
		if !woken(t, s2) {
			t.Errorf("round %d: a subscription made right after the previous one closed was not woken", i)
		}
		s2.Close()
	}
}

// checkCancel: a cancelled context ends waits promptly with ctx's error.
func checkCancel(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	k := t.Key("k")
	l, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() {
		_, err := b.Acquire(cctx, k, t.LongTTL())
		res <- err
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-res:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Acquire after cancel: err = %v, want context.Canceled", err)
		}
	case <-time.After(t.LongTTL() / 2):
		t.Errorf("Acquire did not return within %s of its context being cancelled", t.LongTTL()/2)
	}
	// Already-cancelled contexts fail every call with ctx's error.
	dead, kill := context.WithCancel(ctx)
	kill()
	if _, err := b.TryClaim(dead, t.Key("x"), t.LongTTL()); !errors.Is(err, context.Canceled) {
		t.Errorf("TryClaim with a cancelled context: err = %v, want context.Canceled", err)
	}
	if _, err := b.Get(dead, k); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context: err = %v, want context.Canceled", err)
	}
	if err := b.Set(dead, k, []byte("v"), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Set with a cancelled context: err = %v, want context.Canceled", err)
	}
	if s, err := b.Subscribe(dead, t.Key("y")); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe with a cancelled context: err = %v, want context.Canceled", err)
		if s != nil {
			s.Close()
		}
	}
	if err := a.Release(ctx, l); err != nil {
		t.Errorf("Release: %v", err)
	}
}
