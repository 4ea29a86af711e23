package claim_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// script is a driver whose methods a test replaces; the rest go to a
// memory driver. It has no optional interfaces.
type script struct {
	driver.Driver
	mu          sync.Mutex
	calls       []string
	tryClaim    func(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error)
	extend      func(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error)
	subscribe   func(ctx context.Context, key string, wake func()) error
	unsubscribe func(key string)
	get         func(ctx context.Context, key string) ([]byte, error)
	release     func(ctx context.Context, l driver.Lease) error
}

func newScript(t *testing.T) *script {
	m, err := memory.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &script{Driver: m.Driver()}
}

func (s *script) note(call string) {
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
}

func (s *script) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.calls...)
}

func (s *script) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	s.note("claim")
	if s.tryClaim != nil {
		return s.tryClaim(ctx, key, holder, ttl)
	}
	return s.Driver.TryClaim(ctx, key, holder, ttl)
}

func (s *script) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	s.note("extend")
	if s.extend != nil {
		return s.extend(ctx, l, ttl)
	}
	return s.Driver.Extend(ctx, l, ttl)
}

func (s *script) Subscribe(ctx context.Context, key string, wake func()) error {
	s.note("subscribe")
	if s.subscribe != nil {
		return s.subscribe(ctx, key, wake)
	}
	return s.Driver.Subscribe(ctx, key, wake)
}

func (s *script) Unsubscribe(key string) {
	s.note("unsubscribe")
	if s.unsubscribe != nil {
		s.unsubscribe(key)
		return
	}
	s.Driver.Unsubscribe(key)
}

func (s *script) Get(ctx context.Context, key string) ([]byte, error) {
	s.note("get")
	if s.get != nil {
		return s.get(ctx, key)
	}
	return s.Driver.Get(ctx, key)
}

func (s *script) Release(ctx context.Context, l driver.Lease) error {
	s.note("release")
	if s.release != nil {
		return s.release(ctx, l)
	}
	return s.Driver.Release(ctx, l)
}

func (s *script) Features() driver.Features {
	f := s.Driver.Features()
	f.MaxValueLen, f.Broadcast = 100, false
	return f
}

// Everything the Client refuses, it refuses before any I/O.
func TestRefusedBeforeIO(t *testing.T) {
	ctx := context.Background()
	m, _ := memory.New(nil, nil)
	d, n := countdriver.Wrap(m.Driver(), nil, countdriver.Options{})
	c := claim.NewClient(limited{d}, nil)
	defer c.Close()
	l := claim.Lease{Key: "k", Holder: "h", Token: 1, TTL: time.Second, Deadline: time.Now().Add(-time.Millisecond)}
	live := l
	live.Deadline = time.Now().Add(time.Hour)
	big := make([]byte, 101)
	for _, k := range []string{"", "\x00stampede:topic:x"} {
		if _, err := c.TryClaim(ctx, k, time.Second); !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("TryClaim(%q): %v, want ErrInvalidKey", k, err)
		}
		if err := c.Set(ctx, k, nil, 0); !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("Set(%q): %v, want ErrInvalidKey", k, err)
		}
	}
	for name, err := range map[string]error{
		"TryClaim ttl 0":       second(c.TryClaim(ctx, "k", 0)),
		"Acquire ttl -1":       second(c.Acquire(ctx, "k", -1)),
		"Extend ttl 0":         second(c.Extend(ctx, live, 0)),
		"Set negative ttl":     c.Set(ctx, "k", nil, -1),
		"Commit negative ttl":  c.Commit(ctx, live, nil, -1),
		"GetOrAcquire ttl 0":   second(c.GetOrAcquire(ctx, "k", 0, nil)),
		"TryClaimRead ttl 0":   func() error { _, _, _, err := c.TryClaimRead(ctx, "k", 0); return err }(),
		"CommitRelease big":    c.CommitRelease(ctx, live, big, 0),
		"Commit past deadline": c.Commit(ctx, l, []byte("v"), 0),
		"Extend past deadline": second(c.Extend(ctx, l, time.Second)),
		"CommitRelease past":   c.CommitRelease(ctx, l, []byte("v"), 0),
		"Set big":              c.Set(ctx, "k", big, 0),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := c.Set(ctx, "k", big, 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set of 101 bytes (limit 100): %v, want ErrTooLarge", err)
	}
	if err := c.Commit(ctx, l, nil, 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit past the local deadline: %v, want ErrLost", err)
	}
	dead, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Get(dead, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a done context: %v", err)
	}
	if got := n.Total(); got != 0 {
		t.Errorf("%d driver calls for refused operations, want 0", got)
	}
	c.Close()
	if err := c.Set(ctx, "k", nil, 0); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("Set after Close: %v", err)
	}
	if got := n.Total(); got != 0 {
		t.Errorf("%d driver calls after Close, want 0", got)
	}
}

