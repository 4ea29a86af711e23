package flight

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
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

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/otelx"
)

// otelSDK is one simulated process's OpenTelemetry SDK, recording in
// memory: a meter provider read by hand, a tracer provider whose spans a
// recorder keeps.
type otelSDK struct {
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
}

func newOtelSDK(t testing.TB, opts ...sdktrace.TracerProviderOption) *otelSDK {
	s := &otelSDK{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	s.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	s.tp = sdktrace.NewTracerProvider(append(opts, sdktrace.WithSpanProcessor(s.spans))...)
	t.Cleanup(func() {
		_ = s.mp.Shutdown(context.Background())
		_ = s.tp.Shutdown(context.Background())
	})
	return s
}

// otelMetrics are the flight metrics of one collection: counters and
// gauges by series ("name{attr=value,...}", stampede.cache left out),
// histogram points likewise.
type otelMetrics struct {
	values map[string]int64
	hists  map[string]metricdata.HistogramDataPoint[float64]
	units  map[string]string
}

// collect reads s's flight metrics, checking that every point carries
// stampede.cache = cache.
func (s *otelSDK) collect(t *testing.T, cache string) otelMetrics {
	t.Helper()
	return collectFrom(t, s.reader, cache)
}

func collectFrom(t *testing.T, r sdkmetric.Reader, cache string) otelMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	m := otelMetrics{values: map[string]int64{}, hists: map[string]metricdata.HistogramDataPoint[float64]{}, units: map[string]string{}}
	series := func(name string, set attribute.Set) string {
		if v, ok := set.Value(attrCache); !ok || v.AsString() != cache {
			t.Errorf("%s %v: stampede.cache %q, want %q", name, set.ToSlice(), v.AsString(), cache)
		}
		var kv []string
		for _, a := range set.ToSlice() {
			if a.Key != attrCache {
				kv = append(kv, string(a.Key)+"="+a.Value.String())
			}
		}
		sort.Strings(kv)
		return name + "{" + strings.Join(kv, ",") + "}"
	}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != InstrumentationScope {
			continue
		}
		for _, md := range sm.Metrics {
			m.units[md.Name] = md.Unit
			switch d := md.Data.(type) {
			case metricdata.Sum[int64]:
				if !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
					t.Errorf("%s: a sum that is not a cumulative counter", md.Name)
				}
				for _, p := range d.DataPoints {
					m.values[series(md.Name, p.Attributes)] = p.Value
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					m.values[series(md.Name, p.Attributes)] = p.Value
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					m.hists[series(md.Name, p.Attributes)] = p
				}
			default:
				t.Errorf("%s: unexpected %T", md.Name, md.Data)
			}
		}
	}
	return m
}

// answers returns the stampede.flight.answers series by source.
func (m otelMetrics) answers() map[string]int64 {
	a := map[string]int64{}
	for _, s := range answerSources {
		a[s] = m.values[metricAnswers+"{stampede.source="+s+"}"]
	}
	return a
}

// matchStats checks that every observable counter equals its Stats field.
func (m otelMetrics) matchStats(t *testing.T, who string, st Stats) {
	t.Helper()
	counts := answerCounts(&st)
	for i, s := range answerSources {
		if got := m.values[metricAnswers+"{stampede.source="+s+"}"]; got != int64(counts[i]) {
			t.Errorf("%s: answers from %s %d, Stats %d", who, s, got, counts[i])
		}
	}
	for _, d := range counterDefs {
		if got := m.values[d.name+"{}"]; got != int64(d.get(&st)) {
			t.Errorf("%s: %s %d, Stats %d", who, d.name, got, d.get(&st))
		}
	}
}

// gate is a loader that blocks until opened, telling when it started.
type gate struct {
	started chan string
	open    chan struct{}
}

func newGate() *gate { return &gate{started: make(chan string, 16), open: make(chan struct{})} }

func (g *gate) load(_ context.Context, key string) (string, error) {
	g.started <- key
	<-g.open
	return "v:" + key, nil
}

func noLoad(t *testing.T) LoadFunc[string] {
	return func(_ context.Context, key string) (string, error) {
		t.Errorf("loader called for %q in a process that should not load", key)
		return "", errTest
	}
}

