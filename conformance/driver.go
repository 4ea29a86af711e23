package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Checks of the driver contract that the Client's own checks would hide:
// they call the driver behind a Client directly (claim.Client.Driver), the
// way a late, retried or forged request reaches the substrate.
func init() {
	register("ServerExpiry", checkServerExpiry)
	register("CancelledContext", checkCancelledContext)
	register("WakeAfterChange", checkWakeAfterChange)
	register("ConcurrentRelease", checkConcurrentRelease)
	register("SubscribeLive", checkSubscribeLive)
	register("Unsubscribe", checkUnsubscribe)
	register("GrantedTTL", checkGrantedTTL)
	register("AtomicCommit", checkAtomicCommit)
}

// holder returns a holder ID of the form the Client makes (see
// driver.Lease.Holder).
func holder() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// direct claims key on d with a holder of its own, and stamps the lease's
// Deadline as the Client would.
func direct(t *T, d driver.Driver, key string, ttl time.Duration) driver.Lease {
	start := time.Now()
	l, err := d.TryClaim(t.Context(), key, holder(), ttl)
	if err != nil {
		t.Fatalf("driver TryClaim(%s): %v", key, err)
	}
	l.Deadline = start.Add(l.TTL)
	return l
}

// pastServerExpiry waits until the server has certainly expired l: its
// local deadline, plus the TTL granularity, plus a margin for clock skew
// allowances and a slow server.
func pastServerExpiry(t *T, l driver.Lease) {
	d := time.Until(l.Deadline) + t.feat.TTLGranularity + 500*time.Millisecond
	select {
	case <-time.After(d):
	case <-t.Context().Done():
		t.Fatalf("cancelled while waiting for expiry")
	}
}

// checkServerExpiry: a lease the server expired (nobody took the key
// over) is refused by the driver itself, even when its local Deadline
// says otherwise (a holder whose clock lags, a forged or replayed lease):
// Commit, Extend and CommitRelease answer ErrLost and write nothing. The
// Client refuses such a lease before I/O by its Deadline; this is the
// server's half of that check.
func checkServerExpiry(t *T) {
	ctx := t.Context()
	c := t.Client()
	d := c.Driver()
	k := t.Key("k")
	l := direct(t, d, k, t.ShortTTL())
	pastServerExpiry(t, l)
	late := l
	late.Deadline = time.Now().Add(time.Hour) // only the server can refuse it now
	if err := d.Commit(ctx, late, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("driver Commit of a lease the server expired: err = %v, want ErrLost", err)
	}
	if _, err := d.Extend(ctx, late, t.LongTTL()); !errors.Is(err, claim.ErrLost) {
		t.Errorf("driver Extend of a lease the server expired: err = %v, want ErrLost (a lapsed lease must not be revived)", err)
	}
	if crl, ok := d.(driver.CommitReleaser); ok {
		if err := crl.CommitRelease(ctx, late, []byte("late"), 0); !errors.Is(err, claim.ErrLost) {
			t.Errorf("driver CommitRelease of a lease the server expired: err = %v, want ErrLost", err)
		}
	}
	if v, err := c.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("after refused late writes, Get = %q, %v; want ErrNotFound (nothing written)", v, err)
	}
	// The server may keep an expired lock a little longer than its TTL
	// (memcached rounds to its 1 s clock and keeps a slack): the takeover
	// is bounded like any other.
	l2 := takeover(t, c, k, l)
	if l2.Token <= l.Token {
		t.Errorf("token after expiry %d <= expired lease's %d", l2.Token, l.Token)
	}
	_ = c.Release(ctx, l2)
}

