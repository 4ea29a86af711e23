package flight

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Codec encodes values for L2. Implementations must be safe for concurrent
// use. JSON is the default; gob, protobuf or msgpack adapters are a few
// lines each.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec (encoding/json).
type JSON struct{}

// Marshal implements Codec.
func (JSON) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal implements Codec.
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// The L2 envelope: every value flight writes to the backend is
//
//	byte 0      magic 0xF1
//	byte 1      envelope version (1)
//	byte 2      flags: bit 0 not found (a cached negative answer);
//	            bit 1 failed (a published load error, Options.ErrorTTL);
//	            bit 2 timed out (with bit 1 only: the load timed out);
//	            bit 3 traced (the holder's span context follows);
//	            bit 4 stale window follows (the loader set it: SetExpiry);
//	            bit 5 fail-safe (an expired value published again for
//	            Options.FailSafeThrottle because the load failed)
//	bytes 3-10  written: Unix nanoseconds, big endian
//	bytes 11-18 fresh: nanoseconds after written the value is fresh
//	bytes 19-26 load: nanoseconds the load took (for early refresh)
//	25 bytes    only with bit 3: the span context of the holder's load
//	            (W3C trace context): trace id (16 bytes, not all zero),
//	            span id (8 bytes, not all zero), trace flags (1 byte)
//	8 bytes     only with bit 4: nanoseconds after fresh the value may be
//	            served stale, big endian
//	8 bytes     only with bit 5: nanoseconds after written the value may
//	            be answered fail-safe, big endian
//	uvarint     length of the schema, then the schema
//	rest        the value, encoded by the Codec; empty when not found;
//	            when failed, the holder's error text (UTF-8, at most 512
//	            bytes)
//
// A value that does not parse, or has another schema, is a miss. A reader
// refuses flags it does not know: the failed entries (bits 1 and 2) and
// the span context (bit 3) came without a new version number, so that a
// release that predates them reads them as misses (and loads) while it
// still reads every other value the same. A holder writes bit 3 only when
// a tracer provider is installed and its load span is sampled; without
// one, the bytes are what earlier releases wrote.
const (
	envMagic      = 0xF1
	envVersion    = 1
	envHeaderLen  = 27
	envTraceLen   = 16 + 8 + 1
	flagNotFound  = 1
	flagFailed    = 2
	flagTimedOut  = 4
	flagTraced    = 8
	flagStale     = 16
	flagFailSafe  = 32
	maxSchemaLen  = 1 << 10
	knownEnvFlags = flagNotFound | flagFailed | flagTimedOut | flagTraced | flagStale | flagFailSafe
)

var (
	errCorrupt = errors.New("flight: corrupt L2 value")
	errSchema  = errors.New("flight: L2 value has another schema")
	// errNoErrors: a published load error read by a Cache whose ErrorTTL
	// is off.
	errNoErrors = errors.New("flight: L2 value is a published load error, and ErrorTTL is off")
)

// envelope is a decoded L2 value's header; payload is the codec's bytes.
type envelope struct {
	notFound bool
	failed   bool // payload is the holder's error text
	timedOut bool // with failed
	written  time.Time
	fresh    time.Duration
	load     time.Duration
	schema   string
	payload  []byte
	// traced (bit 3): origin holds the holder's load span as written
	// (traceBytes). Bytes, not a trace.SpanContext: the envelope lives in
	// the frame of every L2 read, on the flight's young stack.
	traced bool
	origin [envTraceLen]byte
	// hasStale (bit 4): stale is the value's own stale window.
	hasStale bool
	stale    time.Duration
	failSafe bool          // bit 5
	failFor  time.Duration // with failSafe
}

func appendEnvelope(dst []byte, e envelope) []byte {
	var flags byte
	if e.notFound {
		flags |= flagNotFound
	}
	if e.failed {
		flags |= flagFailed
	}
	if e.timedOut {
		flags |= flagTimedOut
	}
	if e.traced {
		flags |= flagTraced
	}
	if e.hasStale {
		flags |= flagStale
	}
	if e.failSafe {
		flags |= flagFailSafe
	}
	dst = append(dst, envMagic, envVersion, flags)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.written.UnixNano()))
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.fresh))
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.load))
	if e.traced {
		dst = append(dst, e.origin[:]...)
	}
	if e.hasStale {
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.stale))
	}
	if e.failSafe {
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.failFor))
	}
	dst = binary.AppendUvarint(dst, uint64(len(e.schema)))
	dst = append(dst, e.schema...)
	return append(dst, e.payload...)
}

