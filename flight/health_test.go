package flight

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// records is a slog.Handler that keeps every record's level and message.
type records struct {
	mu   sync.Mutex
	seen []slog.Record
}

func (h *records) Enabled(context.Context, slog.Level) bool { return true }

func (h *records) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen = append(h.seen, r.Clone())
	return nil
}

func (h *records) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *records) WithGroup(string) slog.Handler      { return h }

// count returns how many records of level with message msg were logged.
func (h *records) count(level slog.Level, msg string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.seen {
		if r.Level == level && r.Message == msg {
			n++
		}
	}
	return n
}

// attr returns the value of attribute key of the last record with msg.
func (h *records) attr(msg, key string) slog.Value {
	h.mu.Lock()
	defer h.mu.Unlock()
	var v slog.Value
	for _, r := range h.seen {
		if r.Message == msg {
			r.Attrs(func(a slog.Attr) bool {
				if a.Key == key {
					v = a.Value
				}
				return true
			})
		}
	}
	return v
}

const (
	msgDegraded  = "flight: backend degraded"
	msgRecovered = "flight: backend healthy again"
)

// healthLog records the Health changes a callback is given, and fails
// the test if the callback is ever run concurrently with itself.
type healthLog struct {
	t       testing.TB
	mu      sync.Mutex
	changes []Health
	in      atomic.Bool
	gate    chan struct{} // if non-nil, the first call waits for it
}

func (l *healthLog) on(h Health) {
	if !l.in.CompareAndSwap(false, true) {
		l.t.Error("OnHealthChange called concurrently with itself")
	}
	defer l.in.Store(false)
	l.mu.Lock()
	first := len(l.changes) == 0
	l.changes = append(l.changes, h)
	l.mu.Unlock()
	if first && l.gate != nil {
		<-l.gate
	}
}

func (l *healthLog) got() []Health {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Health(nil), l.changes...)
}

// A backend failing under many requests: one ERROR record when the Cache
// becomes degraded, one WARN when it recovers, whatever the number of
// failing calls in between; the callback sees each change once, in
// order; Stats shows the state, its class and cause.
func TestHealthTransitions(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	logs := &records{}
	hl := &healthLog{t: t}
	ld := newLoader()
	p := f.proc()
	opened := time.Now()
	c := openProcCache(t, p, &Options[string]{Logger: slog.New(logs), OnHealthChange: hl.on})

	st := c.Stats()
	if h := st.Health; h.State != Healthy || h.Err != nil || h.Since.Before(opened) || h.Since.After(time.Now()) {
		t.Fatalf("a new Cache: %+v, want healthy since New", h)
	}
	fetchOK(t, c, ctx, "before", ld.load)

	// An outage: 400 callers on 100 keys, each key a flight whose read of
	// L2 fails; every caller is answered (fail open).
	down := errors.New("connection refused")
	p.mem.setFault(down)
	failing := time.Now()
	storm := func(round string) {
		var wg sync.WaitGroup
		for k := range 100 {
			for range 4 {
				wg.Go(func() {
					if _, err := c.Get(ctx, fmt.Sprintf("%s %d", round, k), ld.load); err != nil {
						t.Errorf("fail open: %v", err)
					}
				})
			}
		}
		wg.Wait()
	}
	storm("outage")
	st = c.Stats()
	h := st.Health
	if h.State != Degraded || h.Class != claim.ErrUnavailable || !errors.Is(h.Err, claim.ErrUnavailable) || !errors.Is(h.Err, down) {
		t.Fatalf("during the outage: %+v, want degraded, unavailable, the driver's error", h)
	}
	if h.Since.Before(failing) || h.Failures != st.FailOpen || st.FailOpen < 100 {
		t.Fatalf("during the outage: %+v (since %v), %d flights failed open; want one failure per flight since the fault", h, failing, st.FailOpen)
	}
	if n := logs.count(slog.LevelError, msgDegraded); n != 1 {
		t.Fatalf("%d ERROR records %q for %d failed calls, want 1", n, msgDegraded, h.Failures)
	}
	if v := logs.attr(msgDegraded, "class").String(); v != "unavailable" {
		t.Fatalf("class attribute %q", v)
	}

	// Recovery: the next backend call that succeeds.
	p.mem.setFault(nil)
	recovering := time.Now()
	fetchOK(t, c, ctx, "after", ld.load)
	h = c.Stats().Health
	if h.State != Healthy || h.Err != nil || h.Since.Before(recovering) || h.Lasted <= 0 || h.Lasted > h.Since.Sub(failing) {
		t.Fatalf("after recovery: %+v", h)
	}
	storm("healthy") // many successful calls: no more records
	if n := logs.count(slog.LevelWarn, msgRecovered); n != 1 {
		t.Fatalf("%d WARN records %q, want 1", n, msgRecovered)
	}

	// A configuration error: returned to the callers, never loaded.
	p.mem.setFault(driver.Misconfigured(errors.New("WRONGPASS invalid username-password pair")))
	loads := ld.total.Load()
	var wg sync.WaitGroup
	for k := range 50 {
		wg.Go(func() {
			if _, err := c.Get(ctx, fmt.Sprint("config ", k), ld.load); !errors.Is(err, claim.ErrConfig) {
				t.Errorf("configuration error: got %v, want ErrConfig", err)
			}
		})
	}
	wg.Wait()
	if n := ld.total.Load(); n != loads {
		t.Fatalf("%d loads on a misconfigured backend", n-loads)
	}
	if h := c.Stats().Health; h.State != Degraded || h.Class != claim.ErrConfig || !errors.Is(h.Err, claim.ErrConfig) {
		t.Fatalf("misconfigured: %+v", h)
	}
	p.mem.setFault(nil)
	fetchOK(t, c, ctx, "fixed", ld.load)

	if n := logs.count(slog.LevelError, msgDegraded); n != 2 {
		t.Fatalf("%d ERROR records %q, want 2", n, msgDegraded)
	}
	if n := logs.count(slog.LevelWarn, msgRecovered); n != 2 {
		t.Fatalf("%d WARN records %q, want 2", n, msgRecovered)
	}
	c.Close() // waits for the callbacks queued
	got := hl.got()
	want := []struct {
		state HealthState
		class error
	}{{Degraded, claim.ErrUnavailable}, {Healthy, nil}, {Degraded, claim.ErrConfig}, {Healthy, nil}}
	if len(got) != len(want) {
		t.Fatalf("callback got %d changes, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].State != w.state || got[i].Class != w.class {
			t.Fatalf("change %d: %v, want %v (%v)", i, got[i], w.state, w.class)
		}
		if i > 0 && got[i].Since.Before(got[i-1].Since) {
			t.Fatalf("change %d since %v, before change %d's %v", i, got[i].Since, i-1, got[i-1].Since)
		}
	}
	if got[0].Failures != 1 {
		t.Fatalf("the first change: %+v, want the first failure", got[0])
	}
}