// checkCancelledContext: the driver starts nothing whose context is
// already done: each call returns an error wrapping context.Canceled and
// the substrate is unchanged.
func checkCancelledContext(t *T) {
	ctx := t.Context()
	c := t.Client()
	d := c.Driver()
	dead, kill := context.WithCancel(ctx)
	kill()
	canceled := func(op string, err error) {
		if !errors.Is(err, context.Canceled) {
			t.Errorf("driver %s with a cancelled context: err = %v, want context.Canceled", op, err)
		}
	}
	free := t.Key("free")
	_, err := d.TryClaim(dead, free, holder(), t.LongTTL())
	canceled("TryClaim", err)
	if cr, ok := d.(driver.ClaimReader); ok {
		_, _, _, err := cr.TryClaimRead(dead, free, holder(), t.LongTTL())
		canceled("TryClaimRead", err)
	}
	if l, err := c.TryClaim(ctx, free, t.LongTTL()); err != nil {
		t.Errorf("a TryClaim with a cancelled context was applied: the key is held (%v)", err)
	} else {
		_ = c.Release(ctx, l)
	}

	held := t.Key("held")
	l := direct(t, d, held, t.LongTTL())
	canceled("Release", d.Release(dead, l))
	canceled("Commit", d.Commit(dead, l, []byte("dead"), 0))
	if crl, ok := d.(driver.CommitReleaser); ok {
		canceled("CommitRelease", crl.CommitRelease(dead, l, []byte("dead"), 0))
	}
	if _, err := d.Extend(ctx, l, t.LongTTL()); err != nil {
		t.Errorf("after a Release with a cancelled context, the lease is not current: Extend: %v", err)
	}
	if v, err := c.Get(ctx, held); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("a Commit with a cancelled context was applied: Get = %q, %v", v, err)
	}

	v := t.Key("value")
	canceled("Set", d.Set(dead, v, []byte("dead"), 0))
	if got, err := c.Get(ctx, v); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("a Set with a cancelled context was applied: Get = %q, %v", got, err)
	}
	if err := c.Set(ctx, v, []byte("live"), 0); err != nil {
		t.Fatalf("Set: %v", err)
	}
	canceled("Delete", d.Delete(dead, v))
	if got, err := c.Get(ctx, v); err != nil || string(got) != "live" {
		t.Errorf("a Delete with a cancelled context was applied: Get = %q, %v", got, err)
	}
	_, err = d.Get(dead, v)
	canceled("Get", err)
	canceled("Subscribe", d.Subscribe(dead, t.Key("sub"), func() {}))
	canceled("Notify", d.Notify(dead, held))
	_ = d.Release(ctx, l)
}

// checkWakeAfterChange: a release wakes its subscribers only once the key
// is free: a subscriber that claims the moment it is woken gets the key.
func checkWakeAfterChange(t *T) {
	ctx := t.Context()
	holder, waiter := t.Client(), t.Client()
	for i := 0; i < 5; i++ {
		k := t.Key(string(rune('a' + i)))
		l, err := holder.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
		s, err := waiter.Subscribe(ctx, k)
		if err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
		released := make(chan error, 1)
		go func() { released <- holder.Release(ctx, l) }()
		if !woken(t, s) {
			t.Errorf("round %d: release did not wake the subscriber", i)
		} else if l2, err := waiter.TryClaim(ctx, k, t.LongTTL()); err != nil {
			t.Errorf("round %d: TryClaim at the wake-up of a release: %v (the wake-up came before the release was visible)", i, err)
		} else {
			_ = waiter.Release(ctx, l2)
		}
		if err := <-released; err != nil {
			t.Errorf("Release: %v", err)
		}
		s.Close()
	}
}

