package flight

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"
)

// A herd on a key whose loader fails: the holder publishes the failure,
// every waiting process answers with it at once (no process takes over
// and loads again), and so does every process that asks within ErrorTTL,
// from L2 and then from L1. The holder's own callers get the loader's
// error itself.
func TestErrorTravels(t *testing.T) {
	for _, slow := range []bool{false, true} {
		t.Run(fmt.Sprint("slow=", slow), func(t *testing.T) { errorTravels(t, slow) })
	}
}

func errorTravels(t *testing.T, slow bool) {
	ctx := context.Background()
	f := newFleet(t)
	f.slow = slow
	const procs, callers = 8, 50
	var loads atomic.Int64
	gate := make(chan struct{})
	load := func(context.Context, string) (string, error) {
		loads.Add(1)
		<-gate
		return "", errTest
	}
	opt := &Options[string]{ErrorTTL: time.Hour}
	caches := make([]*Cache[string], procs)
	for i := range caches {
		caches[i], _ = newCache(f, opt)
	}
	type answer struct {
		proc int
		r    Result[string]
		err  error
	}
	answers := make(chan answer, procs*callers)
	var wg sync.WaitGroup
	for i, c := range caches {
		for range callers {
			wg.Go(func() {
				r, err := c.Fetch(ctx, "k", load)
				answers <- answer{i, r, err}
			})
		}
	}
	// Every process is in: the holder's callers on its flight, the other
	// processes waiting for the holder.
	eventually(t, "every caller joined", func() bool {
		var st Stats
		for _, c := range caches {
			s := c.Stats()
			st.Coalesced += s.Coalesced
			st.Waits += s.Waits
		}
		return st.Coalesced == procs*(callers-1) && st.Waits == procs-1
	})
	close(gate)
	wg.Wait()
	close(answers)

	holder := -1
	for a := range answers {
		var re *RemoteError
		switch {
		case errors.As(a.err, &re):
			if re.Text != errTest.Error() || re.Key != "k" || re.TimedOut || errors.Is(a.err, errTest) {
				t.Fatalf("process %d: %#v, want the holder's text only", a.proc, re)
			}
			if !errors.Is(a.err, ErrRemoteLoad) || a.r.Source != SourceRemote || a.r.Value != "" {
				t.Fatalf("process %d: %v from %v", a.proc, a.err, a.r.Source)
			}
		case errors.Is(a.err, errTest):
			if holder != -1 && holder != a.proc {
				t.Fatalf("processes %d and %d both loaded", holder, a.proc)
			}
			holder = a.proc
		default:
			t.Fatalf("process %d: %v (%v), want the loader's error or the holder's", a.proc, a.err, a.r.Source)
		}
	}
	if n := loads.Load(); n != 1 {
		t.Fatalf("%d loads, want 1", n)
	}
	var st Stats
	for _, c := range caches {
		s := c.Stats()
		st.Takeovers += s.Takeovers
		st.ErrorCommits += s.ErrorCommits
		st.ErrorHits += s.ErrorHits
		st.Errors += s.Errors
		st.LoadErrors += s.LoadErrors
	}
	if st.Takeovers != 0 || st.ErrorCommits != 1 || st.LoadErrors != 1 || st.Errors != procs*callers || st.ErrorHits != (procs-1)*callers {
		t.Fatalf("fleet stats %+v", st)
	}

	// A new process within ErrorTTL: the error from L2, then from L1; its
	// loader is never called.
	late, pl := newCache(f, opt)
	for i, want := range []Source{SourceL2, SourceL1} {
		r, err := late.Fetch(ctx, "K", load)
		if !errors.Is(err, ErrRemoteLoad) || r.Source != want {
			t.Fatalf("late ask %d: %v from %v, want ErrRemoteLoad from %v", i, err, r.Source, want)
		}
	}
	if _, err := late.Get(ctx, "k", load); !errors.Is(err, ErrRemoteLoad) {
		t.Fatalf("Get: %v", err)
	}
	if n := loads.Load(); n != 1 || pl.claims() != 0 {
		t.Fatalf("%d loads, %d claims by the late process; want 1 load, no claim", n, pl.claims())
	}
	// The holder's process: from L1, the loader's error still underneath.
	_, err := caches[holder].Get(ctx, "k", load)
	if !errors.Is(err, ErrRemoteLoad) || !errors.Is(err, errTest) {
		t.Fatalf("holder's process afterwards: %v", err)
	}
}

