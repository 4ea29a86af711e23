package flight

import (
	"bytes"
	"testing"
	"time"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	c := &Cache[map[string]int]{cfg: (&Options[map[string]int]{StaleTTL: time.Minute}).withDefaults()}
	now := time.Unix(1700000000, 123)
	in := &entry[map[string]int]{value: map[string]int{"a": 1}, written: now, freshTil: now.Add(time.Hour), load: 150 * time.Millisecond}
	b, err := c.encode(in)
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
	b, _ = c.encode(neg)
	out, err = c.decode(b)
	if err != nil || !out.notFound || !out.staleTil.Equal(out.freshTil) {
		t.Fatalf("negative round trip: %+v, %v", out, err)
	}
	if c.cfg.Schema != "map[string]int" {
		t.Fatalf("default schema %q", c.cfg.Schema)
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	now := time.Unix(1700000000, 0)
	f.Add(appendEnvelope(nil, envelope{written: now, fresh: time.Hour, load: time.Second, schema: "string", payload: []byte(`"x"`)}))
	f.Add(appendEnvelope(nil, envelope{notFound: true, written: now, fresh: time.Minute, schema: "string"}))
	f.Add(appendEnvelope(nil, envelope{written: now, schema: "v0", payload: []byte(`"x"`)}))
	f.Add([]byte{})
	f.Add([]byte("\xf1\x01"))
	c := &Cache[string]{cfg: (&Options[string]{}).withDefaults()}
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := parseEnvelope(b)
		if err == nil {
			// What parses re-encodes to something that parses the same.
			again, err := parseEnvelope(appendEnvelope(nil, env))
			if err != nil || again.notFound != env.notFound || !again.written.Equal(env.written) ||
				again.fresh != env.fresh || again.load != env.load || again.schema != env.schema ||
				!bytes.Equal(again.payload, env.payload) {
				t.Fatalf("re-encoding changed %+v into %+v (%v)", env, again, err)
			}
		}
		if e, err := c.decode(b); err == nil && e == nil {
			t.Fatal("decode: nil entry without an error")
		}
	})
}
