package flight

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	mnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/otelx"
)

// InstrumentationScope is the name of a Cache's meter and tracer (see
// "Metrics and traces" in the package doc).
const InstrumentationScope = "github.com/stampede-go/stampede/flight"

// The instruments' names.
const (
	metricAnswers      = "stampede.flight.answers"
	metricDegraded     = "stampede.flight.degraded"
	metricWaitDuration = "stampede.flight.wait.duration"
	metricLoadDuration = "stampede.flight.load.duration"
)

// The spans' names.
const (
	spanGet     = "flight get"
	spanGetMany = "flight get-many"
	spanRefresh = "flight refresh"
	spanWait    = "flight wait"
	spanLoad    = "flight load"
)

// Attribute keys of the Cache's metrics and spans (error.type is
// otelx.ErrorType).
const (
	// attrCache is Options.Name, on every instrument and span.
	attrCache = attribute.Key("stampede.cache")
	// attrSource is the tier that answered (sourceAttr), or "error".
	attrSource = attribute.Key("stampede.source")
	// attrShared: the caller joined a flight another caller had started.
	attrShared = attribute.Key("stampede.shared")
	// attrLink says what a span link points at: "holder" (the load, in
	// any process, that produced the value) or "flight" (the span of the
	// caller that started the flight this caller joined).
	attrLink = attribute.Key("stampede.link")
	// attrKeys is the number of keys a GetMany asked; attrFailedKeys how
	// many of them have an error in their Result.
	attrKeys       = attribute.Key("stampede.keys")
	attrFailedKeys = attribute.Key("stampede.failed_keys")
)

// sourceAttr are the values of stampede.source, by Source.
var sourceAttr = [...]string{"none", "l1", "l2", "loaded", "remote", "stale", "fallback", "fail_safe"}

// sourceName is s's stampede.source value.
func sourceName(s Source) string {
	if int(s) < len(sourceAttr) {
		return sourceAttr[s]
	}
	return "unknown"
}

// answerSources are the series of stampede.flight.answers: the Stats
// fields of Requests, in that order.
var answerSources = [...]string{"l1", "l2", "loaded", "remote", "stale", "fallback", "fail_safe", "error"}

func answerCounts(s *Stats) [len(answerSources)]uint64 {
	return [...]uint64{s.L1Hits, s.L2Hits, s.Loaded, s.Remote, s.Stale, s.Fallbacks, s.FailSafe, s.Errors}
}

// counterDefs are the observable counters other than answers, one per
// Stats counter, read when the metrics are collected.
var counterDefs = [...]struct {
	name, unit, desc string
	get              func(*Stats) uint64
}{
	{"stampede.flight.coalesced", "{call}", "Callers that joined a flight another caller in the process had started.", func(s *Stats) uint64 { return s.Coalesced }},
	{"stampede.flight.misses", "{flight}", "Flights that found no usable value in L2.", func(s *Stats) uint64 { return s.Misses }},
	{"stampede.flight.loads", "{load}", "Loader calls.", func(s *Stats) uint64 { return s.Loads }},
	{"stampede.flight.load_errors", "{load}", "Loader calls that failed (panics and timeouts included).", func(s *Stats) uint64 { return s.LoadErrors }},
	{"stampede.flight.waits", "{flight}", "Flights that waited for another process's holder.", func(s *Stats) uint64 { return s.Waits }},
	{"stampede.flight.takeovers", "{claim}", "Claims won after waiting for another holder.", func(s *Stats) uint64 { return s.Takeovers }},
	{"stampede.flight.commits", "{commit}", "Values committed to L2.", func(s *Stats) uint64 { return s.Commits }},
	{"stampede.flight.error_commits", "{commit}", "Load errors committed to L2 for Options.ErrorTTL.", func(s *Stats) uint64 { return s.ErrorCommits }},
	{"stampede.flight.error_hits", "{answer}", "Callers answered with a published load error, without a load.", func(s *Stats) uint64 { return s.ErrorHits }},
	{"stampede.flight.lost_commits", "{commit}", "Commits refused because the holder's lease was lost.", func(s *Stats) uint64 { return s.LostCommits }},
	{"stampede.flight.refreshes", "{flight}", "Background refreshes (stale-while-revalidate, early refresh).", func(s *Stats) uint64 { return s.Refreshes }},
	{"stampede.flight.fail_open", "{flight}", "Flights that loaded without the backend (fail open).", func(s *Stats) uint64 { return s.FailOpen }},
	{"stampede.flight.decode_errors", "{value}", "L2 values that failed to decode, read as misses.", func(s *Stats) uint64 { return s.DecodeErrors }},
	{"stampede.flight.invalidations", "{drop}", "L1 drops by Invalidate, local or broadcast.", func(s *Stats) uint64 { return s.Invalidated }},
}