// ErrorTTL passed: the next caller loads again, once fleet-wide.
func TestErrorTTLExpires(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ttl := 30 * time.Millisecond
	var fail atomic.Bool
	fail.Store(true)
	ld := newLoader()
	load := func(ctx context.Context, key string) (string, error) {
		if fail.Load() {
			ld.mu.Lock()
			ld.calls[key]++
			ld.mu.Unlock()
			return "", errTest
		}
		return ld.load(ctx, key)
	}
	a, _ := newCache(f, &Options[string]{ErrorTTL: ttl})
	b, _ := newCache(f, &Options[string]{ErrorTTL: ttl})
	if _, err := a.Get(ctx, "k", load); !errors.Is(err, errTest) {
		t.Fatal(err)
	}
	fail.Store(false)
	time.Sleep(ttl + 10*time.Millisecond) // a lower bound: any longer sleep does too
	var wg sync.WaitGroup
	for _, c := range []*Cache[string]{a, b, a, b} {
		wg.Go(func() {
			if _, err := c.Get(ctx, "k", load); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := ld.count("k"); n != 2 {
		t.Fatalf("%d loads, want 2 (the failure, then one after ErrorTTL)", n)
	}
}

// Panics and timeouts travel too; the timeout matches ErrLoadTimeout in
// every process.
func TestErrorTravelsPanicAndTimeout(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		opt     Options[string]
		load    func(ctx context.Context, stop <-chan struct{}) (string, error)
		text    string
		timeout bool
	}{
		{"panic", Options[string]{}, func(context.Context, <-chan struct{}) (string, error) { panic("boom") }, "flight: loader panicked: boom", false},
		{"timeout", Options[string]{LoadTimeout: 20 * time.Millisecond}, func(_ context.Context, stop <-chan struct{}) (string, error) {
			<-stop // ignores its context
			return "late", nil
		}, "flight: load timed out after 20ms", true},
		{"deadline", Options[string]{}, func(context.Context, <-chan struct{}) (string, error) {
			return "", fmt.Errorf("db: %w", context.DeadlineExceeded)
		}, "db: context deadline exceeded", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t)
			stop := make(chan struct{})
			defer close(stop)
			var loads atomic.Int64
			opt := tc.opt
			load := func(ctx context.Context, _ string) (string, error) {
				loads.Add(1)
				return tc.load(ctx, stop)
			}
			a, _ := newCache(f, &opt)
			b, _ := newCache(f, &opt)
			_, aerr := a.Get(ctx, "k", load)
			_, berr := b.Get(ctx, "k", load)
			var re *RemoteError
			if !errors.As(berr, &re) || re.Text != tc.text || re.TimedOut != tc.timeout || re.Timeout() != tc.timeout {
				t.Fatalf("other process: %v (%#v), want text %q, timed out %v", berr, re, tc.text, tc.timeout)
			}
			if errors.Is(berr, ErrLoadTimeout) != tc.timeout {
				t.Fatalf("other process: %v; matches ErrLoadTimeout: %v, want %v", berr, !tc.timeout, tc.timeout)
			}
			if tc.name == "timeout" && !errors.Is(aerr, ErrLoadTimeout) {
				t.Fatalf("holder: %v", aerr)
			}
			if n := loads.Load(); n != 1 {
				t.Fatalf("%d loads, want 1", n)
			}
		})
	}
}