// checkConcurrentRelease: Release is compare-and-delete in one step. Two
// copies of one Release (a retried request) racing a new claim never
// delete the new holder's lease.
func checkConcurrentRelease(t *T) {
	ctx := t.Context()
	a, b, c := t.Client(), t.Client(), t.Client()
	d := a.Driver()
	for i := 0; i < 5; i++ {
		k := t.Key(string(rune('a' + i)))
		l := direct(t, d, k, t.LongTTL())
		var next atomic.Pointer[claim.Lease]
		var wg sync.WaitGroup
		stop := make(chan struct{})
		wg.Add(1)
		go func() { // the next holder, claiming as soon as it can
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if nl, err := b.TryClaim(ctx, k, t.LongTTL()); err == nil {
					next.Store(&nl)
					return
				}
			}
		}()
		for j := 0; j < 2; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The second copy starts a little later in later rounds,
				// so a compare-then-delete has its second delete land
				// after the next holder's claim, not together with the
				// first.
				time.Sleep(time.Duration(j*i) * 3 * time.Millisecond)
				_ = d.Release(ctx, l)
			}()
		}
		time.Sleep(50 * time.Millisecond)
		close(stop)
		wg.Wait()
		nl := next.Load()
		if nl == nil {
			if nl2, err := b.TryClaim(ctx, k, t.LongTTL()); err != nil {
				t.Fatalf("round %d: TryClaim after two Releases: %v", i, err)
			} else {
				nl = &nl2
			}
		}
		if _, err := c.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("round %d: the next holder's lease is gone after a racing copy of the previous Release: TryClaim err = %v, want ErrHeld (release must compare and delete in one step)", i, err)
		}
		_ = b.Release(ctx, *nl)
	}
}

// wakeCounter counts a driver subscription's wake-ups.
type wakeCounter struct {
	n  atomic.Int64
	ch chan struct{}
}

func newWakeCounter() *wakeCounter { return &wakeCounter{ch: make(chan struct{}, 1)} }

func (w *wakeCounter) wake() {
	w.n.Add(1)
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// await waits for a wake-up, bounded.
func (w *wakeCounter) await(t *T) bool { return received(t, w.ch) }

// checkSubscribeLive: the driver's Subscribe returns once the substrate
// subscription is live: a release or a Notify right after it returns
// wakes it.
func checkSubscribeLive(t *T) {
	ctx := t.Context()
	sub, other := t.Client().Driver(), t.Client()
	for i := 0; i < 5; i++ {
		k := t.Key(string(rune('a' + i)))
		l, err := other.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
		w := newWakeCounter()
		if err := sub.Subscribe(ctx, k, w.wake); err != nil {
			t.Fatalf("driver Subscribe: %v", err)
		}
		if err := other.Release(ctx, l); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if !w.await(t) {
			t.Errorf("round %d: a release right after the driver's Subscribe returned did not wake it (Subscribe returned before the subscription was live)", i)
		}
		k2 := t.Key(string(rune('a'+i)) + "/notify")
		w2 := newWakeCounter()
		if err := sub.Subscribe(ctx, k2, w2.wake); err != nil {
			t.Fatalf("driver Subscribe: %v", err)
		}
		if err := other.Notify(ctx, k2); err != nil {
			t.Fatalf("Notify: %v", err)
		}
		if !w2.await(t) {
			t.Errorf("round %d: a Notify right after the driver's Subscribe returned did not wake it", i)
		}
		sub.Unsubscribe(k)
		sub.Unsubscribe(k2)
	}
}

// checkUnsubscribe: after the driver's Unsubscribe returns, its wake is
// not called again, while another process's subscription to the key (the
// witness) goes on being woken.
func checkUnsubscribe(t *T) {
	ctx := t.Context()
	gone, witness, other := t.Client().Driver(), t.Client().Driver(), t.Client()
	k := t.Key("k")
	wg, ww := newWakeCounter(), newWakeCounter()
	if err := gone.Subscribe(ctx, k, wg.wake); err != nil {
		t.Fatalf("driver Subscribe: %v", err)
	}
	if err := witness.Subscribe(ctx, k, ww.wake); err != nil {
		t.Fatalf("driver Subscribe: %v", err)
	}
	defer witness.Unsubscribe(k)
	if err := other.Notify(ctx, k); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if !wg.await(t) || !ww.await(t) {
		t.Fatalf("a Notify did not wake both driver subscriptions")
	}
	gone.Unsubscribe(k)
	before := wg.n.Load()
	var slowest time.Duration
	for i := 0; i < 3; i++ {
		start := time.Now()
		l, err := other.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
		if err := other.Release(ctx, l); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if !ww.await(t) {
			t.Fatalf("release %d did not wake the witness", i)
		}
		slowest = max(slowest, time.Since(start))
	}
	// Twice the witness's slowest wake-up, for a wake of the dropped
	// subscription that would be on its way.
	time.Sleep(2*slowest + 50*time.Millisecond)
	if n := wg.n.Load() - before; n > 0 {
		t.Errorf("%d wake-ups of a subscription after its Unsubscribe returned (the substrate subscription was not dropped)", n)
	}
}

// checkGrantedTTL: Features.MinTTL and TTLGranularity are true: a lease
// asked for less than MinTTL is granted at least MinTTL, granted TTLs are
// whole multiples of the granularity, and never shorter than asked.
func checkGrantedTTL(t *T) {
	ctx := t.Context()
	c := t.Client()
	g := t.feat.TTLGranularity
	ok := func(what string, asked, got time.Duration) {
		if got < asked || got < t.feat.MinTTL {
			t.Errorf("%s for %s granted %s: shorter than asked or than Features.MinTTL %s", what, asked, got, t.feat.MinTTL)
		}
		if g > 0 && got%g != 0 {
			t.Errorf("%s for %s granted %s: not a multiple of Features.TTLGranularity %s", what, asked, got, g)
		}
	}
	k := t.Key("k")
	asked := time.Millisecond
	l, err := c.TryClaim(ctx, k, asked)
	if err != nil {
		t.Fatalf("TryClaim for 1ms: %v", err)
	}
	ok("TryClaim", asked, l.TTL)
	if l.TTL >= 200*time.Millisecond {
		// Long enough to see held: it must be.
		if _, err := t.Client().TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) && time.Now().Before(l.Deadline) {
			t.Errorf("a lease granted %s is not held right after: TryClaim err = %v", l.TTL, err)
		}
	}
	_ = c.Release(ctx, l)
	odd := t.ShortTTL() + time.Millisecond + 300*time.Microsecond
	l, err = c.TryClaim(ctx, t.Key("odd"), odd)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	ok("TryClaim", odd, l.TTL)
	if l, err = c.Extend(ctx, l, odd); err != nil {
		t.Fatalf("Extend: %v", err)
	}
	ok("Extend", odd, l.TTL)
	_ = c.Release(ctx, l)
}

