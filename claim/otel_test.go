package claim_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	mnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
)

// sdk is a meter provider and a tracer provider of the OTel SDK that
// record in memory.
type sdk struct {
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newSDK(t testing.TB) *sdk {
	s := &sdk{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	s.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	s.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	t.Cleanup(func() {
		_ = s.mp.Shutdown(context.Background())
		_ = s.tp.Shutdown(context.Background())
	})
	return s
}

func (s *sdk) options() *claim.Options {
	return &claim.Options{MeterProvider: s.mp, TracerProvider: s.tp}
}

// point is one data point of the duration histogram, keyed by
// "operation/error.type" ("claim/" on success, "claim/held").
type point struct {
	backend string
	count   uint64
	sum     float64
	bounds  []float64
}

// durations collects the duration histogram's points.
func (s *sdk) durations(t *testing.T) map[string]point {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]point{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != claim.MetricOperationDuration {
				continue
			}
			if sm.Scope.Name != claim.InstrumentationScope || m.Unit != "s" {
				t.Errorf("histogram in scope %q with unit %q", sm.Scope.Name, m.Unit)
			}
			h, ok := m.Data.(metricdata.Histogram[float64])
			if !ok {
				t.Fatalf("%s is a %T, want a float64 histogram", m.Name, m.Data)
			}
			for _, dp := range h.DataPoints {
				op, _ := dp.Attributes.Value("stampede.operation")
				be, _ := dp.Attributes.Value("stampede.backend")
				et, _ := dp.Attributes.Value("error.type")
				got[op.AsString()+"/"+et.AsString()] = point{backend: be.AsString(), count: dp.Count, sum: dp.Sum, bounds: dp.Bounds}
			}
		}
	}
	return got
}

func counts(ps map[string]point) map[string]uint64 {
	c := map[string]uint64{}
	for k, p := range ps {
		c[k] = p.count
	}
	return c
}

func sameCounts(got, want map[string]uint64) bool {
	if len(got) != len(want) {
		return false
	}
	for k, n := range want {
		if got[k] != n {
			return false
		}
	}
	return true
}