func second[T any](_ T, err error) error { return err }

// limited declares a 100-byte value limit.
type limited struct{ driver.Driver }

func (l limited) Features() driver.Features {
	f := l.Driver.Features()
	f.MaxValueLen = 100
	return f
}

// The Client stamps a lease: its key, the holder it chose, and a Deadline
// from the clock read before the request, however slow the reply.
func TestLeaseStamp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		var holders []string
		s.tryClaim = func(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
			holders = append(holders, holder)
			time.Sleep(300 * time.Millisecond) // a slow reply
			return driver.Lease{Key: "wrong", Holder: "wrong", Token: 7, TTL: ttl + time.Second}, nil
		}
		c := claim.NewClient(s, nil)
		defer c.Close()
		start := time.Now()
		l, err := c.TryClaim(context.Background(), "k", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if l.Key != "k" || l.Holder != holders[0] || len(l.Holder) < 16 || l.Token != 7 {
			t.Errorf("lease %+v: want key k, the holder passed to the driver, token 7", l)
		}
		if want := start.Add(2 * time.Second); !l.Deadline.Equal(want) {
			t.Errorf("Deadline %s after the call started, want the granted TTL (2s): taken before the request", l.Deadline.Sub(start))
		}
		l2, _ := c.TryClaim(context.Background(), "k2", time.Second)
		if l2.Holder == l.Holder {
			t.Error("two leases share a holder ID")
		}
	})
}

func TestErrorFormat(t *testing.T) {
	s := newScript(t)
	s.tryClaim = func(context.Context, string, string, time.Duration) (driver.Lease, error) {
		return driver.Lease{}, &driver.HeldError{Remaining: 1500 * time.Millisecond}
	}
	c := claim.NewClient(s, nil)
	defer c.Close()
	_, err := c.TryClaim(context.Background(), "k", time.Second)
	var he *claim.HeldError
	if !errors.As(err, &he) || he.Key != "k" || !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim of a held key: %v", err)
	}
	if got, want := err.Error(), `claim: claim "k": held by another holder (1.5s left)`; got != want {
		t.Errorf("error %q, want %q", got, want)
	}
	_, err = c.Get(context.Background(), strings.Repeat("x", 1000))
	if !errors.Is(err, claim.ErrNotFound) || len(err.Error()) > 200 {
		t.Errorf("Get of a long absent key: %v (want ErrNotFound, the key shortened)", err)
	}
}