// Two processes on one backend, a known sequence of gets: the observable
// counters read what Stats says (answers by tier, loads, waits,
// coalesced callers, published errors ...), the load and wait histograms
// have a point per call with error.type on failures, and every point
// carries stampede.cache.
func TestMetrics(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	sa, sb := newOtelSDK(t), newOtelSDK(t)
	a, _ := newCache(f, &Options[string]{Name: "m", MeterProvider: sa.mp})
	b, _ := newCache(f, &Options[string]{Name: "m", MeterProvider: sb.mp})
	ok := func(_ context.Context, key string) (string, error) { return "v:" + key, nil }

	wantSource(t, fetchOK(t, a, ctx, "k1", ok), SourceLoaded)
	wantSource(t, fetchOK(t, a, ctx, "k1", ok), SourceL1)
	wantSource(t, fetchOK(t, b, ctx, "k1", noLoad(t)), SourceL2)
	wantSource(t, fetchOK(t, b, ctx, "k1", noLoad(t)), SourceL1)

	// k2: A holds the claim while B's two callers wait (one flight, one
	// coalesced caller), then answer from A's value.
	g := newGate()
	var wg sync.WaitGroup
	wg.Go(func() { wantSource(t, fetchOK(t, a, ctx, "k2", g.load), SourceLoaded) })
	<-g.started
	waitBegan := time.Now()
	for range 2 {
		wg.Go(func() { wantSource(t, fetchOK(t, b, ctx, "k2", noLoad(t)), SourceRemote) })
	}
	eventually(t, "B waits for A, its second caller coalesced", func() bool {
		st := b.Stats()
		return st.Waits == 1 && st.Coalesced == 1
	})
	close(g.open)
	wg.Wait()
	waitEnded := time.Now()

	// k3: A's load fails; B is answered with the published error.
	if _, err := a.Get(ctx, "k3", func(context.Context, string) (string, error) { return "", errTest }); !errors.Is(err, errTest) {
		t.Fatalf("A, failing load: %v", err)
	}
	if _, err := b.Get(ctx, "k3", noLoad(t)); !errors.Is(err, ErrRemoteLoad) {
		t.Fatalf("B, published error: %v", err)
	}

	// k4: a fallback at once, the load in the background.
	g4 := newGate()
	if r := fetchOK(t, a, ctx, "k4", g4.load, WithFallback("fb")); r.Source != SourceFallback || r.Value != "fb" {
		t.Fatalf("fallback: %+v", r)
	}
	<-g4.started
	close(g4.open)
	idle(t, a)
	idle(t, b)

	ma, mb := sa.collect(t, "m"), sb.collect(t, "m")
	wantA := map[string]int64{"l1": 1, "l2": 0, "loaded": 2, "remote": 0, "stale": 0, "fallback": 1, "fail_safe": 0, "error": 1}
	wantB := map[string]int64{"l1": 1, "l2": 1, "loaded": 0, "remote": 2, "stale": 0, "fallback": 0, "fail_safe": 0, "error": 1}
	if got := ma.answers(); !mapsEqual(got, wantA) {
		t.Errorf("A's answers %v, want %v", got, wantA)
	}
	if got := mb.answers(); !mapsEqual(got, wantB) {
		t.Errorf("B's answers %v, want %v", got, wantB)
	}
	for _, c := range []struct {
		m    otelMetrics
		name string
		want int64
	}{
		{ma, "stampede.flight.loads", 4}, {mb, "stampede.flight.loads", 0},
		{ma, "stampede.flight.load_errors", 1}, {ma, "stampede.flight.error_commits", 1},
		{mb, "stampede.flight.error_hits", 1}, {mb, "stampede.flight.waits", 1},
		{mb, "stampede.flight.coalesced", 1}, {ma, "stampede.flight.waits", 0},
		{ma, "stampede.flight.commits", 3}, {ma, "stampede.flight.fail_open", 0},
	} {
		if got := c.m.values[c.name+"{}"]; got != c.want {
			t.Errorf("%s = %d, want %d", c.name, got, c.want)
		}
	}
	ma.matchStats(t, "A", a.Stats())
	mb.matchStats(t, "B", b.Stats())
	if u := ma.units[metricAnswers]; u != "{answer}" {
		t.Errorf("answers unit %q", u)
	}

	// Load durations: A's four loader calls, one failed; B called none.
	okLoads, failed := ma.hists[metricLoadDuration+"{}"], ma.hists[metricLoadDuration+"{error.type=load}"]
	if okLoads.Count != 3 || failed.Count != 1 {
		t.Errorf("A's load durations: %d ok, %d failed; want 3 and 1", okLoads.Count, failed.Count)
	}
	if !slices.Equal(okLoads.Bounds, otelx.DurationBuckets) || ma.units[metricLoadDuration] != "s" {
		t.Errorf("load histogram: bounds %v, unit %q", okLoads.Bounds, ma.units[metricLoadDuration])
	}
	for s := range mb.hists {
		if strings.HasPrefix(s, metricLoadDuration) {
			t.Errorf("B recorded a load duration: %s", s)
		}
	}
	// Wait time: B's one flight that waited for A, within the test's
	// view of it; A never waited.
	w := mb.hists[metricWaitDuration+"{}"]
	if w.Count != 1 || w.Sum <= 0 || w.Sum > waitEnded.Sub(waitBegan).Seconds() || len(mb.hists) != 1 {
		t.Errorf("B's wait times: %d waits, %v s in all (the wait took at most %v); histograms %v",
			w.Count, w.Sum, waitEnded.Sub(waitBegan), keys(mb.hists))
	}
	if !slices.Equal(w.Bounds, otelx.DurationBuckets) || mb.units[metricWaitDuration] != "s" {
		t.Errorf("wait histogram: bounds %v, unit %q", w.Bounds, mb.units[metricWaitDuration])
	}
	for s := range ma.hists {
		if strings.HasPrefix(s, metricWaitDuration) {
			t.Errorf("A recorded a wait: %s", s)
		}
	}
}

