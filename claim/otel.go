package claim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	mnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
	"github.com/stampede-go/stampede/internal/opctx"
	"github.com/stampede-go/stampede/internal/otelx"
)

// The names the Client records under (see the package doc, "Metrics
// and traces").
const (
	// MetricOperationDuration is the histogram of backend call durations,
	// in seconds ("stampede_claim_operation_duration_seconds" in
	// Prometheus).
	MetricOperationDuration = "stampede.claim.operation.duration"
	// MetricPollRequests is the counter of the requests a polling
	// backend (driver.PollCounter: memcached, DynamoDB, MariaDB) has
	// sent to read the keys its waiters wait on
	// ("stampede_claim_poll_requests_total" in Prometheus).
	MetricPollRequests = "stampede.claim.poll.requests"
	// InstrumentationScope is the name of the Client's meter and tracer.
	InstrumentationScope = "github.com/stampede-go/stampede/claim"
)

// opNames are the operations a Client records, in a fixed order (the
// index of the attribute tables). An operation missing here is recorded
// too, at the cost of building its attributes per call.
var opNames = [...]string{"claim", "claim-read", "extend", "release", "commit", "commit-release",
	"get", "set", "delete", "subscribe", "notify", "publish", "subscribe-topic", "ping",
	"revoke", "get-many", "claim-many", "commit-release-many", "subscribe-many", "release-many"}

// spanNames are the spans' names, "claim OP", in opNames' order.
var spanNames = func() (n [len(opNames)]string) {
	for i, op := range opNames {
		n[i] = "claim " + op
	}
	return n
}()

func opIndex(op string) int {
	for i, n := range opNames {
		if n == op {
			return i
		}
	}
	return -1
}

// classIndex is 0 for success, 1+i for otelx.Classes[i], -1 otherwise.
func classIndex(class string) int {
	if class == "" {
		return 0
	}
	for i, n := range otelx.Classes {
		if n == class {
			return 1 + i
		}
	}
	return -1
}

// instruments are the Client's metric instruments on one meter provider.
type instruments struct {
	duration metric.Float64Histogram
}

func newInstruments(m metric.Meter) instruments {
	d, err := m.Float64Histogram(MetricOperationDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Duration of the stampede claim client's backend calls, by operation, backend and error class."),
		metric.WithExplicitBucketBoundaries(otelx.DurationBuckets...))
	if err != nil {
		otel.Handle(err)
	}
	if d == nil {
		d = mnoop.Float64Histogram{}
	}
	return instruments{duration: d}
}

// telemetry is a Client's OpenTelemetry state: its meter and tracer
// (resolved per call, see otelx) and its attributes, built once, the
// first time something records.
type telemetry struct {
	backend string
	meter   *otelx.Meter[instruments]
	tracer  *otelx.Tracer
	once    sync.Once
	tab     *attrTable
	pollReg metric.Registration // the poll counter's callback (registerPolls); nil: none
}

// attrTable holds, per operation (and error class), the options every
// recording passes, so recording allocates nothing of its own. It
// depends on the backend's name only: Clients of one backend share one
// (tables).
type attrTable struct {
	rec  [len(opNames)][1 + len(otelx.Classes)][]metric.RecordOption
	span [len(opNames)][]trace.SpanStartOption
}

func (t *telemetry) init(o *Options, backend string) {
	t.backend = backend
	t.meter = otelx.NewMeter(o.MeterProvider, InstrumentationScope, newInstruments)
	t.tracer = otelx.NewTracer(o.TracerProvider, InstrumentationScope)
}

// registerPolls registers, on o.MeterProvider (else the global provider,
// whose delegate forwards to a provider installed later), the observable
// counter MetricPollRequests of pc, read when the metrics are collected,
// with the attribute stampede.backend; closePolls unregisters it.
func (t *telemetry) registerPolls(o *Options, pc driver.PollCounter) {
	mp := o.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if _, off := mp.(mnoop.MeterProvider); off {
		return
	}
	m := mp.Meter(InstrumentationScope)
	ctr, err := m.Int64ObservableCounter(MetricPollRequests, metric.WithUnit("{request}"),
		metric.WithDescription("Requests a polling backend has sent to read the keys its waiters wait on (a batch of keys read together counts once), by backend."))
	if err != nil {
		otel.Handle(fmt.Errorf("claim: metrics: %w", err))
		return
	}
	opt := metric.WithAttributeSet(attribute.NewSet(otelx.Backend.String(t.backend)))
	reg, err := m.RegisterCallback(func(_ context.Context, ob metric.Observer) error {
		ob.ObserveInt64(ctr, int64(pc.PollReads()), opt)
		return nil
	}, ctr)
	if err != nil {
		otel.Handle(fmt.Errorf("claim: metrics: %w", err))
		return
	}
	t.pollReg = reg
}

