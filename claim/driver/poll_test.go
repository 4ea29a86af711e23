package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func TestBackoffBounds(t *testing.T) {
	const lo, hi = 2 * time.Millisecond, 50 * time.Millisecond
	now := time.Unix(1000, 0)
	for _, f := range []float64{0, 0.25, 0.5, 0.999999, -1, 1, 7} {
		b := Backoff{Min: lo, Max: hi, Rand: func() float64 { return f }}
		cur := lo
		for i := 0; i < 20; i++ {
			d, cut := b.Next(now, time.Time{})
			if cut {
				t.Fatalf("rand %v step %d: cut short with no expiry", f, i)
			}
			if d < cur/2 || d > cur {
				t.Fatalf("rand %v step %d: sleep %s outside [%s, %s]", f, i, d, cur/2, cur)
			}
			if d < lo/2 || d > hi {
				t.Fatalf("rand %v step %d: sleep %s outside [Min/2, Max]", f, i, d)
			}
			cur = min(2*cur, hi)
		}
		b.Reset()
		if d, _ := b.Next(now, time.Time{}); d > lo {
			t.Fatalf("rand %v: after Reset, sleep %s > Min", f, d)
		}
	}
	// The exact sequence with rand 0: half of Min, doubling, capped.
	b := Backoff{Min: lo, Max: hi, Rand: func() float64 { return 0 }}
	want := []time.Duration{1, 2, 4, 8, 16, 25, 25}
	for i, w := range want {
		if d, _ := b.Next(now, time.Time{}); d != w*time.Millisecond {
			t.Fatalf("step %d: %s, want %s", i, d, w*time.Millisecond)
		}
	}
}

func TestBackoffNeverPastExpiry(t *testing.T) {
	now := time.Unix(1000, 0)
	b := Backoff{Min: time.Second, Max: time.Hour, Rand: func() float64 { return 0.9 }}
	for i := 0; i < 30; i++ {
		exp := now.Add(time.Duration(i) * 100 * time.Millisecond)
		d, cut := b.Next(now, exp)
		if i > 0 && now.Add(d).After(exp) {
			t.Fatalf("step %d: sleep %s ends after the expiry %s away", i, d, exp.Sub(now))
		}
		if cut != (i > 0 && d == exp.Sub(now)) {
			t.Fatalf("step %d: cut = %v, sleep %s, expiry in %s", i, cut, d, exp.Sub(now))
		}
	}
	// An expiry in the past (or now) is ignored.
	b.Reset()
	if d, cut := b.Next(now, now.Add(-time.Second)); cut || d < 500*time.Millisecond {
		t.Fatalf("past expiry: sleep %s, cut %v", d, cut)
	}
}

// fake is a substrate whose state the test sets.
type fake struct {
	mu      sync.Mutex
	token   string
	holder  string
	expires time.Time
	err     error
	reads   int
	readAt  []time.Time
	wakes   map[string]int
}

func (f *fake) read(ctx context.Context, key string) (PollState, error) {
	if err := ctx.Err(); err != nil {
		return PollState{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	f.readAt = append(f.readAt, time.Now())
	if f.err != nil {
		return PollState{}, f.err
	}
	return PollState{Token: f.token, Holder: f.holder, Expires: f.expires}, nil
}

func (f *fake) setHolder(token, holder string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token, f.holder = token, holder
}

func (f *fake) wake(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.wakes[key]++
}

func (f *fake) waker(key string) func() { return func() { f.wake(key) } }

func (f *fake) set(token string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.token, f.err = token, err
}

func (f *fake) counts(key string) (reads, wakes int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads, f.wakes[key]
}

func newFake() *fake { return &fake{token: "a", wakes: map[string]int{}} }

func TestPollerWakesOnChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		p := NewPoller(f.read, &PollOptions{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond})
		defer p.Close()
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err != nil {
			t.Fatal(err)
		}
		if r, _ := f.counts("k"); r != 1 {
			t.Fatalf("Subscribe returned after %d reads, want 1 (the initial state)", r)
		}
		// Unchanged state: no wake-up, and the read rate settles at the cap.
		time.Sleep(10 * time.Second)
		r, w := f.counts("k")
		if w != 0 {
			t.Fatalf("%d wake-ups without a change", w)
		}
		// In 10 s: at least one read per Max, at most one per Max/2 plus
		// the ramp-up from Min.
		if r < 10*20 || r > 10*40+10 {
			t.Fatalf("%d reads in 10 s with Max 50 ms, want within [200, 410]", r)
		}
		f.set("b", nil)
		time.Sleep(51 * time.Millisecond) // one full interval at the cap
		if _, w := f.counts("k"); w != 1 {
			t.Fatalf("%d wake-ups after one change, want 1", w)
		}
		time.Sleep(time.Second)
		if _, w := f.counts("k"); w != 1 {
			t.Fatalf("%d wake-ups after one change and a second of quiet, want 1", w)
		}
		// A second change is seen too.
		f.set("c", nil)
		time.Sleep(51 * time.Millisecond)
		if _, w := f.counts("k"); w != 2 {
			t.Fatalf("%d wake-ups after two changes, want 2", w)
		}
	})
}