// degradedClasses are the series of stampede.flight.degraded, by
// error.type: one is 1 while the Cache is Degraded with that class.
var degradedClasses = [...]string{otelx.ClassConfig, otelx.ClassUnavailable}

// histograms are the Cache's synchronous instruments on one meter
// provider (otelx.Meter resolves them).
type histograms struct {
	wait, load metric.Float64Histogram
}

func newHistograms(m metric.Meter) histograms {
	h := histograms{
		wait: histogram(m, metricWaitDuration, "Time flights waited for another process's holder, from the first held claim to the value, the takeover or the error."),
		load: histogram(m, metricLoadDuration, "Duration of the loader calls."),
	}
	return h
}

func histogram(m metric.Meter, name, desc string) metric.Float64Histogram {
	h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
		metric.WithExplicitBucketBoundaries(otelx.DurationBuckets...))
	if err != nil {
		otel.Handle(err)
	}
	if h == nil {
		return mnoop.Float64Histogram{}
	}
	return h
}

// telemetry is a Cache's OpenTelemetry state: the histograms and the
// tracer (resolved per use, see otelx), the registration of the
// observable instruments' callback (New to Close), and the options every
// recording and span passes, built once in New.
type telemetry struct {
	meter  *otelx.Meter[histograms]
	tracer *otelx.Tracer
	reg    metric.Registration // nil: none registered
	rec    []metric.RecordOption
	span   []trace.SpanStartOption
	attrs  []attribute.KeyValue // stampede.cache
}

// initTelemetry sets up c's telemetry: the histograms and tracer, and the
// observable instruments, registered on Options.MeterProvider (else the
// global provider, whose delegate forwards them to a provider installed
// later). The callback reads Stats when the metrics are collected, so the
// paths that count cost nothing more.
func (c *Cache[V]) initTelemetry() {
	t := &c.tel
	t.attrs = []attribute.KeyValue{attrCache.String(c.cfg.Name)}
	t.rec = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(t.attrs...))}
	t.span = []trace.SpanStartOption{trace.WithAttributes(t.attrs...)}
	t.meter = otelx.NewMeter(c.cfg.MeterProvider, InstrumentationScope, newHistograms)
	t.tracer = otelx.NewTracer(c.cfg.TracerProvider, InstrumentationScope)
	mp := c.cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if _, off := mp.(mnoop.MeterProvider); off {
		return
	}
	reg, err := c.registerObservables(mp.Meter(InstrumentationScope))
	if err != nil {
		otel.Handle(fmt.Errorf("flight: cache %q: metrics: %w", c.cfg.Name, err))
		return
	}
	t.reg = reg
}

// registerObservables creates the observable instruments on m and
// registers the callback that observes them.
func (c *Cache[V]) registerObservables(m metric.Meter) (metric.Registration, error) {
	var errs []error
	answers, err := m.Int64ObservableCounter(metricAnswers, metric.WithUnit("{answer}"),
		metric.WithDescription("Get and Fetch callers, by the tier that answered (stampede.source: l1, l2, loaded, remote, stale, fallback, fail_safe) or error."))
	errs = append(errs, err)
	var counters [len(counterDefs)]metric.Int64ObservableCounter
	for i, d := range counterDefs {
		counters[i], err = m.Int64ObservableCounter(d.name, metric.WithUnit(d.unit), metric.WithDescription(d.desc))
		errs = append(errs, err)
	}
	degraded, err := m.Int64ObservableGauge(metricDegraded, metric.WithUnit("{state}"),
		metric.WithDescription("1 while the cache is degraded (a backend call failed) with the class in error.type (config, unavailable), 0 otherwise."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	base := attribute.NewSet(c.tel.attrs...)
	cacheOpt := metric.WithAttributeSet(base)
	var srcOpt [len(answerSources)]metric.ObserveOption
	for i, s := range answerSources {
		srcOpt[i] = metric.WithAttributeSet(attribute.NewSet(append(c.tel.attrs[:1:1], attrSource.String(s))...))
	}
	var degOpt [len(degradedClasses)]metric.ObserveOption
	for i, class := range degradedClasses {
		degOpt[i] = metric.WithAttributeSet(attribute.NewSet(append(c.tel.attrs[:1:1], otelx.ErrorType.String(class))...))
	}
	insts := make([]metric.Observable, 0, 2+len(counters))
	insts = append(insts, answers, degraded)
	for _, o := range counters {
		insts = append(insts, o)
	}
	return m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := c.Stats()
		for i, n := range answerCounts(&st) {
			o.ObserveInt64(answers, int64(n), srcOpt[i])
		}
		for i, d := range counterDefs {
			o.ObserveInt64(counters[i], int64(d.get(&st)), cacheOpt)
		}
		for i, class := range degradedClasses {
			var v int64
			if st.Health.State == Degraded && className(st.Health.Class) == class {
				v = 1
			}
			o.ObserveInt64(degraded, v, degOpt[i])
		}
		return nil
	}, insts...)
}

