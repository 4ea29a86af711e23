// Package otelx is what stampede's packages (claim, flight) share to
// record OpenTelemetry metrics and traces through the OTel API only: the
// resolution of the meter and tracer (a provider given in Options, or the
// global one looked up at each call, so a provider installed after a
// Client was opened is used from then on), the attribute names, the
// error classes, and the duration buckets.
//
// With no provider installed (the global defaults) or a no-op one,
// Meter.Instruments and Tracer.Tracer answer "off" after an atomic load
// and a comparison, without allocating, so instrumented code pays almost
// nothing until a user installs an SDK.
package otelx

import (
	"context"
	"errors"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	mnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/stampede-go/stampede/claim/driver"
)

// Attribute keys stampede records, on metrics and spans alike.
const (
	// Backend is the backend's name (driver.Features.Name): "redis",
	// "postgres", "memory" ...
	Backend = attribute.Key("stampede.backend")
	// Operation is the Client operation: "claim", "get", "commit-release" ...
	Operation = attribute.Key("stampede.operation")
	// ErrorType is the semantic conventions' error.type: the error class
	// (ErrorType), absent when the call succeeded.
	ErrorType = attribute.Key("error.type")
)

// DurationBuckets are the explicit bucket boundaries, in seconds, of
// stampede's duration histograms: 50 µs (an in-process call) to 10 s
// (the longest a backend call waits by default is 5 s).
var DurationBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
	1, 2.5, 5, 10,
}

// Error classes: the values of error.type.
const (
	ClassConfig      = "config"      // driver.ErrConfig: credentials, permissions, missing table
	ClassUnavailable = "unavailable" // driver.ErrUnavailable: the backend failed to answer
	ClassTimeout     = "timeout"     // no answer within the operation timeout or the caller's deadline
	ClassHeld        = "held"        // driver.ErrHeld: an outcome (the key is held), not a failure
	ClassLost        = "lost"        // driver.ErrLost
	ClassNotFound    = "not_found"   // driver.ErrNotFound: an outcome (no value), not a failure
	ClassTooLarge    = "too_large"   // driver.ErrTooLarge
	ClassInvalidKey  = "invalid_key" // driver.ErrInvalidKey
	ClassClosed      = "closed"      // driver.ErrClosed
	ClassCanceled    = "canceled"    // the caller's context was cancelled
	ClassOther       = "_OTHER"      // none of the above (the semantic conventions' fallback)
)

// Classes lists every error class, in the order ErrorClass tests them.
var Classes = [...]string{ClassConfig, ClassHeld, ClassNotFound, ClassLost, ClassTooLarge, ClassInvalidKey,
	ClassClosed, ClassCanceled, ClassTimeout, ClassUnavailable, ClassOther}

// ErrorClass returns err's class, the value of error.type: "" for nil.
// A configuration error is "config" whatever else it wraps; a deadline
// is "timeout" even where it also matches ErrUnavailable (the operation
// timeout).
func ErrorClass(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, driver.ErrConfig):
		return ClassConfig
	case errors.Is(err, driver.ErrHeld):
		return ClassHeld
	case errors.Is(err, driver.ErrNotFound):
		return ClassNotFound
	case errors.Is(err, driver.ErrLost):
		return ClassLost
	case errors.Is(err, driver.ErrTooLarge):
		return ClassTooLarge
	case errors.Is(err, driver.ErrInvalidKey):
		return ClassInvalidKey
	case errors.Is(err, driver.ErrClosed):
		return ClassClosed
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, driver.ErrUnavailable):
		return ClassUnavailable
	}
	return ClassOther
}

// Failure reports whether an error of class is a failure, which sets a
// span's status to Error. The outcomes ErrHeld ("held") and ErrNotFound
// ("not_found") are answers, not failures; "" (no error) is none either.
func Failure(class string) bool {
	return class != "" && class != ClassHeld && class != ClassNotFound
}

// The global providers as the otel package starts them: delegates that
// record nothing until a provider is installed (otel.SetMeterProvider,
// otel.SetTracerProvider). nil if one was installed before this package
// was initialised (the global never returns to its default).
var (
	defaultMP = defaultOf(otel.GetMeterProvider())
	defaultTP = defaultOf(otel.GetTracerProvider())
)