func TestWakes(t *testing.T) {
	for _, c := range []struct {
		prev, next PollState
		want       bool
	}{
		{PollState{Token: "1"}, PollState{Token: "1"}, false},
		{PollState{Token: "1"}, PollState{Token: "1", Holder: "a"}, false}, // a claim on a free key
		{PollState{Token: "1", Holder: "a"}, PollState{Token: "1", Holder: "a"}, false},
		{PollState{Token: "1", Holder: "a"}, PollState{Token: "1"}, true},              // expired (or released)
		{PollState{Token: "1", Holder: "a"}, PollState{Token: "1", Holder: "b"}, true}, // taken over
		{PollState{Token: "1"}, PollState{Token: "2"}, true},                           // released or notified
		{PollState{Token: "1"}, PollState{Token: "2", Holder: "b"}, true},              // released, claimed again
		{PollState{Token: "1", Holder: "a"}, PollState{Token: "2", Holder: "a"}, true}, // notified
	} {
		if got := Wakes(c.prev, c.next); got != c.want {
			t.Errorf("Wakes(%+v, %+v) = %v, want %v", c.prev, c.next, got, c.want)
		}
	}
}

// TestPollerIgnoresClaims: a holder appearing on a free key wakes nobody;
// its end, a takeover and a token change do.
func TestPollerIgnoresClaims(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		p := NewPoller(f.read, &PollOptions{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond})
		defer p.Close()
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err != nil {
			t.Fatal(err)
		}
		step := func(token, holder string, want int) {
			t.Helper()
			f.setHolder(token, holder)
			time.Sleep(time.Second)
			if _, w := f.counts("k"); w != want {
				t.Fatalf("after token %q holder %q: %d wake-ups, want %d", token, holder, w, want)
			}
		}
		step("a", "h1", 0) // claimed
		step("a", "", 1)   // expired
		step("a", "h2", 1) // claimed
		step("a", "h3", 2) // taken over
		step("b", "h3", 3) // notified
		step("c", "", 4)   // released
		step("c", "h4", 4) // claimed
	})
}

func TestPollerReadsAtExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		start := time.Now()
		f.expires = start.Add(7 * time.Millisecond)
		// Min and Max far longer than the lease: only the expiry can
		// bring the second read forward.
		p := NewPoller(f.read, &PollOptions{Min: time.Minute, Max: time.Hour})
		defer p.Close()
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		f.mu.Lock()
		at := append([]time.Time(nil), f.readAt...)
		f.mu.Unlock()
		if len(at) != 2 {
			t.Fatalf("%d reads, want 2 (subscribe, expiry)", len(at))
		}
		if got := at[1].Sub(start); got != 7*time.Millisecond {
			t.Fatalf("second read %s after start, want exactly at the expiry (7ms)", got)
		}
	})
}

func TestPollerErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		p := NewPoller(f.read, nil)
		defer p.Close()
		f.set("a", errors.New("down"))
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err == nil {
			t.Fatal("Subscribe with a failing read succeeded")
		}
		if p.Len() != 0 {
			t.Fatalf("failed Subscribe left %d loops", p.Len())
		}
		f.set("a", nil)
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err != nil {
			t.Fatal(err)
		}
		f.set("a", errors.New("down"))
		time.Sleep(5 * time.Second)
		if _, w := f.counts("k"); w != 1 {
			t.Fatalf("%d wake-ups during one failing streak, want 1", w)
		}
		// Recovery with the same state: nothing to report.
		f.set("a", nil)
		time.Sleep(time.Second)
		if _, w := f.counts("k"); w != 1 {
			t.Fatalf("%d wake-ups after recovering unchanged, want 1", w)
		}
		// A change hidden by failures wakes when reads succeed again.
		f.set("a", errors.New("down"))
		time.Sleep(time.Second)
		f.set("b", nil)
		time.Sleep(time.Second)
		if _, w := f.counts("k"); w != 3 {
			t.Fatalf("%d wake-ups, want 3 (two streaks, one change)", w)
		}
	})
}

func TestPollerUnsubscribeAndClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		p := NewPoller(f.read, nil)
		for _, k := range []string{"a", "b"} {
			if err := p.Subscribe(context.Background(), k, f.waker(k)); err != nil {
				t.Fatal(err)
			}
		}
		p.Unsubscribe("a")
		if p.Len() != 1 {
			t.Fatalf("Len = %d after one Unsubscribe, want 1", p.Len())
		}
		p.Close()
		synctest.Wait()
		r, _ := f.counts("")
		time.Sleep(10 * time.Second)
		if r2, _ := f.counts(""); r2 != r {
			t.Fatalf("%d reads after Close", r2-r)
		}
		if err := p.Subscribe(context.Background(), "c", f.waker("c")); !errors.Is(err, ErrClosed) {
			t.Fatalf("Subscribe after Close: %v, want ErrClosed", err)
		}
		p.Close() // idempotent
	})
}

// TestReadsInFlight: Unsubscribe lets a read in flight finish (aborted
// requests crash some emulators and waste the server's work); Close
// cancels it after a grace period.
func TestReadsInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		started := make(chan context.Context, 10)
		finish := make(chan struct{})
		first := true
		read := func(ctx context.Context, key string) (PollState, error) {
			if first { // Subscribe's own read
				first = false
				return PollState{Token: "a"}, nil
			}
			started <- ctx
			select {
			case <-finish:
				return PollState{Token: "a"}, nil
			case <-ctx.Done():
				return PollState{}, ctx.Err()
			}
		}
		p := NewPoller(read, &PollOptions{ReadTimeout: time.Hour})
		if err := p.Subscribe(context.Background(), "k", func() {}); err != nil {
			t.Fatal(err)
		}
		ctx := <-started
		p.Unsubscribe("k")
		synctest.Wait()
		if ctx.Err() != nil {
			t.Fatal("Unsubscribe aborted a read in flight")
		}
		close(finish)
		synctest.Wait()
		if len(started) != 0 {
			t.Fatal("the loop read again after Unsubscribe")
		}
		// Close: a read that does not finish is cancelled after the grace.
		finish = make(chan struct{})
		first = true
		p2 := NewPoller(read, &PollOptions{ReadTimeout: time.Hour})
		if err := p2.Subscribe(context.Background(), "k", func() {}); err != nil {
			t.Fatal(err)
		}
		ctx = <-started
		t0 := time.Now()
		p2.Close()
		if ctx.Err() == nil {
			t.Fatal("Close returned with a read still in flight")
		}
		if d := time.Since(t0); d != closeGrace {
			t.Fatalf("Close took %s, want the grace %s", d, closeGrace)
		}
		p.Close()
	})
}

// TestNoWakeAfterUnsubscribe: a change a read in flight sees when
// Unsubscribe runs wakes nobody once Unsubscribe has returned.
func TestNoWakeAfterUnsubscribe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake()
		p := NewPoller(f.read, &PollOptions{Min: time.Millisecond, Max: time.Millisecond})
		defer p.Close()
		if err := p.Subscribe(context.Background(), "k", f.waker("k")); err != nil {
			t.Fatal(err)
		}
		p.Unsubscribe("k")
		f.set("b", nil)
		time.Sleep(time.Second)
		if _, w := f.counts("k"); w != 0 {
			t.Fatalf("%d wake-ups after Unsubscribe returned", w)
		}
	})
}