// The duration histogram has one point per operation and outcome, with
// the backend's name, error.type on every error (a refused claim is
// "held"), and the documented buckets.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	s := newSDK(t)
	sp := memory.NewSpace(nil)
	a, _ := memory.New(sp, &memory.Options{Client: s.options()})
	defer a.Close()
	b, _ := memory.New(sp, &memory.Options{Client: s.options()})
	defer b.Close()

	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("second claim: %v", err)
	}
	if _, err := a.Get(ctx, "k"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	if err := a.CommitRelease(ctx, l, []byte("v"), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
		t.Fatalf("second release: %v", err)
	}
	for range 3 {
		if _, err := b.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	// Refused before any I/O: not a backend call, not recorded.
	if _, err := a.Get(ctx, ""); !errors.Is(err, claim.ErrInvalidKey) {
		t.Fatalf("empty key: %v", err)
	}

	got := s.durations(t)
	want := map[string]uint64{
		"claim/": 1, "claim/held": 1, "get/not_found": 1, "commit-release/": 1,
		"release/lost": 1, "get/": 3, "ping/": 1,
	}
	if c := counts(got); !sameCounts(c, want) {
		t.Errorf("points (operation/error.type: count) = %v, want %v", c, want)
	}
	name := a.Features().Name
	for k, p := range got {
		if p.backend != name || p.sum <= 0 || !slices.Equal(p.bounds, wantBounds) {
			t.Errorf("%s: backend %q, sum %g, bounds %v; want %q, > 0, %v", k, p.backend, p.sum, p.bounds, name, wantBounds)
		}
	}
}

// wantBounds are the documented bucket boundaries: 50 µs to 10 s.
var wantBounds = []float64{0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Every error class a backend call can end with is recorded as its
// error.type: configuration, unavailability, the operation timeout, the
// caller's cancellation.
func TestMetricsErrorClasses(t *testing.T) {
	s := newSDK(t)
	d := newScript(t)
	opt := s.options()
	opt.OpTimeout = 20 * time.Millisecond
	c := claim.NewClient(d, opt)
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	refuse := map[string]error{
		"config":      driver.Misconfigured(errors.New("NOAUTH Authentication required")),
		"unavailable": errors.New("connection refused"),
	}
	for _, key := range []string{"config", "unavailable", "timeout", "canceled"} {
		d.tryClaim = func(cctx context.Context, _, _ string, _ time.Duration) (driver.Lease, error) {
			switch key {
			case "timeout":
				<-cctx.Done()
				return driver.Lease{}, cctx.Err()
			case "canceled":
				cancel()
				return driver.Lease{}, cctx.Err()
			}
			return driver.Lease{}, refuse[key]
		}
		if _, err := c.TryClaim(ctx, key, time.Minute); err == nil {
			t.Fatalf("%s: claimed", key)
		}
	}
	want := map[string]uint64{"claim/config": 1, "claim/unavailable": 1, "claim/timeout": 1, "claim/canceled": 1}
	if got := counts(s.durations(t)); !sameCounts(got, want) {
		t.Errorf("points = %v, want %v", got, want)
	}
}

// A span per backend call, a child of the caller's span, of kind client,
// named "claim OP", with the operation, the backend and, on error, the
// error class; status Error on failures only (ErrHeld and ErrNotFound
// are answers). The driver's context carries the call's span, so spans
// the driver starts are its children.
func TestSpans(t *testing.T) {
	s := newSDK(t)
	d := newScript(t)
	c := claim.NewClient(d, s.options())
	defer c.Close()
	ctx, parent := s.tp.Tracer("test").Start(context.Background(), "request")

	var inDriver trace.SpanContext
	d.tryClaim = func(cctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
		inDriver = trace.SpanContextFromContext(cctx)
		return d.Driver.TryClaim(cctx, key, holder, ttl)
	}
	l, err := c.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	d.tryClaim = nil
	if _, err := c.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("held: %v", err)
	}
	if _, err := c.Get(ctx, "nothing"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatalf("get: %v", err)
	}
	d.get = func(context.Context, string) ([]byte, error) {
		return nil, driver.Misconfigured(errors.New("WRONGPASS"))
	}
	if _, err := c.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Fatalf("get: %v", err)
	}
	// Past its local deadline, Extend is refused without I/O: no span,
	// no metric point (it is not a backend call).
	stale := l
	stale.Deadline = time.Now().Add(-time.Second)
	if _, err := c.Extend(ctx, stale, time.Minute); !errors.Is(err, claim.ErrLost) {
		t.Fatalf("extend: %v", err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	parent.End()

	type want struct {
		name, class string
		failed      bool
	}
	wants := []want{
		{"claim claim", "", false},
		{"claim claim", "held", false},
		{"claim get", "not_found", false},
		{"claim get", "config", true},
		{"claim release", "", false},
	}
	ended := s.spans.Ended()
	if n := len(s.spans.Started()); n != len(ended) {
		t.Errorf("%d spans started, %d ended", n, len(ended))
	}
	var calls []sdktrace.ReadOnlySpan
	for _, sp := range ended {
		if sp.Name() != "request" {
			calls = append(calls, sp)
		}
	}
	if len(calls) != len(wants) {
		t.Fatalf("%d call spans, want %d: %v", len(calls), len(wants), names(calls))
	}
	backend := c.Features().Name
	for i, w := range wants {
		sp := calls[i]
		attrs := attribute.NewSet(sp.Attributes()...)
		op, _ := attrs.Value("stampede.operation")
		be, _ := attrs.Value("stampede.backend")
		et, _ := attrs.Value("error.type")
		if sp.Name() != w.name || "claim "+op.AsString() != w.name || be.AsString() != backend || et.AsString() != w.class {
			t.Errorf("span %d: %s, operation %q, backend %q, error.type %q; want %s, %q, %q", i, sp.Name(), op.AsString(), be.AsString(), et.AsString(), w.name, backend, w.class)
		}
		if sp.SpanKind() != trace.SpanKindClient {
			t.Errorf("span %d (%s): kind %v, want client", i, sp.Name(), sp.SpanKind())
		}
		if sp.Parent().SpanID() != parent.SpanContext().SpanID() || sp.SpanContext().TraceID() != parent.SpanContext().TraceID() {
			t.Errorf("span %d (%s): parent %v, want the caller's span %v", i, sp.Name(), sp.Parent().SpanID(), parent.SpanContext().SpanID())
		}
		if failed := sp.Status().Code == codes.Error; failed != w.failed {
			t.Errorf("span %d (%s, error.type %q): status %v, want failed=%v", i, sp.Name(), w.class, sp.Status(), w.failed)
		}
		if w.failed && (!strings.Contains(sp.Status().Description, "WRONGPASS")) {
			t.Errorf("span %d: status description %q lacks the cause", i, sp.Status().Description)
		}
	}
	if !inDriver.IsValid() || inDriver.SpanID() != calls[0].SpanContext().SpanID() {
		t.Errorf("the driver's context carries span %v, want the call's span %v", inDriver.SpanID(), calls[0].SpanContext().SpanID())
	}
}

func names(spans []sdktrace.ReadOnlySpan) []string {
	var n []string
	for _, s := range spans {
		n = append(n, s.Name())
	}
	return n
}

// With nil providers the Client records into the global ones, looked up
// at each call: providers installed after the Client was opened are used.
// (This test sets the otel globals, and puts no-op ones back after.)
func TestGlobalProviders(t *testing.T) {
	ctx := context.Background()
	c, _ := memory.New(nil, nil)
	defer c.Close()
	if _, err := c.Get(ctx, "before"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatal(err)
	}
	s := newSDK(t)
	otel.SetMeterProvider(s.mp)
	otel.SetTracerProvider(s.tp)
	defer func() {
		otel.SetMeterProvider(mnoop.NewMeterProvider())
		otel.SetTracerProvider(tnoop.NewTracerProvider())
	}()
	if _, err := c.Get(ctx, "after"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatal(err)
	}
	want := map[string]uint64{"get/not_found": 1}
	if got := counts(s.durations(t)); !sameCounts(got, want) {
		t.Errorf("points = %v, want %v (the call made before the provider was installed is not there)", got, want)
	}
	if n := len(s.spans.Ended()); n != 1 {
		t.Errorf("%d spans, want 1", n)
	}
	// A second provider installed later takes over.
	s2 := newSDK(t)
	otel.SetMeterProvider(s2.mp)
	otel.SetTracerProvider(s2.tp)
	if _, err := c.Get(ctx, "later"); !errors.Is(err, claim.ErrNotFound) {
		t.Fatal(err)
	}
	if got := counts(s2.durations(t)); !sameCounts(got, want) {
		t.Errorf("second provider: points = %v, want %v", got, want)
	}
	if n := len(s.spans.Ended()) + len(s2.spans.Ended()); n != 2 || len(s2.spans.Ended()) != 1 {
		t.Errorf("second provider: %d spans there, %d in all; want 1, 2", len(s2.spans.Ended()), n)
	}
}

// Without a provider (the otel defaults, or no-op ones) recording costs
// no allocation: a call allocates what it allocates with the no-op
// providers given explicitly, and less than with the SDK tracing (which
// shows the count sees telemetry's allocations).
func TestNoProviderAllocs(t *testing.T) {
	ctx := context.Background()
	allocs := func(opt *claim.Options) float64 {
		c, _ := memory.New(nil, &memory.Options{Client: opt})
		defer c.Close()
		if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
		return testing.AllocsPerRun(200, func() {
			if _, err := c.Get(ctx, "k"); err != nil {
				t.Fatal(err)
			}
		})
	}
	none := allocs(nil)
	noop := allocs(&claim.Options{MeterProvider: mnoop.NewMeterProvider(), TracerProvider: tnoop.NewTracerProvider()})
	traced := allocs(newSDK(t).options())
	if none != noop || traced <= none {
		t.Errorf("allocations per Get: %v without a provider, %v with no-op ones, %v with the SDK; want the first two equal and below the third", none, noop, traced)
	}
}

// A Client records into the OpenTelemetry providers in its Options (or
// the global ones): here the SDK's, read in memory. Each backend call is
// a point of the duration histogram, by operation and error class.
func Example_openTelemetry() {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)
	c, err := claim.OpenOptions(ctx, "mem://otel-example", &claim.Options{MeterProvider: mp})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	l, _ := c.TryClaim(ctx, "report-42", time.Minute)
	_, err = c.TryClaim(ctx, "report-42", time.Minute) // held: an answer, recorded with error.type=held
	fmt.Println(errors.Is(err, claim.ErrHeld))
	_ = c.CommitRelease(ctx, l, []byte("done"), time.Hour)

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(ctx, &rm)
	var lines []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			for _, dp := range m.Data.(metricdata.Histogram[float64]).DataPoints {
				op, _ := dp.Attributes.Value("stampede.operation")
				et, _ := dp.Attributes.Value("error.type")
				lines = append(lines, fmt.Sprintf("%s %s operation=%s error.type=%q count=%d", m.Name, m.Unit, op.AsString(), et.AsString(), dp.Count))
			}
		}
	}
	slices.Sort(lines)
	fmt.Println(strings.Join(lines, "\n"))
	// Output:
	// true
	// stampede.claim.operation.duration s operation=claim error.type="" count=1
	// stampede.claim.operation.duration s operation=claim error.type="held" count=1
	// stampede.claim.operation.duration s operation=commit-release error.type="" count=1
	// stampede.claim.operation.duration s operation=ping error.type="" count=1
}