// One driver subscription per key, however many subscribers; joining one
// still pending waits for it; the last one out drops it, once.
func TestOneSubscriptionPerKey(t *testing.T) {
	s := newScript(t)
	confirm := make(chan struct{})
	var unsubs atomic.Int32
	s.subscribe = func(ctx context.Context, key string, wake func()) error {
		<-confirm
		return s.Driver.Subscribe(ctx, key, wake)
	}
	s.unsubscribe = func(key string) {
		unsubs.Add(1)
		s.Driver.Unsubscribe(key)
	}
	c := claim.NewClient(s, nil)
	defer c.Close()
	ctx := context.Background()
	subs := make(chan *claim.Subscription, 20)
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub, err := c.Subscribe(ctx, "k")
			if err != nil {
				t.Error(err)
				return
			}
			subs <- sub
		}()
	}
	time.Sleep(20 * time.Millisecond)
	if len(subs) != 0 {
		t.Fatal("a subscriber returned before the substrate confirmed the subscription")
	}
	close(confirm)
	wg.Wait()
	close(subs)
	var all []*claim.Subscription
	for sub := range subs {
		all = append(all, sub)
	}
	if n := countCalls(s.log(), "subscribe"); n != 1 || c.Subscriptions() != 1 {
		t.Errorf("%d driver subscriptions (%d live) for 20 subscribers of one key, want 1", n, c.Subscriptions())
	}
	if err := c.Notify(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	for i, sub := range all {
		select {
		case <-sub.C():
		case <-time.After(5 * time.Second):
			t.Fatalf("subscriber %d not woken", i)
		}
	}
	for _, sub := range all[1:] {
		sub.Close()
	}
	if unsubs.Load() != 0 {
		t.Error("the substrate subscription was dropped while a subscriber remained")
	}
	all[0].Close()
	all[0].Close()
	if unsubs.Load() != 1 || c.Subscriptions() != 0 {
		t.Errorf("%d Unsubscribe calls after the last subscriber left (%d live), want 1 (0)", unsubs.Load(), c.Subscriptions())
	}
}

// A subscriber that joins a pending subscription and leaves before it is
// confirmed gets its context's error; the substrate subscription is made
// once and dropped once, when the last subscriber leaves.
func TestLeaveWhilePending(t *testing.T) {
	s := newScript(t)
	confirm := make(chan struct{})
	var unsubs atomic.Int32
	s.subscribe = func(ctx context.Context, key string, wake func()) error {
		<-confirm
		return nil
	}
	s.unsubscribe = func(string) { unsubs.Add(1) }
	c := claim.NewClient(s, nil)
	defer c.Close()
	first := make(chan *claim.Subscription, 1)
	go func() {
		sub, err := c.Subscribe(context.Background(), "k")
		if err != nil {
			t.Error(err)
		}
		first <- sub
	}()
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := c.Subscribe(ctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("joiner that left while pending: %v, want its context's error", err)
	}
	close(confirm)
	sub := <-first
	if n := countCalls(s.log(), "subscribe"); n != 1 {
		t.Errorf("%d driver subscriptions, want 1", n)
	}
	if unsubs.Load() != 0 {
		t.Error("the joiner's leaving dropped the first subscriber's subscription")
	}
	sub.Close()
	if unsubs.Load() != 1 {
		t.Errorf("%d Unsubscribe calls after the last subscriber left, want 1", unsubs.Load())
	}
}

func countCalls(calls []string, name string) int {
	n := 0
	for _, c := range calls {
		if c == name {
			n++
		}
	}
	return n
}

// Acquire claims first, then subscribes, then claims again: a release
// between the first claim and the subscription is not lost. With the
// holder's remaining lease unknown it re-checks at least every second,
// never waiting a whole long TTL.
func TestAcquireOrderAndUnknownRemaining(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		var claims atomic.Int32
		s.tryClaim = func(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
			if claims.Add(1) <= 6 {
				return driver.Lease{}, &driver.HeldError{} // remaining unknown
			}
			return s.Driver.TryClaim(ctx, key, holder, ttl)
		}
		c := claim.NewClient(s, nil)
		defer c.Close()
		start := time.Now()
		l, err := c.Acquire(context.Background(), "k", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took > 6*time.Second {
			t.Errorf("Acquire took %s for 6 held answers with the remaining lease unknown: want at most 1s between re-checks", took)
		}
		if got := s.log(); len(got) < 3 || got[0] != "claim" || got[1] != "subscribe" || got[2] != "claim" {
			t.Errorf("calls %v: want claim, subscribe, claim, ...", got)
		}
		_ = c.Release(context.Background(), l)
	})
}