// parseEnvelope decodes the header. It never panics; any malformed input
// is errCorrupt. The payload aliases b.
func parseEnvelope(b []byte) (envelope, error) {
	var e envelope
	if len(b) < envHeaderLen || b[0] != envMagic {
		return e, errCorrupt
	}
	if b[1] != envVersion {
		return e, fmt.Errorf("%w: envelope version %d", errCorrupt, b[1])
	}
	flags := b[2]
	if flags&^knownEnvFlags != 0 {
		return e, fmt.Errorf("%w: unknown flags %#x", errCorrupt, flags)
	}
	e.notFound = flags&flagNotFound != 0
	e.failed = flags&flagFailed != 0
	e.timedOut = flags&flagTimedOut != 0
	if (e.notFound && e.failed) || (e.timedOut && !e.failed) {
		return e, fmt.Errorf("%w: flags %#x", errCorrupt, flags)
	}
	written := int64(binary.BigEndian.Uint64(b[3:]))
	fresh := int64(binary.BigEndian.Uint64(b[11:]))
	load := int64(binary.BigEndian.Uint64(b[19:]))
	if fresh < 0 || load < 0 {
		return e, fmt.Errorf("%w: negative duration", errCorrupt)
	}
	e.written = time.Unix(0, written)
	e.fresh = time.Duration(fresh)
	e.load = time.Duration(load)
	b = b[envHeaderLen:]
	if flags&flagTraced != 0 {
		if len(b) < envTraceLen {
			return e, fmt.Errorf("%w: short span context", errCorrupt)
		}
		e.traced = true
		e.origin = [envTraceLen]byte(b)
		if !validTrace(&e.origin) {
			return e, fmt.Errorf("%w: invalid span context", errCorrupt)
		}
		b = b[envTraceLen:]
	}
	if flags&flagStale != 0 {
		if len(b) < 8 {
			return e, fmt.Errorf("%w: short stale window", errCorrupt)
		}
		st := int64(binary.BigEndian.Uint64(b))
		if st < 0 || e.notFound || e.failed {
			return e, fmt.Errorf("%w: stale window %d with flags %#x", errCorrupt, st, flags)
		}
		e.hasStale, e.stale = true, time.Duration(st)
		b = b[8:]
	}
	if flags&flagFailSafe != 0 {
		if len(b) < 8 || e.notFound || e.failed {
			return e, fmt.Errorf("%w: fail-safe value with flags %#x", errCorrupt, flags)
		}
		ff := int64(binary.BigEndian.Uint64(b))
		if ff < 0 {
			return e, fmt.Errorf("%w: negative fail-safe window", errCorrupt)
		}
		e.failSafe, e.failFor = true, time.Duration(ff)
		b = b[8:]
	}
	n, k := binary.Uvarint(b)
	if k <= 0 || n > maxSchemaLen || uint64(len(b)-k) < n {
		return e, fmt.Errorf("%w: bad schema length", errCorrupt)
	}
	rest := b[k:]
	e.schema = string(rest[:n])
	e.payload = rest[n:]
	if e.notFound && len(e.payload) != 0 {
		return e, fmt.Errorf("%w: not-found value with a payload", errCorrupt)
	}
	if e.failed && len(e.payload) > maxErrorText {
		return e, fmt.Errorf("%w: error text over %d bytes", errCorrupt, maxErrorText)
	}
	return e, nil
}

// entry is one value as flight keeps it in L1 and hands it to callers:
// a value, a not-found, or a published load error (failed).
type entry[V any] struct {
	value    V
	notFound bool
	failed   *RemoteError  // a published load error: the callers' error
	written  time.Time     // when the load finished (writer's clock)
	freshTil time.Time     // fresh until
	staleTil time.Time     // may be served stale until
	load     time.Duration // how long the load took
	// failSafe: an expired value answered (and published for
	// Options.FailSafeThrottle) because its refresh failed: callers get
	// it with Source FailSafe.
	failSafe bool
	// failSafeTil, if set, is when the value stops being a fail-safe
	// answer (a fail-safe copy's limit, or an L1 copy's: failSafeLimit).
	failSafeTil time.Time
	// origin is the span of the load that produced a value read from L2,
	// when its holder was traced (the envelope's span context); nil
	// otherwise. Callers answered with it from L2 link their span to it.
	origin *trace.SpanContext
}