// The callback runs off the callers' path: while it is blocked, callers
// are answered and more changes are queued; it then gets them in order,
// one call at a time.
func TestHealthCallbackOffCallerPath(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	hl := &healthLog{t: t, gate: make(chan struct{})}
	p := f.proc()
	ld := newLoader()
	c := openProcCache(t, p, &Options[string]{OnHealthChange: hl.on})
	for i := range 3 {
		p.mem.setFault(errors.New("down"))
		fetchOK(t, c, ctx, fmt.Sprint("down ", i), ld.load) // fails open
		p.mem.setFault(nil)
		fetchOK(t, c, ctx, fmt.Sprint("up ", i), ld.load)
	}
	eventually(t, "the first change reached the callback", func() bool { return len(hl.got()) == 1 })
	close(hl.gate)
	c.Close()
	got := hl.got()
	if len(got) != 6 {
		t.Fatalf("callback got %d changes, want 6: %v", len(got), got)
	}
	for i, h := range got {
		if want := []HealthState{Degraded, Healthy}[i%2]; h.State != want {
			t.Fatalf("change %d: %v, want %v", i, h, want)
		}
	}
}

// Calls ended by their caller's context, answers such as "not found",
// and a wait ended by WaitTimeout say nothing of the backend.
func TestHealthIgnoresCallersAndAnswers(t *testing.T) {
	f := newFleet(t)
	logs := &records{}
	c, _ := newCache(f, &Options[string]{Logger: slog.New(logs), WaitTimeout: 20 * time.Millisecond})
	holder, _ := newCache(f, &Options[string]{})
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Invalidate(cancelled, "k"); err == nil {
		t.Fatal("Invalidate with a cancelled context succeeded")
	}
	if err := c.Invalidate(context.Background(), "k"); err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{})
	started := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		holder.Get(context.Background(), "held", func(context.Context, string) (string, error) {
			close(started)
			<-gate
			return "v", nil
		})
	}()
	<-started
	if _, err := c.Get(context.Background(), "held", func(context.Context, string) (string, error) { return "x", nil }); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("got %v, want ErrWaitTimeout", err)
	}
	close(gate)
	<-done
	if h := c.Stats().Health; h.State != Healthy || h.Lasted != 0 {
		t.Fatalf("health %+v, want healthy all along", h)
	}
	if n := logs.count(slog.LevelError, msgDegraded); n != 0 {
		t.Fatalf("%d degraded records", n)
	}
}