// closePolls unregisters registerPolls' callback.
func (t *telemetry) closePolls() {
	if t.pollReg == nil {
		return
	}
	if err := t.pollReg.Unregister(); err != nil {
		otel.Handle(fmt.Errorf("claim: metrics: %w", err))
	}
}

func (t *telemetry) attrs(op, class string) []attribute.KeyValue {
	return attrs(t.backend, op, class)
}

func attrs(backend, op, class string) []attribute.KeyValue {
	kv := []attribute.KeyValue{otelx.Operation.String(op), otelx.Backend.String(backend)}
	if class != "" {
		kv = append(kv, otelx.ErrorType.String(class))
	}
	return kv
}

// tables are the attribute tables built so far, by backend name.
var tables sync.Map // string -> *attrTable

func (t *telemetry) table() *attrTable {
	t.once.Do(func() {
		if tab, ok := tables.Load(t.backend); ok {
			t.tab = tab.(*attrTable)
			return
		}
		tab, _ := tables.LoadOrStore(t.backend, newAttrTable(t.backend))
		t.tab = tab.(*attrTable)
	})
	return t.tab
}

func newAttrTable(backend string) *attrTable {
	tab := new(attrTable)
	for i, op := range opNames {
		tab.span[i] = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs(backend, op, "")...)}
		for j := range tab.rec[i] {
			class := ""
			if j > 0 {
				class = otelx.Classes[j-1]
			}
			tab.rec[i][j] = []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(attrs(backend, op, class)...))}
		}
	}
	return tab
}

func (t *telemetry) spanStart(op string) (string, []trace.SpanStartOption) {
	if i := opIndex(op); i >= 0 {
		return spanNames[i], t.table().span[i]
	}
	return "claim " + op, []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(t.attrs(op, "")...)}
}

func (t *telemetry) recordOptions(op, class string) []metric.RecordOption {
	if i, j := opIndex(op), classIndex(class); i >= 0 && j >= 0 {
		return t.table().rec[i][j]
	}
	return []metric.RecordOption{metric.WithAttributeSet(attribute.NewSet(t.attrs(op, class)...))}
}

// stopCtx is the context of one backend call: an *opctx.Ctx, or a
// *tracedCtx when the call has a span.
type stopCtx interface {
	context.Context
	// Stop ends the call's context (and its span).
	Stop()
}

// tracedCtx is the context of a backend call with a span: the span is
// in it, so the driver's own spans are its children.
type tracedCtx struct {
	*opctx.Ctx
	sctx context.Context // the caller's context with the span
	span trace.Span
}

// Stop stops the context and ends the span: a call that ends without
// end (Extend refused without I/O) leaves no span open.
func (t *tracedCtx) Stop() {
	t.Ctx.Stop()
	t.span.End()
}

// startSpan starts op's span as a child of the caller's span in ctx.
func (c *Client) startSpan(ctx context.Context, tr trace.Tracer, op string, deadline time.Time) *tracedCtx {
	name, opts := c.tel.spanStart(op)
	sctx, span := tr.Start(ctx, name, opts...)
	return &tracedCtx{Ctx: opctx.New(sctx, deadline), sctx: sctx, span: span}
}

// finish ends the span of a call that returned err (classified): its
// error class, and an Error status unless the class is an outcome
// (held, not_found).
func (t *tracedCtx) finish(err error) {
	if class := otelx.ErrorClass(err); class != "" {
		t.span.SetAttributes(otelx.ErrorType.String(class))
		if otelx.Failure(class) {
			t.span.SetStatus(codes.Error, err.Error())
		}
	}
	t.Stop()
}

// record adds a finished call to the duration histogram, if a meter
// provider is installed and the histogram is enabled.
func (c *Client) record(ctx context.Context, cl call, err error) {
	inst := c.tel.meter.Instruments()
	if inst == nil || !inst.duration.Enabled(ctx) {
		return
	}
	d := clock.Since(cl.start).Seconds()
	inst.duration.Record(ctx, d, c.tel.recordOptions(cl.op, otelx.ErrorClass(err))...)
}