// What is not published: a not-found (NegativeTTL decides), a load ended
// by Close, a failed refresh of a value still served stale, and nothing
// with ErrorTTL off.
func TestErrorNotPublished(t *testing.T) {
	ctx := context.Background()
	notFound := func(context.Context, string) (string, error) { return "", fmt.Errorf("nobody: %w", ErrNotFound) }
	failing := func(context.Context, string) (string, error) { return "", errTest }

	t.Run("not found", func(t *testing.T) {
		f := newFleet(t)
		a, p := newCache(f, &Options[string]{})
		if _, err := a.Get(ctx, "k", notFound); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if _, err := p.Get(ctx, "default:k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("L2 after a not-found without NegativeTTL: %v, want nothing", err)
		}
	})
	t.Run("off", func(t *testing.T) {
		f := newFleet(t)
		a, p := newCache(f, &Options[string]{ErrorTTL: -1})
		if _, err := a.Get(ctx, "k", failing); !errors.Is(err, errTest) {
			t.Fatal(err)
		}
		if _, err := p.Get(ctx, "default:k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("L2 with ErrorTTL off: %v, want nothing", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		f := newFleet(t)
		started := make(chan struct{})
		load := func(ctx context.Context, _ string) (string, error) {
			close(started)
			<-ctx.Done()
			return "", ctx.Err()
		}
		a, p := newCache(f, &Options[string]{})
		done := make(chan error, 1)
		go func() {
			_, err := a.Get(ctx, "k", load)
			done <- err
		}()
		<-started
		a.Close()
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Fatalf("caller of a closed Cache: %v", err)
		}
		if _, err := p.Get(ctx, "default:k"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("L2 after Close: %v, want nothing", err)
		}
		released(t, f, "default:k")
	})
	t.Run("stale value kept", func(t *testing.T) {
		f := newFleet(t)
		var fail atomic.Bool
		load := func(context.Context, string) (string, error) {
			if fail.Load() {
				return "", errTest
			}
			return "old", nil
		}
		opt := &Options[string]{TTL: 20 * time.Millisecond, TTLJitter: -1, StaleTTL: time.Hour}
		a, _ := newCache(f, opt)
		fetchOK(t, a, ctx, "k", load)
		fail.Store(true)
		time.Sleep(30 * time.Millisecond) // past the TTL: a lower bound
		// A Fresh caller waits for the refresh, and gets its error.
		if _, err := a.Fetch(ctx, "k", load, WithPolicy[string](Fresh)); !errors.Is(err, errTest) {
			t.Fatalf("Fresh caller: %v, want the loader's error", err)
		}
		// The stale value is still served, here and elsewhere.
		if r := fetchOK(t, a, ctx, "k", load); r.Value != "old" || r.Source != SourceStale {
			t.Fatalf("after the failed refresh: %q from %v", r.Value, r.Source)
		}
		b, _ := newCache(f, opt)
		if r := fetchOK(t, b, ctx, "k", load); r.Value != "old" {
			t.Fatalf("another process: %q from %v", r.Value, r.Source)
		}
		idle(t, a)
		idle(t, b)
		if st := a.Stats(); st.ErrorCommits != 0 {
			t.Fatalf("stats %+v: an error replaced the stale value", st)
		}
	})
}

// The published text is cut to 512 bytes on a character boundary.
func TestErrorTextBounded(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	long := strings.Repeat("é", 1000) // 2000 bytes
	load := func(context.Context, string) (string, error) { return "", errors.New(long) }
	a, _ := newCache(f, &Options[string]{})
	b, _ := newCache(f, &Options[string]{})
	a.Get(ctx, "k", load)
	_, err := b.Get(ctx, "k", load)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("got %v", err)
	}
	if len(re.Text) > maxErrorText || !utf8.ValidString(re.Text) || !strings.HasPrefix(long, strings.TrimSuffix(re.Text, "…")) {
		t.Fatalf("text of %d bytes (valid UTF-8: %v): %.40q…", len(re.Text), utf8.ValidString(re.Text), re.Text)
	}
}

// A published error lasts no longer than the reader's own ErrorTTL,
// whatever its envelope says; a reader with ErrorTTL off loads.
func TestErrorTTLReaderBound(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	ld := newLoader()
	short, p := newCache(f, &Options[string]{ErrorTTL: 20 * time.Millisecond})
	off, _ := newCache(f, &Options[string]{ErrorTTL: -1})
	// An error entry written as if fresh for an hour.
	forever := appendEnvelope(nil, envelope{failed: true, written: time.Now(), fresh: time.Hour, schema: "string", payload: []byte("stuck")})
	for _, k := range []string{"a", "b"} {
		if err := p.Set(ctx, "default:"+k, forever, 0); err != nil {
			t.Fatal(err)
		}
	}
	var re *RemoteError
	if _, err := short.Get(ctx, "a", ld.load); !errors.As(err, &re) || re.Text != "stuck" || re.Key != "a" {
		t.Fatalf("got %v, want the published error", err)
	}
	time.Sleep(30 * time.Millisecond) // past the reader's ErrorTTL: a lower bound
	if v, err := short.Get(ctx, "a", ld.load); err != nil || v != "v1:a" {
		t.Fatalf("after the reader's ErrorTTL: %q, %v; want a load", v, err)
	}
	if v, err := off.Get(ctx, "b", ld.load); err != nil || v != "v2:b" {
		t.Fatalf("ErrorTTL off: %q, %v; want a load", v, err)
	}
}