// globalPkg is the package of the otel globals' default delegates.
const globalPkg = "go.opentelemetry.io/otel/internal/global"

func defaultOf[P any](p P) P {
	if t := reflect.TypeOf(p); t != nil && t.Kind() == reflect.Pointer && t.Elem().PkgPath() == globalPkg {
		return p
	}
	var none P
	return none
}

// same reports whether providers a and b are one, without comparing
// values of a type that cannot be compared (two of one such type are
// taken as one).
func same(a, b any) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb {
		return false
	}
	if !ta.Comparable() {
		return true
	}
	return a == b
}

// Meter resolves the instruments T of one instrumentation scope: built
// once per meter provider, by the function given to NewMeter. Safe for
// concurrent use; a nil *Meter records nothing.
type Meter[T any] struct {
	scope string
	build func(metric.Meter) T
	fixed *meterEntry[T] // a provider given to NewMeter
	cur   atomic.Pointer[meterEntry[T]]
}

type meterEntry[T any] struct {
	mp   metric.MeterProvider
	inst *T // nil: off
}

// NewMeter returns the Meter of scope (an import path, the
// instrumentation scope's name) on mp, or on the global meter provider
// at each call if mp is nil. build creates the instruments on a meter; it
// is called once per provider, and should report an instrument it cannot
// create to otel.Handle and use a no-op one instead.
func NewMeter[T any](mp metric.MeterProvider, scope string, build func(metric.Meter) T) *Meter[T] {
	m := &Meter[T]{scope: scope, build: build}
	if mp != nil {
		m.fixed = m.entry(mp)
	}
	return m
}

func (m *Meter[T]) entry(mp metric.MeterProvider) *meterEntry[T] {
	e := &meterEntry[T]{mp: mp}
	if _, off := mp.(mnoop.MeterProvider); !off {
		inst := m.build(mp.Meter(m.scope))
		e.inst = &inst
	}
	return e
}

// Instruments returns the instruments on the current meter provider, or
// nil when there is none to record into: the global provider is still
// the default, or a no-op one. It does not allocate then.
func (m *Meter[T]) Instruments() *T {
	if m == nil {
		return nil
	}
	if m.fixed != nil {
		return m.fixed.inst
	}
	mp := otel.GetMeterProvider()
	if mp == defaultMP {
		return nil
	}
	if e := m.cur.Load(); e != nil && same(e.mp, mp) {
		return e.inst
	}
	e := m.entry(mp)
	m.cur.Store(e)
	return e.inst
}

// Tracer resolves the tracer of one instrumentation scope. Safe for
// concurrent use; a nil *Tracer traces nothing.
type Tracer struct {
	scope string
	fixed *tracerEntry // a provider given to NewTracer
	cur   atomic.Pointer[tracerEntry]
}

type tracerEntry struct {
	tp trace.TracerProvider
	t  trace.Tracer // nil: off
}

// NewTracer returns the Tracer of scope on tp, or on the global tracer
// provider at each call if tp is nil.
func NewTracer(tp trace.TracerProvider, scope string) *Tracer {
	t := &Tracer{scope: scope}
	if tp != nil {
		t.fixed = t.entry(tp)
	}
	return t
}

func (t *Tracer) entry(tp trace.TracerProvider) *tracerEntry {
	e := &tracerEntry{tp: tp}
	if _, off := tp.(tnoop.TracerProvider); !off {
		e.t = tp.Tracer(t.scope)
	}
	return e
}

// Tracer returns the tracer on the current tracer provider, or nil when
// spans would go nowhere: the global provider is still the default, or a
// no-op one. Callers skip creating spans then; it does not allocate.
func (t *Tracer) Tracer() trace.Tracer {
	if t == nil {
		return nil
	}
	if t.fixed != nil {
		return t.fixed.t
	}
	tp := otel.GetTracerProvider()
	if tp == defaultTP {
		return nil
	}
	if e := t.cur.Load(); e != nil && same(e.tp, tp) {
		return e.t
	}
	e := t.entry(tp)
	t.cur.Store(e)
	return e.t
}
