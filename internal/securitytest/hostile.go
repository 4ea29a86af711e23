package securitytest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/flight"
)

// Item is the value type of the hostile-value check's cache.
type Item struct {
	N    int
	Name string
}

const hostileSchema = "securitytest.Item/v1"

// envelope builds an L2 value in flight's documented envelope format
// (see flight/envelope.go): magic 0xF1, version, flags, written, fresh,
// load (big-endian int64 nanoseconds), uvarint schema length, schema,
// payload.
func envelope(version, flags byte, written time.Time, fresh, load int64, schema string, payload []byte) []byte {
	b := []byte{0xF1, version, flags}
	b = binary.BigEndian.AppendUint64(b, uint64(written.UnixNano()))
	b = binary.BigEndian.AppendUint64(b, uint64(fresh))
	b = binary.BigEndian.AppendUint64(b, uint64(load))
	b = binary.AppendUvarint(b, uint64(len(schema)))
	b = append(b, schema...)
	return append(b, payload...)
}

// HostileValue is one value written into L2 by someone else.
type HostileValue struct {
	Name string
	Data []byte
	// Miss: the value must read as a miss (the loader runs). A value that
	// is well-formed but absurd (timestamps far away) need only not panic
	// or hang.
	Miss bool
}

// HostileValues returns the values the check writes: random bytes,
// truncations of a valid envelope, lying length prefixes, other schemas
// and versions, payloads of the wrong JSON type, absurd timestamps.
func HostileValues() []HostileValue {
	now := time.Now()
	good := envelope(1, 0, now, int64(time.Hour), int64(time.Millisecond), hostileSchema, []byte(`{"N":7,"Name":"good"}`))
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		return b
	}
	vs := []HostileValue{
		{"empty", []byte{}, true},
		{"one byte", []byte{0xF1}, true},
		{"random 16", random(16), true},
		{"random 4096", random(4096), true},
		{"random with magic", append([]byte{0xF1, 1, 0}, random(64)...), true},
		{"plain JSON", []byte(`{"N":7,"Name":"raw"}`), true},
		{"text", []byte("hello, world"), true},
		{"other envelope version", envelope(2, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":1}`)), true},
		{"unknown flags", envelope(1, 0x80, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":1}`)), true},
		{"negative fresh", envelope(1, 0, now, -1, 0, hostileSchema, []byte(`{"N":1}`)), true},
		{"negative load", envelope(1, 0, now, int64(time.Hour), math.MinInt64, hostileSchema, []byte(`{"N":1}`)), true},
		{"other schema", envelope(1, 0, now, int64(time.Hour), 0, "someone.else/v9", []byte(`{"N":1}`)), true},
		{"empty schema", envelope(1, 0, now, int64(time.Hour), 0, "", []byte(`{"N":1}`)), true},
		{"not-found with payload", envelope(1, 1, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":1}`)), true},
		{"JSON string", envelope(1, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`"a string"`)), true},
		{"JSON array", envelope(1, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`[1,2,3]`)), true},
		{"JSON wrong field type", envelope(1, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":"seven"}`)), true},
		{"JSON truncated", envelope(1, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":7,"Na`)), true},
		{"JSON huge number", envelope(1, 0, now, int64(time.Hour), 0, hostileSchema, []byte(`{"N":1e400}`)), true},
		{"expired long ago", envelope(1, 0, time.Unix(0, 0), int64(time.Second), 0, hostileSchema, []byte(`{"N":1}`)), true},
		{"written far future", envelope(1, 0, time.Unix(0, math.MaxInt64), math.MaxInt64, math.MaxInt64, hostileSchema, []byte(`{"N":1}`)), false},
		{"written min time", envelope(1, 0, time.Unix(0, math.MinInt64), math.MaxInt64, 0, hostileSchema, []byte(`{"N":1}`)), false},
	}
	// Every truncation of a valid envelope inside its header and schema.
	for _, n := range []int{2, 3, 10, 11, 18, 19, 26, 27, 28, 30} {
		vs = append(vs, HostileValue{fmt.Sprintf("valid envelope cut at %d", n), good[:n], true})
	}
	// Schema length prefixes that lie.
	hdr := envelope(1, 0, now, int64(time.Hour), 0, "", nil)
	hdr = hdr[:len(hdr)-1] // drop the zero length
	for _, n := range []uint64{5, 1 << 10, 1<<10 + 1, 1 << 31, 1<<63 - 1, math.MaxUint64} {
		b := binary.AppendUvarint(append([]byte{}, hdr...), n)
		vs = append(vs, HostileValue{fmt.Sprintf("schema length %d", n), append(b, "abc"...), true})
	}
	vs = append(vs, HostileValue{"overlong uvarint", append(append([]byte{}, hdr...), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), true})
	return vs
}

// Hostile writes each of HostileValues straight into L2 (with b.Set,
// under the key a flight cache named name would use) and reads it through
// a flight cache: every value that must be a miss calls the loader and
// returns the loaded value; none panics or hangs. Values longer than the
// backend's MaxValueLen are skipped.
func Hostile(t *testing.T, b *claim.Client) {
	t.Helper()
	name := Unique(t) + "hostile"
	var loads atomic.Int64
	load := func(ctx context.Context, key string) (Item, error) {
		loads.Add(1)
		return Item{N: 42, Name: "loaded"}, nil
	}
	c, err := flight.New[Item](b, &flight.Options[Item]{
		Name:      name,
		Schema:    hostileSchema,
		Normalize: flight.Identity,
		L1Size:    -1, // every Get reads L2
		LeaseTTL:  10 * time.Second,
		TTL:       time.Minute,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	max := b.Features().MaxValueLen
	for i, hv := range HostileValues() {
		if max > 0 && len(hv.Data) > max {
			continue
		}
		key := fmt.Sprint("k", i)
		ctx, cancel := context.WithTimeout(context.Background(), Timeout)
		if err := b.Set(ctx, name+":"+key, hv.Data, time.Minute); err != nil {
			cancel()
			t.Fatalf("%s: writing the hostile value: %v", hv.Name, err)
		}
		before := loads.Load()
		var (
			r    flight.Result[Item]
			gerr error
		)
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Errorf("%s: Get panicked: %v", hv.Name, p)
				}
			}()
			r, gerr = c.Fetch(ctx, key, load)
		}()
		cancel()
		if !hv.Miss {
			continue
		}
		if gerr != nil {
			t.Errorf("%s: Get: %v, want the loaded value", hv.Name, gerr)
			continue
		}
		if loads.Load() != before+1 || r.Value != (Item{N: 42, Name: "loaded"}) {
			t.Errorf("%s: Get = %+v (source %v), loader calls %d; want a miss and one load", hv.Name, r.Value, r.Source, loads.Load()-before)
		}
		// The loaded value replaced the hostile one in L2.
		raw, err := b.Get(context.Background(), name+":"+key)
		if err != nil || string(raw) == string(hv.Data) {
			t.Errorf("%s: L2 after the load: %d bytes, %v; want the loaded value's envelope", hv.Name, len(raw), err)
		}
	}
	if st := c.Stats(); st.DecodeErrors == 0 {
		t.Errorf("Stats.DecodeErrors = 0 after hostile values")
	}
}