// checkAtomicCommit: where Features.AtomicCommit is true, the lease check
// and the write are one step: a commit that starts just before its lease
// ends lands before the next holder's claim, or not at all.
func checkAtomicCommit(t *T) {
	if !t.feat.AtomicCommit {
		t.Skipf("Features.AtomicCommit is false")
	}
	ctx := t.Context()
	var wg sync.WaitGroup
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			atomicCommitRound(t, ctx, t.Key(string(rune('a'+i))))
		}()
	}
	wg.Wait()
}

func atomicCommitRound(t *T, ctx context.Context, k string) {
	a, b := t.Client(), t.Client()
	l, err := a.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Errorf("TryClaim: %v", err)
		return
	}
	time.Sleep(time.Until(l.Deadline) - 15*time.Millisecond)
	committed := make(chan error, 1)
	go func() { committed <- a.Commit(ctx, l, []byte("old holder"), 0) }()
	deadline := time.Now().Add(l.TTL + t.expiryBound())
	var nl claim.Lease
	for {
		if nl, err = b.TryClaim(ctx, k, t.LongTTL()); err == nil {
			break
		}
		if !errors.Is(err, claim.ErrHeld) || time.Now().After(deadline) {
			t.Errorf("taking over: %v", err)
			<-committed
			return
		}
		time.Sleep(time.Millisecond)
	}
	atClaim, _ := b.Get(ctx, k)
	<-committed
	later, _ := b.Get(ctx, k)
	if string(later) == "old holder" && string(atClaim) != "old holder" {
		t.Errorf("the previous holder's commit landed after the next holder's claim (Features.AtomicCommit is true, but the lease check and the write are not one step)")
	}
	_ = b.Release(ctx, nl)
}
