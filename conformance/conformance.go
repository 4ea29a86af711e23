// Package conformance is the test suite every claim backend runs against
// its real server. It checks the contract of package claim/driver through
// a *claim.Client (mutual exclusion, fencing, expiry, stale holders,
// notification, topics, the store, limits, closing) and, where the
// Client's own checks would hide a driver's fault, by calling the driver
// directly (a lease the server expired presented with a forged deadline,
// a cancelled context, a retried release racing a new claim, a
// subscription dropped or not yet live). Each check has a watchdog, so a
// hang fails loudly. What a driver declares in its Features
// (AtomicCommit, DurableFence, MinTTL and TTLGranularity, MaxValueLen,
// Broadcast) is checked, not trusted. A check that does not apply (a
// feature the driver does not declare, a harness function not given) is
// reported by Run as skipped ("n/a: ...") and by Test as no failure.
//
// A backend's test calls Run with a Harness that opens independent clients
// of the backend, as if in separate processes (see the package example).
//
// Like testing/fstest.TestFS, the checks report errors rather than
// calling into testing directly, so Test can run them on a deliberately
// broken backend and prove each breakage is caught (see conformance_test).
// Bench measures the same backends: claim+release, handoff latency, notify
// fan-out and store round trips.
//
// Timings never decide a check: the suite asserts counts, orders and
// bounds. Cases that wait for expiry scale with the backend's
// Features.MinTTL and TTLGranularity and run in parallel.
package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// Harness describes the backend under test.
type Harness struct {
	// Open returns a new, independent client of the backend under test,
	// as if opened in another process. All clients share one server; the
	// suite closes every client it opens. Every check uses its own key
	// namespace, so one server serves the whole suite. Checks of the
	// driver contract call the driver behind it directly
	// (claim.Client.Driver).
	Open func(ctx context.Context) (*claim.Client, error)
	// OpenIsolated, if set, opens a client of the same server in another
	// namespace of the backend's own (another key prefix, schema, table or
	// chroot): the Isolation check verifies that nothing of one namespace
	// (leases, values, wake-ups, topics) is seen in the other. nil: the
	// check does not apply.
	OpenIsolated func(ctx context.Context) (*claim.Client, error)
	// Restart, if set, stops the server the way a crash does and starts it
	// again on the same address, keeping what the server keeps: the
	// DurableFence check uses it to verify Features.DurableFence, after
	// every other check has finished. nil: the check does not apply.
	Restart func(ctx context.Context) error
	// Timeout bounds each check (the watchdog). Zero means 60 s plus ten
	// short leases.
	Timeout time.Duration
}

// T is what a check reports to. It is safe for concurrent use.
type T struct {
	ctx  context.Context
	name string
	h    Harness
	ns   string
	feat claim.Features

	mu      sync.Mutex
	errs    []error
	skip    string
	clients []*claim.Client
}

// Context is cancelled when the check's watchdog fires.
func (t *T) Context() context.Context { return t.ctx }

// Errorf records a failure and continues.
func (t *T) Errorf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, fmt.Errorf(format, args...))
}

// Fatalf records a failure and ends the check's goroutine.
func (t *T) Fatalf(format string, args ...any) {
	t.Errorf(format, args...)
	runtime.Goexit()
}

// Skipf ends the check as not applicable to the backend (an optional
// interface it does not implement): Run reports the subtest as skipped
// with the note "n/a: ...", Test counts it as no failure.
func (t *T) Skipf(format string, args ...any) {
	t.mu.Lock()
	t.skip = fmt.Sprintf(format, args...)
	t.mu.Unlock()
	runtime.Goexit()
}

// Key returns a key unique to this check and run.
func (t *T) Key(name string) string { return t.ns + "/" + name }

// Client opens a new client; the suite closes it when the check ends.
func (t *T) Client() *claim.Client {
	b, err := t.h.Open(t.ctx)
	if err != nil {
		t.Fatalf("open client: %v", err)
	}
	t.mu.Lock()
	t.clients = append(t.clients, b)
	t.mu.Unlock()
	return b
}

// Features of the backend under test.
func (t *T) Features() claim.Features { return t.feat }

// ShortTTL is the shortest lease the checks use: the backend's minimum,
// at least 500 ms (a few round trips to a slow server on a loaded machine
// must fit in it), rounded up to its granularity.
func (t *T) ShortTTL() time.Duration {
	d := max(t.feat.MinTTL, 500*time.Millisecond)
	if g := t.feat.TTLGranularity; g > 0 && d%g != 0 {
		d += g - d%g
	}
	return d
}

// LongTTL is a lease that must not expire during a check.
func (t *T) LongTTL() time.Duration { return max(10*t.ShortTTL(), 20*time.Second) }