func mapsEqual(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func keys[M ~map[string]V, V any](m M) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// degraded returns the two series of the degraded gauge.
func (m otelMetrics) degraded() (config, unavailable int64, ok bool) {
	c, okc := m.values[metricDegraded+"{error.type=config}"]
	u, oku := m.values[metricDegraded+"{error.type=unavailable}"]
	return c, u, okc && oku
}

// The degraded gauge follows Stats.Health: 1 in the series of the
// failure's class while degraded, 0 in both when healthy.
func TestMetricsDegraded(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	s := newOtelSDK(t)
	load := func(_ context.Context, k string) (string, error) { return k, nil }
	c, p := newCache(f, &Options[string]{Name: "d", MeterProvider: s.mp})
	check := func(when string, wantConfig, wantUnavailable int64) {
		t.Helper()
		cfg, un, ok := s.collect(t, "d").degraded()
		if !ok || cfg != wantConfig || un != wantUnavailable {
			t.Fatalf("%s: degraded{config}=%d, degraded{unavailable}=%d (both reported: %v); want %d, %d (health %v)",
				when, cfg, un, ok, wantConfig, wantUnavailable, c.Stats().Health)
		}
	}
	check("new", 0, 0)
	fetchOK(t, c, ctx, "before", load)
	check("healthy", 0, 0)

	p.mem.setFault(errors.New("connection refused"))
	wantSource(t, fetchOK(t, c, ctx, "outage", load), SourceLoaded) // fail open
	check("outage", 0, 1)
	p.mem.setFault(nil)
	fetchOK(t, c, ctx, "recovered", load)
	check("recovered", 0, 0)

	p.mem.setFault(driver.Misconfigured(errors.New("WRONGPASS")))
	if _, err := c.Get(ctx, "misconfigured", load); !errors.Is(err, claim.ErrConfig) {
		t.Fatalf("misconfigured: %v", err)
	}
	check("misconfigured", 1, 0)
	if n := s.collect(t, "d").values["stampede.flight.fail_open{}"]; n != 1 {
		t.Fatalf("fail_open = %d, want 1", n)
	}
	p.mem.setFault(nil)
	fetchOK(t, c, ctx, "fixed", load)
	check("fixed", 0, 0)
}

// observableNames are the names of the instruments read in the callback.
func observableNames() []string {
	n := []string{metricAnswers, metricDegraded}
	for _, d := range counterDefs {
		n = append(n, d.name)
	}
	return n
}

// Close unregisters the callback: the provider no longer reads the Cache
// (nor keeps it), and reports none of its observable instruments.
func TestMetricsUnregisteredAtClose(t *testing.T) {
	ctx := context.Background()
	f := newFleet(t)
	s := newOtelSDK(t)
	c, _ := newCache(f, &Options[string]{Name: "u", MeterProvider: s.mp})
	fetchOK(t, c, ctx, "k", func(context.Context, string) (string, error) { return "v", nil })
	before := s.collect(t, "u")
	for _, n := range observableNames() {
		if _, ok := before.units[n]; !ok {
			t.Errorf("open Cache: %s not reported", n)
		}
	}
	if c.tel.reg == nil {
		t.Fatal("no registration")
	}
	c.Close()
	if c.tel.reg != nil {
		t.Fatal("registration kept after Close")
	}
	after := s.collect(t, "u")
	for _, n := range observableNames() {
		for series, v := range after.values {
			if strings.HasPrefix(series, n+"{") {
				t.Errorf("closed Cache: %s = %d still reported", series, v)
			}
		}
	}
}

// With no provider given, the Cache registers on the global one: a
// provider installed after New receives its metrics (the global's
// delegate forwards them), and Close unregisters them there too. The
// global delegates once per process: run again (-count), the test
// installs its provider before New instead.
func TestMetricsGlobalProvider(t *testing.T) {
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		otel.SetMeterProvider(mnoop.NewMeterProvider())
		_ = mp.Shutdown(context.Background())
	})
	gt := reflect.TypeOf(otel.GetMeterProvider())
	delegating := gt.Kind() == reflect.Pointer && gt.Elem().PkgPath() == "go.opentelemetry.io/otel/internal/global"
	if !delegating {
		otel.SetMeterProvider(mp)
	}
	f := newFleet(t)
	load := func(context.Context, string) (string, error) { return "v", nil }
	c, _ := newCache(f, &Options[string]{Name: "g"})
	fetchOK(t, c, ctx, "k", load)
	fetchOK(t, c, ctx, "k", load)
	if delegating {
		otel.SetMeterProvider(mp)
	}
	m := collectFrom(t, reader, "g")
	if a := m.answers(); a["l1"] != 1 || a["loaded"] != 1 {
		t.Fatalf("answers through the global provider: %v", a)
	}
	c.Close()
	if m := collectFrom(t, reader, "g"); len(m.values) != 0 {
		t.Fatalf("closed Cache still reported: %v", keys(m.values))
	}
}

