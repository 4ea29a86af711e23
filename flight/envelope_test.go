package flight

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	c := &Cache[map[string]int]{cfg: (&Options[map[string]int]{StaleTTL: time.Minute}).withDefaults()}
	now := time.Unix(1700000000, 123)
	in := &entry[map[string]int]{value: map[string]int{"a": 1}, written: now, freshTil: now.Add(time.Hour), load: 150 * time.Millisecond}
	b, err := c.encode(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if out.value["a"] != 1 || !out.written.Equal(now) || !out.freshTil.Equal(in.freshTil) ||
		!out.staleTil.Equal(in.freshTil.Add(time.Minute)) || out.load != in.load || out.notFound {
		t.Fatalf("round trip: %+v -> %+v", in, out)
	}
	neg := &entry[map[string]int]{notFound: true, written: now, freshTil: now.Add(time.Second)}
	b, _ = c.encode(neg, nil)
	out, err = c.decode(b)
	if err != nil || !out.notFound || !out.staleTil.Equal(out.freshTil) {
		t.Fatalf("negative round trip: %+v, %v", out, err)
	}
	if c.cfg.Schema != "map[string]int" {
		t.Fatalf("default schema %q", c.cfg.Schema)
	}
	for _, timedOut := range []bool{false, true} {
		failed := &entry[map[string]int]{failed: &RemoteError{Key: "k", Text: "db down", TimedOut: timedOut, Written: now, err: errTest},
			written: now, freshTil: now.Add(time.Second), staleTil: now.Add(time.Second)}
		b, _ = c.encode(failed, nil)
		out, err = c.decode(b)
		if err != nil || out.failed == nil || out.notFound || out.value != nil || !out.staleTil.Equal(out.freshTil) ||
			!out.freshTil.Equal(failed.freshTil) || out.failed.Text != "db down" || out.failed.TimedOut != timedOut ||
			!out.failed.Written.Equal(now) || out.failed.Unwrap() != nil {
			t.Fatalf("failed round trip: %+v (%+v), %v", out, out.failed, err)
		}
	}
}

// parseReleased is parseEnvelope as released before failed entries
// (flight's first envelope, version 1, with only the not-found flag),
// kept verbatim in its checks: what a process still running that release
// makes of what this one writes.
func parseReleased(b []byte) error {
	if len(b) < envHeaderLen || b[0] != 0xF1 {
		return errCorrupt
	}
	if b[1] != 1 {
		return fmt.Errorf("%w: envelope version %d", errCorrupt, b[1])
	}
	if flags := b[2]; flags&^1 != 0 {
		return fmt.Errorf("%w: unknown flags %#x", errCorrupt, flags)
	}
	n, k := binary.Uvarint(b[envHeaderLen:])
	if k <= 0 || n > 1<<10 || uint64(len(b)-envHeaderLen-k) < n {
		return fmt.Errorf("%w: bad schema length", errCorrupt)
	}
	return nil
}

// A release that predates failed entries reads them as misses (it loads),
// and still reads every value and not-found this one writes.
func TestEnvelopeFailedIsMissForOlderReaders(t *testing.T) {
	c := &Cache[string]{cfg: (&Options[string]{}).withDefaults()}
	now := time.Now()
	for _, tc := range []struct {
		e    *entry[string]
		miss bool
	}{
		{&entry[string]{value: "v", written: now, freshTil: now.Add(time.Hour)}, false},
		{&entry[string]{notFound: true, written: now, freshTil: now.Add(time.Hour)}, false},
		{&entry[string]{failed: &RemoteError{Text: "boom"}, written: now, freshTil: now.Add(time.Second)}, true},
		{&entry[string]{failed: &RemoteError{Text: "slow", TimedOut: true}, written: now, freshTil: now.Add(time.Second)}, true},
	} {
		b, err := c.encode(tc.e, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := parseReleased(b); (err != nil) != tc.miss || (tc.miss && !errors.Is(err, errCorrupt)) {
			t.Fatalf("older reader on %+v: %v, want a miss: %v", tc.e, err, tc.miss)
		}
	}
}

// Flag combinations that cannot be written are corrupt.
func TestEnvelopeBadFlags(t *testing.T) {
	now := time.Now()
	ok := appendEnvelope(nil, envelope{failed: true, written: now, schema: "string", payload: []byte("boom")})
	for name, flags := range map[string]byte{
		"failed and not found": flagFailed | flagNotFound,
		"timed out alone":      flagTimedOut,
		"unknown":              16,
	} {
		b := bytes.Clone(ok)
		b[2] = flags
		if _, err := parseEnvelope(b); !errors.Is(err, errCorrupt) {
			t.Errorf("%s: %v, want corrupt", name, err)
		}
	}
	long := appendEnvelope(nil, envelope{failed: true, written: now, schema: "string", payload: bytes.Repeat([]byte("x"), maxErrorText+1)})
	if _, err := parseEnvelope(long); !errors.Is(err, errCorrupt) {
		t.Errorf("error text over the bound: %v, want corrupt", err)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	now := time.Unix(1700000000, 0)
	f.Add(appendEnvelope(nil, envelope{written: now, fresh: time.Hour, load: time.Second, schema: "string", payload: []byte(`"x"`)}))
	f.Add(appendEnvelope(nil, envelope{notFound: true, written: now, fresh: time.Minute, schema: "string"}))
	f.Add(appendEnvelope(nil, envelope{written: now, schema: "v0", payload: []byte(`"x"`)}))
	f.Add(appendEnvelope(nil, envelope{failed: true, written: now, fresh: time.Second, schema: "string", payload: []byte("db down")}))
	f.Add(appendEnvelope(nil, envelope{failed: true, timedOut: true, written: now, fresh: time.Second, schema: "string"}))
	f.Add(appendEnvelope(nil, envelope{written: now, fresh: time.Hour, schema: "string", payload: []byte(`"x"`),
		traced: true, origin: [envTraceLen]byte{1, 15: 2, 16: 3, 23: 4, 24: 1}}))
	f.Add([]byte{})
	f.Add([]byte("\xf1\x01"))
	c := &Cache[string]{cfg: (&Options[string]{}).withDefaults()}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := parseEnvelope(b)
		if err == nil {
			// What parses re-encodes to something that parses the same.
			again, err := parseEnvelope(appendEnvelope(nil, env))
			if err != nil || again.notFound != env.notFound || again.failed != env.failed || again.timedOut != env.timedOut || !again.written.Equal(env.written) ||
				again.fresh != env.fresh || again.load != env.load || again.schema != env.schema ||
				!bytes.Equal(again.payload, env.payload) || again.traced != env.traced || again.origin != env.origin {
				t.Fatalf("re-encoding changed %+v into %+v (%v)", env, again, err)
			}
		}
		e, err := c.decode(b)
		if err == nil && e == nil {
			t.Fatal("decode: nil entry without an error")
		}
		if err == nil && e.failed != nil && (e.notFound || len(e.failed.Text) > maxErrorText || !e.staleTil.Equal(e.freshTil)) {
			t.Fatalf("decode: failed entry %+v (%+v)", e, e.failed)
		}
		if err == nil && e.origin != nil && (!e.origin.IsValid() || !e.origin.IsRemote()) {
			t.Fatalf("decode: span context %v", e.origin)
		}
	})
}