// closeTelemetry unregisters the observable instruments' callback.
func (c *Cache[V]) closeTelemetry() {
	if c.tel.reg == nil {
		return
	}
	if err := c.tel.reg.Unregister(); err != nil {
		otel.Handle(fmt.Errorf("flight: cache %q: metrics: %w", c.cfg.Name, err))
	}
	c.tel.reg = nil
}

// recordOptions are the options of a recording that ended with err.
func (t *telemetry) recordOptions(err error) []metric.RecordOption {
	class := errorType(err)
	if class == "" {
		return t.rec
	}
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(append(t.attrs[:1:1], otelx.ErrorType.String(class))...))}
}

// recordWait adds a wait that ended with err to the wait-time histogram.
func (c *Cache[V]) recordWait(ctx context.Context, f *flight[V], err error) {
	if inst := c.tel.meter.Instruments(); inst != nil && inst.wait.Enabled(ctx) {
		inst.wait.Record(ctx, time.Since(f.waitStart).Seconds(), c.tel.recordOptions(err)...)
	}
}

// startLoad starts the "flight load" span of f's loader call, if traced:
// a child of the flight's span, the parent of the loader's own spans,
// whose span context the holder writes with the value (f.origin). It
// returns the context to load under; loaded ends the call. Not inlined,
// like startSpan.
//
//go:noinline
func (c *Cache[V]) startLoad(ctx context.Context, f *flight[V]) (context.Context, trace.Span) {
	ctx, span := c.startSpan(ctx, spanLoad)
	if span != nil && f.tr != nil {
		f.tr.loadSpan = span.SpanContext()
	}
	return ctx, span
}

// loaded records a loader call that took dur and ended with err: the
// load-duration histogram, and its span (nil: not traced), which ends.
// ctx is the call's, from startLoad. Not inlined, like startSpan.
//
//go:noinline
func (c *Cache[V]) loaded(ctx context.Context, span trace.Span, dur time.Duration, err error) {
	if inst := c.tel.meter.Instruments(); inst != nil && inst.load.Enabled(ctx) {
		inst.load.Record(ctx, dur.Seconds(), c.tel.recordOptions(err)...)
	}
	if span != nil {
		finishSpan(span, err)
	}
}

// errorType is the error.type of a flight's or a caller's error: the
// classes of package otelx, and those of flight's own errors:
// "remote_load" (a published load error, ErrRemoteLoad), "wait_timeout"
// (ErrWaitTimeout), "panic" (the loader panicked or called Goexit),
// "load" (any other loader error). A load timeout is "timeout".
func errorType(err error) string {
	var le *loadError
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrRemoteLoad):
		return "remote_load"
	case errors.Is(err, claim.ErrConfig):
		return otelx.ClassConfig
	case errors.Is(err, ErrClosed):
		return otelx.ClassClosed
	case errors.Is(err, ErrWaitTimeout):
		return "wait_timeout"
	case errors.Is(err, ErrLoadTimeout):
		return otelx.ClassTimeout
	case errors.As(err, &le):
		var pe *PanicError
		switch {
		case errors.As(err, &pe) || errors.Is(err, ErrGoexit):
			return "panic"
		case errors.Is(err, context.DeadlineExceeded):
			return otelx.ClassTimeout
		case isNotFound(err):
			return otelx.ClassNotFound
		}
		return "load"
	case errors.Is(err, ErrBackend):
		if class := otelx.ErrorClass(err); class != otelx.ClassOther {
			return class
		}
		return otelx.ClassUnavailable
	}
	return otelx.ErrorClass(err)
}