// spanNamed returns the ended spans of s named name, but for New's read
// of the cache's generation (a "claim get" without a parent).
func (s *otelSDK) spanNamed(name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		if sp.Name() == "claim get" && !sp.Parent().IsValid() {
			continue
		}
		if sp.Name() == name {
			out = append(out, sp)
		}
	}
	return out
}

// one returns the only span named name (whose attribute key, if given,
// is value), failing otherwise.
func (s *otelSDK) one(t *testing.T, who, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	spans := s.spanNamed(name)
	if len(spans) != 1 {
		t.Fatalf("%s: %d spans %q, want 1", who, len(spans), name)
	}
	return spans[0]
}

func attrOf(sp sdktrace.ReadOnlySpan, key attribute.Key) string {
	for _, a := range sp.Attributes() {
		if a.Key == key {
			return a.Value.String()
		}
	}
	return ""
}

// linksTo reports whether sp links to target with stampede.link = kind.
func linksTo(sp sdktrace.ReadOnlySpan, target trace.SpanContext, kind string) bool {
	for _, l := range sp.Links() {
		if l.SpanContext.TraceID() == target.TraceID() && l.SpanContext.SpanID() == target.SpanID() &&
			slices.Contains(l.Attributes, attrLink.String(kind)) {
			return true
		}
	}
	return false
}