// expiryBound is how long after a lease's TTL its expiry must be visible.
func (t *T) expiryBound() time.Duration {
	return t.ShortTTL() + 2*t.feat.TTLGranularity + 5*time.Second
}

// A check is one named case of the suite.
type check struct {
	name  string
	fn    func(t *T)
	alone bool // runs after the others, by itself (it restarts the server)
}

var checks []check

func register(name string, fn func(t *T)) { checks = append(checks, check{name: name, fn: fn}) }

func registerAlone(name string, fn func(t *T)) {
	checks = append(checks, check{name: name, fn: fn, alone: true})
}

// Names returns the names of every check, in order.
func Names() []string {
	out := make([]string, len(checks))
	for i, c := range checks {
		out[i] = c.name
	}
	return out
}

func (h Harness) timeout(f claim.Features) time.Duration {
	if h.Timeout > 0 {
		return h.Timeout
	}
	t := &T{feat: f}
	return 60*time.Second + 10*t.ShortTTL()
}

func nsID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func features(ctx context.Context, h Harness) (claim.Features, error) {
	b, err := h.Open(ctx)
	if err != nil {
		return claim.Features{}, fmt.Errorf("open client: %w", err)
	}
	defer b.Close()
	return b.Features(), nil
}

// runCheck runs one check under its watchdog and returns its failures,
// and a note if the check did not apply (T.Skipf).
func runCheck(ctx context.Context, h Harness, f claim.Features, c check) (errs []error, skip string) {
	limit := h.timeout(f)
	cctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	t := &T{ctx: cctx, name: c.name, h: h, feat: f, ns: "conformance/" + c.name + "/" + nsID()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.fn(t)
	}()
	var hung bool
	select {
	case <-done:
	case <-cctx.Done():
		// Give the check a moment to notice its context, then declare it hung.
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			hung = true
		}
	}
	t.mu.Lock()
	clients := t.clients
	t.clients = nil
	t.mu.Unlock()
	for _, b := range clients {
		if err := b.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	}
	if hung {
		buf := make([]byte, 1<<16)
		n := runtime.Stack(buf, true)
		t.Errorf("watchdog: check %s hung: still running %s after it started; goroutines:\n%s", c.name, limit+5*time.Second, buf[:n])
	} else if cctx.Err() != nil && ctx.Err() == nil {
		t.Errorf("watchdog: check %s ran out of its %s", c.name, limit)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.errs, t.skip
}

// Run runs every check as a parallel subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("conformance: Harness.Open is nil")
	}
	f, err := features(context.Background(), h)
	if err != nil {
		t.Fatalf("conformance: %v", err)
	}
	t.Logf("conformance: backend %q, notify %s, short lease %s", f.Name, f.Notify, (&T{feat: f}).ShortTTL())
	run := func(t *testing.T, c check) {
		errs, skip := runCheck(context.Background(), h, f, c)
		for _, err := range errs {
			t.Error(err)
		}
		if skip != "" && len(errs) == 0 {
			t.Skip("n/a: " + skip)
		}
	}
	// The parallel checks run as one group, so that the checks that must
	// run alone start after all of them have finished.
	t.Run("parallel", func(t *testing.T) {
		for _, c := range checks {
			if !c.alone {
				t.Run(c.name, func(t *testing.T) {
					t.Parallel()
					run(t, c)
				})
			}
		}
	})
	for _, c := range checks {
		if c.alone {
			t.Run(c.name, func(t *testing.T) { run(t, c) })
		}
	}
}

// Test runs the named checks (every check if none is named), in parallel,
// and returns their failures joined, each prefixed with its check's name,
// or nil if all passed. A check that does not apply to the backend (it
// tests an optional interface the backend does not implement) is no
// failure.
func Test(ctx context.Context, h Harness, names ...string) error {
	if h.Open == nil {
		return errors.New("conformance: Harness.Open is nil")
	}
	f, err := features(ctx, h)
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	var run []check
	for _, c := range checks {
		if len(names) == 0 || slices.Contains(names, c.name) {
			run = append(run, c)
		}
	}
	for _, n := range names {
		if !slices.Contains(Names(), n) {
			return fmt.Errorf("conformance: no check named %q (have %s)", n, strings.Join(Names(), ", "))
		}
	}
	var mu sync.Mutex
	var all []error
	record := func(c check, errs []error) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range errs {
			all = append(all, fmt.Errorf("%s: %w", c.name, e))
		}
	}
	var wg sync.WaitGroup
	for _, c := range run {
		if c.alone {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs, _ := runCheck(ctx, h, f, c)
			record(c, errs)
		}()
	}
	wg.Wait()
	for _, c := range run {
		if c.alone {
			errs, _ := runCheck(ctx, h, f, c)
			record(c, errs)
		}
	}
	return errors.Join(all...)
}