// holdRounds runs rounds waits on p, each on a claim of the fake held
// for hold(i) after the waiter subscribed 1 ms into it, and returns the
// latency of each wake-up after the release and the reads of each wait.
// It runs in a synctest bubble.
func holdRounds(t *testing.T, f *fake, p *Poller, rounds int, hold func(i int) time.Duration) (lat []time.Duration, reads []int) {
	t.Helper()
	woke := make(chan time.Time, 1)
	for i := range rounds {
		key := "k"
		f.setHolder("claim"+string(rune('a'+i%26))+time.Duration(i).String(), "holder"+time.Duration(i).String())
		time.Sleep(time.Millisecond)
		r0, _ := f.counts(key)
		if err := p.Subscribe(context.Background(), key, func() {
			select {
			case woke <- time.Now():
			default:
			}
		}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(hold(i) - time.Millisecond)
		// A read due at this very instant goes first: the order of
		// goroutines woken at one instant is random, and the figures
		// compared (reads per second of waiting, learned against the
		// backoff alone) must not depend on it.
		synctest.Wait()
		released := time.Now()
		f.setHolder("free"+time.Duration(i).String(), "")
		at := <-woke
		r1, _ := f.counts(key)
		p.Unsubscribe(key)
		lat = append(lat, at.Sub(released))
		reads = append(reads, r1-r0)
		time.Sleep(10 * time.Millisecond)
	}
	return lat, reads
}

// TestPollerHoldEstimate: with claims held alike, a Poller that learned
// how long (the default) sees their ends within Min after a few rounds,
// reading no more often than the backoff alone; with hold times spread
// out, it is no slower and reads about as often as the backoff alone.
func TestPollerHoldEstimate(t *testing.T) {
	const lo, hi = 2 * time.Millisecond, 50 * time.Millisecond
	const rounds, warm = 30, holdSamples + 2
	run := func(t *testing.T, learn bool, hold func(int) time.Duration) (lat time.Duration, worst time.Duration, reads float64) {
		var lats []time.Duration
		var rs []int
		synctest.Test(t, func(t *testing.T) {
			f := newFake()
			p := NewPoller(f.read, &PollOptions{Min: lo, Max: hi, Rand: func() float64 { return 0.5 }, NoHoldEstimate: !learn})
			defer p.Close()
			lats, rs = holdRounds(t, f, p, rounds, hold)
		})
		var sum time.Duration
		n := 0
		for i := warm; i < rounds; i++ {
			sum += lats[i]
			worst = max(worst, lats[i])
			n += rs[i]
		}
		return sum / time.Duration(rounds-warm), worst, float64(n) / float64(rounds-warm)
	}
	for _, h := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		fixed := func(int) time.Duration { return h }
		bLat, bWorst, bReads := run(t, false, fixed)
		lLat, lWorst, lReads := run(t, true, fixed)
		t.Logf("hold %v: backoff alone: latency mean %v max %v, %.1f reads a wait; learned: mean %v max %v, %.1f reads", h, bLat, bWorst, bReads, lLat, lWorst, lReads)
		if lWorst > lo {
			t.Errorf("hold %v: a release seen %v after it, want within Min (%v) once learned", h, lWorst, lo)
		}
		if lReads > bReads {
			t.Errorf("hold %v: %.1f reads a wait, more than the backoff alone (%.1f)", h, lReads, bReads)
		}
		// The waits are shorter too: the reads per second of waiting
		// (the load on the server of a waiter always waiting) must not
		// rise either, beyond 1 %: at a 20 ms hold the learned waits
		// end 2.6 ms sooner with half a read fewer, which leaves the
		// rate 0.5 % above the backoff's (223 against 222 a second;
		// deterministic since holdRounds orders a read due at the
		// release's instant first, which it once did and once did not,
		// by the scheduler's choice).
		perSec := func(reads float64, lat time.Duration) float64 { return reads / (h - time.Millisecond + lat).Seconds() }
		if l, b := perSec(lReads, lLat), perSec(bReads, bLat); l > 1.01*b {
			t.Errorf("hold %v: %.0f reads per second of waiting, more than 1 %% above the backoff alone (%.0f)", h, l, b)
		}
	}
	// Spread: 200-400 ms, in a fixed pseudo-random order.
	spread := func(i int) time.Duration { return 200*time.Millisecond + time.Duration((i*7919)%201)*time.Millisecond }
	bLat, bWorst, bReads := run(t, false, spread)
	lLat, lWorst, lReads := run(t, true, spread)
	t.Logf("holds 200-400 ms: backoff alone: latency mean %v max %v, %.1f reads a wait; learned: mean %v max %v, %.1f reads", bLat, bWorst, bReads, lLat, lWorst, lReads)
	if lWorst > hi {
		t.Errorf("spread holds: a release seen %v after it, more than Max (%v)", lWorst, hi)
	}
	if lLat > bLat {
		t.Errorf("spread holds: mean latency %v, slower than the backoff alone (%v)", lLat, bLat)
	}
	if lReads > bReads+1 {
		t.Errorf("spread holds: %.1f reads a wait against %.1f for the backoff alone", lReads, bReads)
	}
}