// traced opens a Cache named "t" in a new simulated process whose Client
// and Cache record spans into s.
func traced(t *testing.T, sp *memory.Space, s *otelSDK) (*Cache[string], *claim.Client) {
	b, err := memory.New(sp, &memory.Options{Client: &claim.Options{TracerProvider: s.tp}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return openCache(t, b, &Options[string]{Name: "t", TracerProvider: s.tp}), b
}

// The waiter→holder link: A loads under its "flight get" span, and
// writes its load span's context with the value; B, which waited for A,
// and C, which read A's value from L2, link their spans to A's load
// span (same trace id and span id). B's second caller links to B's
// first. Backend calls are children of the flight's span; the loader's
// span is too. An L1 hit starts no span.
func TestTraceLinks(t *testing.T) {
	ctx := context.Background()
	sp := memory.NewSpace(nil)
	sa, sb, sc := newOtelSDK(t), newOtelSDK(t), newOtelSDK(t)
	a, ba := traced(t, sp, sa)
	b, _ := traced(t, sp, sb)
	c, _ := traced(t, sp, sc)

	g := newGate()
	reqA, rootA := sa.tp.Tracer("test").Start(ctx, "request A")
	var wg sync.WaitGroup
	wg.Go(func() { wantSource(t, fetchOK(t, a, reqA, "k", g.load), SourceLoaded) })
	<-g.started
	reqB, rootB := sb.tp.Tracer("test").Start(ctx, "request B")
	for range 2 {
		wg.Go(func() { wantSource(t, fetchOK(t, b, reqB, "k", noLoad(t)), SourceRemote) })
	}
	eventually(t, "B waits for A, its second caller coalesced", func() bool {
		st := b.Stats()
		return st.Waits == 1 && st.Coalesced == 1
	})
	close(g.open)
	wg.Wait()
	rootA.End()
	rootB.End()
	wantSource(t, fetchOK(t, c, ctx, "k", noLoad(t)), SourceL2)

	// A: request A > flight get > flight load, and the claim calls.
	getA := sa.one(t, "A", spanGet)
	load := sa.one(t, "A", spanLoad)
	if getA.Parent().SpanID() != rootA.SpanContext().SpanID() || load.Parent().SpanID() != getA.SpanContext().SpanID() {
		t.Fatalf("A: flight get's parent %v, flight load's parent %v", getA.Parent().SpanID(), load.Parent().SpanID())
	}
	if attrOf(getA, attrSource) != "loaded" || attrOf(getA, attrCache) != "t" || getA.Status().Code == codes.Error {
		t.Fatalf("A's flight get: %v, %v", getA.Attributes(), getA.Status())
	}
	for _, op := range []string{"claim get", "claim claim-read", "claim commit-release"} {
		call := sa.one(t, "A", op)
		if call.Parent().SpanID() != getA.SpanContext().SpanID() {
			t.Errorf("A: %q is not a child of flight get", op)
		}
	}
	holder := load.SpanContext()

	// The committed value carries A's load span.
	raw, err := ba.Get(ctx, "t:k")
	if err != nil {
		t.Fatal(err)
	}
	e, err := a.decode(raw)
	if err != nil || e.origin == nil || e.origin.TraceID() != holder.TraceID() || e.origin.SpanID() != holder.SpanID() || !e.origin.IsSampled() {
		t.Fatalf("envelope: %v, span context %v, want A's load span %v", err, e.origin, holder)
	}

	// B: two flight gets under request B, both linking to A's load span;
	// the coalesced one links to the first too; the wait links to A.
	gets := sb.spanNamed(spanGet)
	if len(gets) != 2 {
		t.Fatalf("B: %d flight get spans", len(gets))
	}
	first, second := gets[0], gets[1]
	if attrOf(first, attrShared) == "true" {
		first, second = second, first
	}
	for _, g := range gets {
		if g.Parent().SpanID() != rootB.SpanContext().SpanID() || attrOf(g, attrSource) != "remote" || attrOf(g, attrCache) != "t" {
			t.Errorf("B's flight get: parent %v, attributes %v", g.Parent().SpanID(), g.Attributes())
		}
		if !linksTo(g, holder, "holder") {
			t.Errorf("B's flight get: links %v, want one to A's load span %v", g.Links(), holder)
		}
	}
	if attrOf(second, attrShared) != "true" || !linksTo(second, first.SpanContext(), "flight") {
		t.Errorf("B's coalesced caller: %v, links %v", second.Attributes(), second.Links())
	}
	wait := sb.one(t, "B", spanWait)
	if wait.Parent().SpanID() != first.SpanContext().SpanID() || !linksTo(wait, holder, "holder") {
		t.Errorf("B's wait: parent %v, links %v", wait.Parent().SpanID(), wait.Links())
	}
	if n := len(sb.spanNamed(spanLoad)); n != 0 {
		t.Errorf("B: %d load spans", n)
	}
	getC := sc.one(t, "C", spanGet)
	if attrOf(getC, attrSource) != "l2" || !linksTo(getC, holder, "holder") {
		t.Errorf("C's flight get: %v, links %v", getC.Attributes(), getC.Links())
	}

	// A failed load: error status on A's spans; B gets the published
	// error, linked to A's failed load.
	if _, err := a.Get(ctx, "bad", func(context.Context, string) (string, error) { return "", errTest }); !errors.Is(err, errTest) {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "bad", noLoad(t)); !errors.Is(err, ErrRemoteLoad) {
		t.Fatal(err)
	}
	failedGet, failedLoad := sa.spanNamed(spanGet)[1], sa.spanNamed(spanLoad)[1]
	for _, s := range []sdktrace.ReadOnlySpan{failedGet, failedLoad} {
		if s.Status().Code != codes.Error || attrOf(s, otelx.ErrorType) != "load" {
			t.Errorf("A's %s on a failed load: %v, %v", s.Name(), s.Status(), s.Attributes())
		}
	}
	remoteErr := sb.spanNamed(spanGet)[2]
	if remoteErr.Status().Code != codes.Error || attrOf(remoteErr, otelx.ErrorType) != "remote_load" || !linksTo(remoteErr, failedLoad.SpanContext(), "holder") {
		t.Errorf("B's flight get of a published error: %v, %v, links %v", remoteErr.Status(), remoteErr.Attributes(), remoteErr.Links())
	}

	// L1 hits are not traced.
	n := len(sa.spans.Started())
	wantSource(t, fetchOK(t, a, ctx, "k", noLoad(t)), SourceL1)
	if m := len(sa.spans.Started()); m != n {
		t.Errorf("an L1 hit started %d spans", m-n)
	}
}

// A background refresh is a "flight refresh" span, and callers that join
// it link to it.
func TestTraceRefresh(t *testing.T) {
	ctx := context.Background()
	s := newOtelSDK(t)
	b, err := memory.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	var calls int
	var mu sync.Mutex
	load := func(context.Context, string) (string, error) {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return fmt.Sprint("v", calls), nil
	}
	c := openCache(t, b, &Options[string]{Name: "r", TracerProvider: s.tp, TTL: 10 * time.Millisecond, TTLJitter: -1, StaleTTL: time.Hour})
	fetchOK(t, c, ctx, "k", load)
	time.Sleep(20 * time.Millisecond) // past the TTL: a lower bound
	wantSource(t, fetchOK(t, c, ctx, "k", load), SourceStale)
	idle(t, c)
	r := s.one(t, "refresh", spanRefresh)
	if attrOf(r, attrSource) != "loaded" || attrOf(r, attrCache) != "r" {
		t.Fatalf("refresh span: %v", r.Attributes())
	}
	if l := s.spanNamed(spanLoad); len(l) != 2 || l[1].Parent().SpanID() != r.SpanContext().SpanID() {
		t.Fatalf("the refresh's load is not its child")
	}
}

// Without a tracer provider, or with spans not sampled, the values a
// holder writes are the envelope of earlier releases: no span context,
// no bytes added.
func TestEnvelopeUntraced(t *testing.T) {
	ctx := context.Background()
	for name, tp := range map[string]trace.TracerProvider{
		"none":        nil,
		"not sampled": newOtelSDK(t, sdktrace.WithSampler(sdktrace.NeverSample())).tp,
	} {
		t.Run(name, func(t *testing.T) {
			b, err := memory.New(nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { b.Close() })
			c := openCache(t, b, &Options[string]{Name: "n", TracerProvider: tp})
			fetchOK(t, c, ctx, "k", func(context.Context, string) (string, error) { return "v", nil })
			raw, err := b.Get(ctx, "n:k")
			if err != nil {
				t.Fatal(err)
			}
			if want := envHeaderLen + 1 + len("string") + len(`"v"`); raw[2]&flagTraced != 0 || len(raw) != want {
				t.Fatalf("flags %#x, %d bytes; want no span context, %d bytes", raw[2], len(raw), want)
			}
			if err := parseReleased(raw); err != nil {
				t.Fatalf("an earlier release cannot read it: %v", err)
			}
		})
	}
}

// The span context round-trips; a release that predates it reads a
// traced value as a miss; a malformed one is corrupt.
func TestEnvelopeTraced(t *testing.T) {
	c := &Cache[string]{cfg: (&Options[string]{}).withDefaults()}
	now := time.Now()
	origin := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	for _, e := range []*entry[string]{
		{value: "v", written: now, freshTil: now.Add(time.Hour)},
		{failed: &RemoteError{Text: "boom"}, written: now, freshTil: now.Add(time.Second)},
	} {
		b, err := c.encode(e, &origin)
		if err != nil {
			t.Fatal(err)
		}
		untraced, _ := c.encode(e, nil)
		if len(b) != len(untraced)+envTraceLen {
			t.Fatalf("%d bytes traced, %d untraced", len(b), len(untraced))
		}
		out, err := c.decode(b)
		if err != nil || out.origin == nil || out.origin.TraceID() != origin.TraceID() || out.origin.SpanID() != origin.SpanID() ||
			out.origin.TraceFlags() != origin.TraceFlags() || !out.origin.IsRemote() || (e.failed == nil && out.value != "v") {
			t.Fatalf("round trip: %+v, %v", out, err)
		}
		if err := parseReleased(b); !errors.Is(err, errCorrupt) {
			t.Fatalf("an earlier release reads a traced value: %v, want a miss", err)
		}
		zero := slices.Clone(b)
		clear(zero[envHeaderLen : envHeaderLen+16]) // trace id all zero
		if _, err := parseEnvelope(zero); !errors.Is(err, errCorrupt) {
			t.Fatalf("invalid trace id: %v", err)
		}
		if _, err := parseEnvelope(b[:envHeaderLen+envTraceLen-1]); !errors.Is(err, errCorrupt) {
			t.Fatalf("short span context: %v", err)
		}
	}
}

// With an SDK installed for metrics and traces, an L1 hit still
// allocates nothing.
func TestL1HitDoesNotAllocateWithSDK(t *testing.T) {
	f := newFleet(t)
	s := newOtelSDK(t)
	c, _ := newCache(f, &Options[string]{MeterProvider: s.mp, TracerProvider: s.tp})
	load := func(context.Context, string) (string, error) { return "v", nil }
	ctx := context.Background()
	fetchOK(t, c, ctx, "apple inc", load)
	if n := testing.AllocsPerRun(100, func() { c.Get(ctx, "apple inc", load) }); n != 0 {
		t.Fatalf("L1 hit: %v allocations, want 0", n)
	}
}

// errorType names flight's errors.
func TestErrorType(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{&loadError{"k", errTest}, "load"},
		{&loadError{"k", &PanicError{Value: 1}}, "panic"},
		{&loadError{"k", ErrGoexit}, "panic"},
		{&loadError{"k", fmt.Errorf("%w after 1s", ErrLoadTimeout)}, "timeout"},
		{&loadError{"k", context.DeadlineExceeded}, "timeout"},
		{&loadError{"k", ErrNotFound}, "not_found"},
		{&RemoteError{Key: "k", Text: "x", TimedOut: true}, "remote_load"},
		{fmt.Errorf("flight: %q: %w", "k", ErrWaitTimeout), "wait_timeout"},
		{ErrClosed, "closed"},
		{fmt.Errorf("flight: get %q: %w", "k", driver.Misconfigured(errTest)), "config"},
		{fmt.Errorf("flight: get: %w: %w", ErrBackend, fmt.Errorf("x: %w", claim.ErrUnavailable)), "unavailable"},
		{context.Canceled, "canceled"},
	} {
		if got := errorType(c.err); got != c.want {
			t.Errorf("errorType(%v) = %q, want %q", c.err, got, c.want)
		}
	}
}

// A GetMany is one "flight get-many" span with the keys asked and how many
// failed; its loads are spans of their own under the trace.
func TestTraceGetMany(t *testing.T) {
	ctx := context.Background()
	s := newOtelSDK(t)
	b, err := memory.New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	c := openCache(t, b, &Options[string]{Name: "m", TracerProvider: s.tp})
	load := func(_ context.Context, keys []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range keys {
			if k != "missing" {
				out[k] = "v " + k
			}
		}
		return out, nil
	}
	res, err := c.GetMany(ctx, []string{"a", "b", "missing"}, load)
	if err != nil || len(res) != 3 {
		t.Fatalf("GetMany: %v, %v", res, err)
	}
	sp := s.one(t, "GetMany", spanGetMany)
	var keys, failed int64
	for _, a := range sp.Attributes() {
		switch a.Key {
		case attrKeys:
			keys = a.Value.AsInt64()
		case attrFailedKeys:
			failed = a.Value.AsInt64()
		}
	}
	if keys != 3 || failed != 1 || attrOf(sp, attrCache) != "m" {
		t.Errorf("get-many span: keys %d failed %d, attributes %v; want 3 and 1 (the missing key)", keys, failed, sp.Attributes())
	}
}