type freshness uint8

const (
	expired freshness = iota
	fresh
	stale
)

func (e *entry[V]) state(now time.Time) freshness {
	switch {
	case now.Before(e.freshTil):
		return fresh
	case now.Before(e.staleTil):
		return stale
	}
	return expired
}

// encode builds the L2 bytes of e; origin, if not nil, is the span of
// the load that produced it (see the envelope).
func (c *Cache[V]) encode(e *entry[V], origin *trace.SpanContext) ([]byte, error) {
	var payload []byte
	switch {
	case e.failed != nil:
		payload = []byte(e.failed.Text)
	case !e.notFound:
		p, err := c.cfg.Codec.Marshal(e.value)
		if err != nil {
			return nil, fmt.Errorf("flight: encode: %w", err)
		}
		payload = p
	}
	env := envelope{
		notFound: e.notFound,
		failed:   e.failed != nil,
		timedOut: e.failed != nil && e.failed.TimedOut,
		written:  e.written,
		fresh:    e.freshTil.Sub(e.written),
		load:     e.load,
		schema:   c.cfg.Schema,
		payload:  payload,
		failSafe: e.failSafe,
	}
	if e.failSafe {
		env.failFor = e.failSafeTil.Sub(e.written)
	}
	n := envHeaderLen + 8 + 2 + len(env.schema) + len(payload)
	if st := e.staleTil.Sub(e.freshTil); e.failed == nil && !e.notFound && st != c.cfg.StaleTTL && st >= 0 {
		env.hasStale, env.stale = true, st
		n += 8
	}
	if origin != nil {
		env.traced = true
		traceBytes(&env.origin, origin)
		n += envTraceLen
	}
	return appendEnvelope(make([]byte, 0, n), env), nil
}

// decode parses L2 bytes into an entry. Any failure (corrupt envelope,
// other schema, codec error) is an error; callers treat it as a miss.
func (c *Cache[V]) decode(b []byte) (*entry[V], error) {
	env, err := parseEnvelope(b)
	if err != nil {
		return nil, err
	}
	if env.schema != c.cfg.Schema {
		return nil, fmt.Errorf("%w: %q, want %q", errSchema, env.schema, c.cfg.Schema)
	}
	e := &entry[V]{
		notFound: env.notFound,
		written:  env.written,
		freshTil: env.written.Add(env.fresh),
		load:     env.load,
		failSafe: env.failSafe,
	}
	if env.failSafe {
		e.failSafeTil = env.written.Add(env.failFor)
	}
	if env.traced {
		e.origin = spanContextOf(&env.origin)
	}
	e.staleTil = e.freshTil
	switch {
	case env.failed:
		// A published error is kept no longer than this Cache's own
		// ErrorTTL after it was written, nor after now (a writer's clock
		// ahead of ours), whatever the writer says; a Cache with ErrorTTL
		// off keeps none (a miss: it loads).
		if c.cfg.ErrorTTL <= 0 {
			return nil, errNoErrors
		}
		for _, limit := range []time.Time{env.written.Add(c.cfg.ErrorTTL), time.Now().Add(c.cfg.ErrorTTL)} {
			if e.freshTil.After(limit) {
				e.freshTil = limit
			}
		}
		e.staleTil = e.freshTil
		// The key is filled in by the reader, which knows it (l2Decode).
		e.failed = &RemoteError{Text: string(env.payload), TimedOut: env.timedOut, Written: env.written}
	case !e.notFound:
		e.staleTil = e.freshTil.Add(c.cfg.StaleTTL)
		if env.hasStale {
			e.staleTil = e.freshTil.Add(env.stale)
		}
		if err := c.cfg.Codec.Unmarshal(env.payload, &e.value); err != nil {
			return nil, fmt.Errorf("%w: codec: %v", errCorrupt, err)
		}
	}
	return e, nil
}