// startSpan starts span name, a child of the span in ctx, if a tracer
// provider is installed; nil otherwise (ctx returned as is). Not inlined:
// its callers' frames, on young goroutine stacks, stay small.
//
//go:noinline
func (c *Cache[V]) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	tr := c.tel.tracer.Tracer()
	if tr == nil {
		return ctx, nil
	}
	return tr.Start(ctx, name, c.tel.span...)
}

// holderLink is the attribute of a link to the load that produced a
// value; flightLink of a link to the flight a caller joined.
var (
	holderLink = []attribute.KeyValue{attrLink.String("holder")}
	flightLink = []attribute.KeyValue{attrLink.String("flight")}
)

// linkOrigin links span to the load that produced e, if e was read from
// L2 (src L2 or Remote) and its holder was traced.
func linkOrigin[V any](span trace.Span, e *entry[V], src Source) {
	if e != nil && e.origin != nil && (src == SourceL2 || src == SourceRemote) {
		span.AddLink(trace.Link{SpanContext: *e.origin, Attributes: holderLink})
	}
}

// joined ends span, a caller's "flight get" (nil: not traced), with the
// caller's answer a and err, which it returns. Not inlined, like
// startSpan.
//
//go:noinline
func joined[V any](span trace.Span, a answer[V], err error) (answer[V], error) {
	if span != nil {
		endSpan(span, a.e, a.src, a.shared, err)
	}
	return a, err
}

// endSpan ends a "flight get" or "flight refresh" span: the answer's
// source, whether it was shared, a link to the holder's load if the value
// came from L2, and error.type and an Error status on failure (a
// not-found is an answer, not a failure).
func endSpan[V any](span trace.Span, e *entry[V], src Source, shared bool, err error) {
	linkOrigin(span, e, src)
	if src != SourceNone {
		span.SetAttributes(attrSource.String(sourceName(src)))
	}
	if shared {
		span.SetAttributes(attrShared.Bool(true))
	}
	finishSpan(span, err)
}

// finishSpan sets err's error.type and status on span and ends it.
func finishSpan(span trace.Span, err error) {
	if class := errorType(err); class != "" {
		span.SetAttributes(otelx.ErrorType.String(class))
		if otelx.Failure(class) {
			span.SetStatus(codes.Error, err.Error())
		}
	}
	span.End()
}

// traceBytes writes sc into b as the envelope stores it: trace id, span
// id, trace flags. Not inlined, like spanContextOf.
//
//go:noinline
func traceBytes(b *[envTraceLen]byte, sc *trace.SpanContext) {
	tid, sid := sc.TraceID(), sc.SpanID()
	copy(b[:16], tid[:])
	copy(b[16:24], sid[:])
	b[24] = byte(sc.TraceFlags())
}

// validTrace reports whether b (traceBytes) has a valid trace id and
// span id (neither all zero).
func validTrace(b *[envTraceLen]byte) bool {
	return trace.TraceID(b[:16]).IsValid() && trace.SpanID(b[16:24]).IsValid()
}

// spanContextOf is the remote span context that b (traceBytes) holds. It
// is not inlined, so that the L2 read's frame does not grow by its
// temporaries (only traced values call it).
//
//go:noinline
func spanContextOf(b *[envTraceLen]byte) *trace.SpanContext {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID(b[:16]),
		SpanID:     trace.SpanID(b[16:24]),
		TraceFlags: trace.TraceFlags(b[24]),
		Remote:     true,
	})
	return &sc
}

// origin is what a holder writes in the envelope of f's value: the span
// context of f's load, if it was sampled (a link to a span that was not
// recorded would lead nowhere); nil otherwise, which adds no bytes. Not
// inlined, like spanContextOf.
//
//go:noinline
func (f *flight[V]) origin() *trace.SpanContext {
	if f.tr != nil && f.tr.loadSpan.IsValid() && f.tr.loadSpan.IsSampled() {
		return &f.tr.loadSpan
	}
	return nil
}

// traceFlight is the trace state of a flight started under span.
//
//go:noinline
func traceFlight(span trace.Span) *flightTrace {
	return &flightTrace{sc: span.SpanContext()}
}

// linkFlight links span, of a caller that joined a flight, to the span
// that started the flight (tr.sc).
//
//go:noinline
func linkFlight(span trace.Span, tr *flightTrace) {
	if tr.sc.IsValid() {
		span.AddLink(trace.Link{SpanContext: tr.sc, Attributes: flightLink})
	}
}
