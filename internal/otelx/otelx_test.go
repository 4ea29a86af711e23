package otelx

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/metric"
	mnoop "go.opentelemetry.io/otel/metric/noop"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/stampede-go/stampede/claim/driver"
)

func TestErrorClass(t *testing.T) {
	timeout := fmt.Errorf("%w: no answer within 5s (the operation timeout): %w", driver.ErrUnavailable, context.DeadlineExceeded)
	for _, tc := range []struct {
		err   error
		class string
		fail  bool
	}{
		{nil, "", false},
		{fmt.Errorf("claim: claim %q: %w", "k", &driver.HeldError{}), ClassHeld, false},
		{fmt.Errorf("claim: get %q: %w", "k", driver.ErrNotFound), ClassNotFound, false},
		{driver.ErrLost, ClassLost, true},
		{driver.Misconfigured(errors.New("NOAUTH")), ClassConfig, true},
		{fmt.Errorf("%w: %w", driver.Misconfigured(errors.New("NOAUTH")), context.DeadlineExceeded), ClassConfig, true},
		{timeout, ClassTimeout, true},
		{fmt.Errorf("%w: connection refused", driver.ErrUnavailable), ClassUnavailable, true},
		{fmt.Errorf("%w: %w", context.Canceled, errors.New("read: EOF")), ClassCanceled, true},
		{driver.ErrTooLarge, ClassTooLarge, true},
		{driver.ErrInvalidKey, ClassInvalidKey, true},
		{driver.ErrClosed, ClassClosed, true},
		{errors.New("something else"), ClassOther, true},
	} {
		if c := ErrorClass(tc.err); c != tc.class || Failure(c) != tc.fail {
			t.Errorf("ErrorClass(%v) = %q (failure %v), want %q (%v)", tc.err, c, Failure(c), tc.class, tc.fail)
		}
	}
}

// A provider given explicitly is used as it is; a no-op one is off.
func TestFixedProviders(t *testing.T) {
	built := 0
	m := NewMeter(mnoop.NewMeterProvider(), "scope", func(metric.Meter) int { built++; return built })
	if m.Instruments() != nil || built != 0 {
		t.Errorf("no-op meter provider: instruments %v, built %d times", m.Instruments(), built)
	}
	if tr := NewTracer(tnoop.NewTracerProvider(), "scope").Tracer(); tr != nil {
		t.Errorf("no-op tracer provider: tracer %v", tr)
	}
	var nilMeter *Meter[int]
	var nilTracer *Tracer
	if nilMeter.Instruments() != nil || nilTracer.Tracer() != nil {
		t.Error("a nil Meter or Tracer records")
	}
	// With the otel globals still at their defaults, nothing to record.
	if NewMeter(nil, "scope", func(metric.Meter) int { return 1 }).Instruments() != nil || NewTracer(nil, "scope").Tracer() != nil {
		t.Error("default globals: want off")
	}
}

// same never compares values of a type that cannot be compared.
func TestSame(t *testing.T) {
	type uncomparable struct{ m map[string]int }
	a, b := uncomparable{map[string]int{}}, uncomparable{map[string]int{}}
	p, q := new(int), new(int)
	if !same(a, b) || same(a, p) || !same(p, p) || same(p, q) {
		t.Error("same: wrong answer")
	}
}

// BenchmarkOff is what instrumented code pays per call with no provider
// installed: the tracer and meter look-ups that answer "off".
func BenchmarkOff(b *testing.B) {
	m := NewMeter(nil, "scope", func(metric.Meter) int { return 1 })
	tr := NewTracer(nil, "scope")
	b.ReportAllocs()
	for b.Loop() {
		if m.Instruments() != nil || tr.Tracer() != nil {
			b.Fatal("on")
		}
	}
}