// With the holder's remaining lease known, Acquire waits for it (or a
// wake-up), not less.
func TestAcquireWaitsForTheHolder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		var at []time.Duration
		start := time.Now()
		s.tryClaim = func(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
			at = append(at, time.Since(start))
			if len(at) < 3 {
				return driver.Lease{}, &driver.HeldError{Remaining: 3 * time.Second}
			}
			return s.Driver.TryClaim(ctx, key, holder, ttl)
		}
		c := claim.NewClient(s, nil)
		defer c.Close()
		if _, err := c.Acquire(context.Background(), "k", time.Second); err != nil {
			t.Fatal(err)
		}
		if len(at) != 3 || at[2] < 3*time.Second || at[2] > 3*time.Second+100*time.Millisecond {
			t.Errorf("claims at %v: want the retry when the holder's 3s lease ends", at)
		}
	})
}

// KeepAlive renews every TTL/3, stops at the first ErrLost (no retry),
// and cancels its context with a cause wrapping ErrLost.
func TestKeepAliveSchedule(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		var renewals []time.Duration
		start := time.Now()
		s.extend = func(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
			renewals = append(renewals, time.Since(start))
			if len(renewals) == 4 {
				return driver.Lease{}, driver.ErrLost
			}
			return s.Driver.Extend(ctx, l, ttl)
		}
		c := claim.NewClient(s, nil)
		defer c.Close()
		l, err := c.TryClaim(context.Background(), "k", 3*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		k := c.KeepAlive(context.Background(), l, nil)
		<-k.Lost()
		time.Sleep(10 * time.Second)
		k.Stop()
		want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second}
		if len(renewals) != len(want) {
			t.Fatalf("renewals at %v, want %v (every TTL/3, none after ErrLost)", renewals, want)
		}
		for i := range want {
			if renewals[i] != want[i] {
				t.Errorf("renewal %d at %s, want %s", i, renewals[i], want[i])
			}
		}
		if cause := context.Cause(k.Context()); !errors.Is(cause, claim.ErrLost) || !errors.Is(k.Err(), claim.ErrLost) {
			t.Errorf("after ErrLost: cause %v, Err %v", cause, k.Err())
		}
	})
}