// TestPollerCarriesValue: with a PollValueReader, a wake-up caused by a
// Token whose state carries a value passes it to SubscribeWithValue's wake
// (an empty value as empty, not nil), every other wake-up nil; the reader
// is asked for a value with the Token the previous read saw, never on the
// subscription's first read; Subscribe's wake still works.
func TestPollerCarriesValue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			mu     sync.Mutex
			st     = PollState{Token: "1"}
			sinces []string
			got    [][]byte
		)
		read := func(ctx context.Context, key, since string) (PollState, error) {
			if key != "k" {
				return PollState{Token: "p"}, nil
			}
			mu.Lock()
			defer mu.Unlock()
			sinces = append(sinces, since)
			out := st
			if !st.Valued || since == "" || since == st.Token {
				out.Value, out.Valued = nil, false
			}
			return out, nil
		}
		set := func(s PollState) {
			mu.Lock()
			st = s
			mu.Unlock()
		}
		p := NewValuePoller(read, &PollOptions{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond, NoHoldEstimate: true})
		defer p.Close()
		set(PollState{Token: "1", Value: []byte("old"), Valued: true})
		if err := p.SubscribeWithValue(context.Background(), "k", func(v []byte) {
			mu.Lock()
			got = append(got, v)
			mu.Unlock()
		}); err != nil {
			t.Fatal(err)
		}
		plain := 0
		if err := p.Subscribe(context.Background(), "p", func() { plain++ }); err != nil {
			t.Fatal(err)
		}
		step := func(s PollState) {
			set(s)
			time.Sleep(time.Second)
		}
		step(PollState{Token: "3", Value: []byte("v3"), Valued: true}) // a CommitRelease
		step(PollState{Token: "4"})                                    // a Release
		step(PollState{Token: "5", Value: []byte{}, Valued: true})     // an empty value committed
		step(PollState{Token: "5", Holder: "h"})                       // claimed: no wake-up
		step(PollState{Token: "5"})                                    // the claim ran out: a wake-up, no value
		mu.Lock()
		defer mu.Unlock()
		want := []string{"v3", "<nil>", "", "<nil>"}
		if len(got) != len(want) {
			t.Fatalf("%d wake-ups %q, want %d", len(got), got, len(want))
		}
		for i, v := range got {
			s := string(v)
			if v == nil {
				s = "<nil>"
			}
			if s != want[i] {
				t.Errorf("wake-up %d carried %q, want %s", i, s, want[i])
			}
		}
		if sinces[0] != "" {
			t.Errorf("the first read was asked for a value since %q, want none", sinces[0])
		}
		for _, s := range sinces[1:] {
			if s == "" {
				t.Errorf("a loop's read was asked with since \"\": %q", sinces)
				break
			}
		}
		if plain != 0 {
			t.Errorf("Subscribe's wake called %d times for a key nobody changed", plain)
		}
	})
}

// manyFake is a substrate of many keys for NewBatchPoller: each request
// takes a millisecond; it records the requests' sizes and how many were
// in flight at once.
type manyFake struct {
	mu       sync.Mutex
	token    map[string]string
	err      error
	requests int
	keyReads int
	largest  int
	inFlight int
	peak     int
	wakes    map[string]int
}

func (f *manyFake) readMany(ctx context.Context, keys, since []string) ([]PollState, error) {
	f.mu.Lock()
	f.requests++
	f.keyReads += len(keys)
	f.largest = max(f.largest, len(keys))
	f.inFlight++
	f.peak = max(f.peak, f.inFlight)
	f.mu.Unlock()
	time.Sleep(time.Millisecond)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inFlight--
	if f.err != nil {
		return nil, f.err
	}
	out := make([]PollState, len(keys))
	for i, k := range keys {
		out[i] = PollState{Token: f.token[k]}
	}
	return out, nil
}

// readOne is a request for one key (Subscribe's first read, and a loop's
// read sent alone).
func (f *manyFake) readOne(ctx context.Context, key, since string) (PollState, error) {
	sts, err := f.readMany(ctx, []string{key}, []string{since})
	if err != nil {
		return PollState{}, err
	}
	return sts[0], nil
}

func (f *manyFake) setAll(keys []string, token string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		f.token[k] = token
	}
	f.err = err
}