// BenchmarkOps measures the Client's own cost per backend call on the
// in-process backend: with no OpenTelemetry provider installed (the
// default), and with the SDK recording metrics, or traces, in memory.
func BenchmarkOps(b *testing.B) {
	for _, mode := range []string{"none", "metrics", "traces"} {
		opt := &claim.Options{}
		switch mode {
		case "metrics":
			opt.MeterProvider = newSDK(b).mp
		case "traces":
			tp := sdktrace.NewTracerProvider() // sampled, no processor: spans go nowhere
			b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			opt.TracerProvider = tp
		}
		benchOps(b, mode, opt)
	}
}

func benchOps(b *testing.B, mode string, opt *claim.Options) {
	ctx := context.Background()
	c, err := memory.New(nil, &memory.Options{Client: opt})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	if err := c.Set(ctx, "v", make([]byte, 100), 0); err != nil {
		b.Fatal(err)
	}
	b.Run(fmt.Sprintf("ClaimRelease/otel=%s", mode), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			l, err := c.TryClaim(ctx, "k", time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if err := c.Release(ctx, l); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run(fmt.Sprintf("Get/otel=%s", mode), func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Get(ctx, "v"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// pollCounting is a driver that says it polled n times.
type pollCounting struct {
	driver.Driver
	n atomic.Uint64
}

func (p *pollCounting) PollReads() uint64 { return p.n.Load() }

// pollRequests collects MetricPollRequests: its data points' values by
// backend.
func (s *sdk) pollRequests(t *testing.T) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != claim.MetricPollRequests {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if sm.Scope.Name != claim.InstrumentationScope || m.Unit != "{request}" || !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
				t.Fatalf("%s in scope %q, unit %q, %T; want a cumulative monotonic int64 sum in %q, unit {request}", m.Name, sm.Scope.Name, m.Unit, m.Data, claim.InstrumentationScope)
			}
			for _, dp := range sum.DataPoints {
				be, _ := dp.Attributes.Value("stampede.backend")
				got[be.AsString()] = dp.Value
			}
		}
	}
	return got
}

// A polling driver's requests (driver.PollCounter) are the observable
// counter stampede.claim.poll.requests, read at collection, until Close;
// a driver that does not poll has none.
func TestPollRequestsMetric(t *testing.T) {
	s := newSDK(t)
	m, _ := memory.New(nil, nil)
	defer m.Close()
	pc := &pollCounting{Driver: m.Driver()}
	pc.n.Store(7)
	c := claim.NewClient(pc, s.options())
	plain, _ := memory.New(nil, &memory.Options{Client: s.options()})
	defer plain.Close()
	if got := s.pollRequests(t); len(got) != 1 || got["mem"] != 7 {
		t.Fatalf("poll requests %v, want mem: 7 (and no point for the driver that does not poll)", got)
	}
	pc.n.Store(12)
	if got := s.pollRequests(t); got["mem"] != 12 {
		t.Fatalf("poll requests %v after 5 more, want 12", got)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got := s.pollRequests(t); len(got) != 0 {
		t.Fatalf("poll requests %v after Close, want none", got)
	}
}