// Without driver.ClaimReader, TryClaimRead is TryClaim and Get; if the Get
// fails, the lease is released, not leaked.
func TestClaimReadFallback(t *testing.T) {
	ctx := context.Background()
	s := newScript(t)
	c := claim.NewClient(s, nil)
	defer c.Close()
	if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	l, v, found, err := c.TryClaimRead(ctx, "k", time.Minute)
	if err != nil || !found || string(v) != "v" {
		t.Fatalf("TryClaimRead = %q, %v, %v", v, found, err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	s.get = func(context.Context, string) ([]byte, error) { return nil, errors.New("read failed") }
	if _, _, _, err := c.TryClaimRead(ctx, "k", time.Minute); err == nil {
		t.Fatal("TryClaimRead with a failing read succeeded")
	}
	s.get = nil
	if l, err := c.TryClaim(ctx, "k", time.Minute); err != nil {
		t.Errorf("the lease of a failed TryClaimRead was not released: %v", err)
	} else {
		_ = c.Release(ctx, l)
	}
}

// GetOrAcquire: a stored value, or a lease; a value committed between the
// read and the claim is adopted (the lease released); a waiter gets the
// holder's value when it is released.
func TestGetOrAcquire(t *testing.T) {
	ctx := context.Background()
	a, b := backendtest.MemoryPair(t, nil)
	got, err := a.GetOrAcquire(ctx, "k", time.Minute, nil)
	if err != nil || got.Found || got.Waited {
		t.Fatalf("free key: %+v, %v; want a lease", got, err)
	}
	done := make(chan claim.Got, 1)
	go func() {
		g, err := b.GetOrAcquire(ctx, "k", time.Minute, nil)
		if err != nil {
			t.Error(err)
		}
		done <- g
	}()
	time.Sleep(20 * time.Millisecond)
	if err := a.CommitRelease(ctx, got.Lease, []byte("loaded"), 0); err != nil {
		t.Fatal(err)
	}
	if g := <-done; !g.Found || !g.Waited || string(g.Value) != "loaded" {
		t.Errorf("waiter: %+v; want the holder's value, Waited", g)
	}
	// Accept refuses the stored value: the caller gets the lease.
	g, err := b.GetOrAcquire(ctx, "k", time.Minute, &claim.GetOrAcquireOptions{Accept: func(v []byte) bool { return string(v) != "loaded" }})
	if err != nil || g.Found {
		t.Fatalf("refused value: %+v, %v; want a lease", g, err)
	}
	_ = b.Release(ctx, g.Lease)
	// SkipGet with a value present: adopted at the claim, lease released.
	g, err = b.GetOrAcquire(ctx, "k", time.Minute, &claim.GetOrAcquireOptions{SkipGet: true})
	if err != nil || !g.Found || string(g.Value) != "loaded" {
		t.Fatalf("adopted at the claim: %+v, %v", g, err)
	}
	if l, err := a.TryClaim(ctx, "k", time.Minute); err != nil {
		t.Errorf("the lease of an adopted value was not released: %v", err)
	} else {
		_ = a.Release(ctx, l)
	}
}

// Without driver.CommitReleaser, CommitRelease is Commit then Release.
func TestCommitReleaseFallback(t *testing.T) {
	ctx := context.Background()
	s := newScript(t)
	c := claim.NewClient(s, nil)
	defer c.Close()
	l, err := c.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := c.CommitRelease(ctx, l, []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	<-sub.C()
	if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("Get = %q, %v", v, err)
	}
	if err := c.CommitRelease(ctx, l, []byte("again"), 0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("second CommitRelease: %v, want ErrLost", err)
	}
}

func TestAs(t *testing.T) {
	c, _ := memory.New(nil, nil)
	defer c.Close()
	var x *int
	if c.As(&x) {
		t.Error("As succeeded on a driver without a native client")
	}
	if c.Driver() == nil {
		t.Error("Driver() is nil")
	}
}

// A subscription's first caller whose context ends while the substrate
// subscription is being made returns its own error; callers that joined
// it meanwhile still get a live subscription (the subscription is made
// again for them), not the first caller's cancellation.
func TestSubscribeCreatorCancelled(t *testing.T) {
	m, _ := memory.New(nil, nil)
	started := make(chan struct{})
	release := make(chan struct{})
	var calls atomic.Int32
	s := &script{Driver: m.Driver()}
	s.subscribe = func(ctx context.Context, key string, wake func()) error {
		if calls.Add(1) == 1 {
			close(started)
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return m.Driver().Subscribe(ctx, key, wake)
	}
	c := claim.NewClient(s, nil)
	defer c.Close()
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := c.Subscribe(ctx1, "k")
		first <- err
	}()
	<-started
	second := make(chan error, 1)
	var sub *claim.Subscription
	go func() {
		var err error
		sub, err = c.Subscribe(context.Background(), "k")
		second <- err
	}()
	time.Sleep(20 * time.Millisecond) // the second joins the pending subscription
	cancel1()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Errorf("first caller: %v, want its own context's error", err)
	}
	if err := <-second; err != nil {
		t.Fatalf("second caller got %v: the first caller's cancellation", err)
	}
	defer sub.Close()
	if err := c.Notify(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sub.C():
	case <-time.After(5 * time.Second):
		t.Fatal("the second caller's subscription is not live")
	}
}