func (f *manyFake) woken(keys []string) (lo, hi int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lo = 1 << 30
	for _, k := range keys {
		lo, hi = min(lo, f.wakes[k]), max(hi, f.wakes[k])
	}
	return lo, hi
}

// TestBatchPollerGroupsReads: 300 keys' loops on a NewBatchPoller whose
// requests take 1 ms share at most pollSenders requests in flight, each
// of at most maxKeys keys, and every key is still read at least once per
// Max and woken once per change (and once per failing streak). Reads
// counts requests.
func TestBatchPollerGroupsReads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n, maxKeys = 300, 8
		f := &manyFake{token: map[string]string{}, wakes: map[string]int{}}
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprint("k", i)
		}
		f.setAll(keys, "a", nil)
		p := NewBatchPoller(f.readOne, f.readMany, maxKeys, &PollOptions{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond, NoHoldEstimate: true})
		defer p.Close()
		for _, k := range keys {
			if err := p.Subscribe(context.Background(), k, func() {
				f.mu.Lock()
				f.wakes[k]++
				f.mu.Unlock()
			}); err != nil {
				t.Fatal(err)
			}
		}
		// The loops alone from here (Subscribe's reads are done).
		f.mu.Lock()
		f.requests, f.keyReads, f.largest, f.peak = 0, 0, 0, f.inFlight
		f.mu.Unlock()
		reads0 := p.Reads()
		time.Sleep(10 * time.Second)
		f.mu.Lock()
		req, kr, largest, peak := f.requests, f.keyReads, f.largest, f.peak
		f.mu.Unlock()
		t.Logf("10 s: %d requests, %d key reads, largest %d keys, %d in flight at most", req, kr, largest, peak)
		if kr < n*10*20 {
			t.Errorf("%d key reads in 10 s, want at least %d (one per Max per key)", kr, n*10*20)
		}
		// Unbatched, every key read would be a request: at least 60,000.
		// Batched, at most pollSenders 1 ms requests are in flight.
		if req > pollSenders*10*1000+pollSenders {
			t.Errorf("%d requests in 10 s of 1 ms requests, want at most %d", req, pollSenders*10*1000)
		}
		if largest > maxKeys {
			t.Errorf("a request read %d keys, want at most %d", largest, maxKeys)
		}
		if peak > pollSenders {
			t.Errorf("%d requests in flight at once, want at most %d", peak, pollSenders)
		}
		if reads := p.Reads() - reads0; reads != uint64(req) {
			t.Errorf("Reads() = %d, want %d (the requests made)", reads, req)
		}
		if lo, hi := f.woken(keys); hi != 0 {
			t.Fatalf("woken %d–%d times without a change", lo, hi)
		}
		f.setAll(keys, "b", nil)
		time.Sleep(time.Second)
		if lo, hi := f.woken(keys); lo != 1 || hi != 1 {
			t.Fatalf("woken %d–%d times after one change, want 1", lo, hi)
		}
		// A failing streak wakes every key once; its end, with a change
		// hidden by it, once more.
		f.setAll(keys, "b", errors.New("down"))
		time.Sleep(time.Second)
		if lo, hi := f.woken(keys); lo != 2 || hi != 2 {
			t.Fatalf("woken %d–%d times after a failing streak, want 2", lo, hi)
		}
		f.setAll(keys, "c", nil)
		time.Sleep(time.Second)
		if lo, hi := f.woken(keys); lo != 3 || hi != 3 {
			t.Fatalf("woken %d–%d times after the streak ended with a change, want 3", lo, hi)
		}
	})
}

// TestBatchPollerLoneLoop: a key polled alone by a NewBatchPoller is read
// on its own schedule, as by NewPoller (no waiting for a batch).
func TestBatchPollerLoneLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &manyFake{token: map[string]string{"k": "a"}, wakes: map[string]int{}}
		p := NewBatchPoller(f.readOne, f.readMany, 64, &PollOptions{Min: 2 * time.Millisecond, Max: 50 * time.Millisecond, NoHoldEstimate: true})
		defer p.Close()
		if err := p.Subscribe(context.Background(), "k", func() {}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Second)
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.requests < 10*20 || f.requests > 10*40+10 || f.keyReads != f.requests {
			t.Fatalf("%d requests of %d key reads in 10 s with Max 50 ms, want within [200, 410], one key each", f.requests, f.keyReads)
		}
	})
}
