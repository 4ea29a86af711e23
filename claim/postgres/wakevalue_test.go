package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// wakeBound bounds the wait for a wake-up that must come (a failure
// bound, not a measurement).
const wakeBound = 10 * time.Second

// TestWakeValueBound: a CommitRelease's or CommitReleaseMany's wake-up
// carries the value stored, byte for byte, up to maxMessage of the key
// (the empty value as an empty, non-nil slice; values long enough that
// encode breaks its base64 into lines), and none one byte over it (the
// key is still woken); in each of pgx's query modes, with and without
// AsyncRelease. Subscribe, on the same keys, is woken once per wake-up.
func TestWakeValueBound(t *testing.T) {
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		for _, async := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/async=%v", mode, async), func(t *testing.T) {
				testWakeValueBound(t, "default_query_exec_mode", mode, "async_release", fmt.Sprint(async))
			})
		}
	}
}

func testWakeValueBound(t *testing.T, params ...string) {
	ctx := backendtest.Context(t)
	params = append([]string{"prefix", "wv" + randID() + "_"}, params...)
	c, b := newClient(t, nil, params...)
	_, ob := newClient(t, nil, params...) // a second Client, to Subscribe
	type wake struct {
		key string
		val []byte
	}
	woken := make(chan wake, 64)
	plain := make(chan string, 64)
	subscribe := func(key string) {
		t.Helper()
		if err := b.SubscribeValue(ctx, key, func(v []byte) {
			select {
			case woken <- wake{key, v}:
			default:
				t.Errorf("%s: wake-ups not taken", key)
			}
		}); err != nil {
			t.Fatalf("SubscribeValue: %v", err)
		}
		// A second Client's plain Subscribe on the same server.
		if err := ob.Subscribe(ctx, key, func() {
			select {
			case plain <- key:
			default:
				t.Errorf("%s: plain wake-ups not taken", key)
			}
		}); err != nil {
			t.Fatalf("Subscribe: %v", err)
		}
	}
	next := func(key string) []byte {
		t.Helper()
		var w wake
		select {
		case w = <-woken:
		case <-time.After(wakeBound):
			t.Fatalf("%s: no wake-up within %s", key, wakeBound)
		}
		if w.key != key {
			t.Fatalf("wake-up of %q, want %q", w.key, key)
		}
		select {
		case k := <-plain:
			if k != key {
				t.Fatalf("plain wake-up of %q, want %q", k, key)
			}
		case <-time.After(wakeBound):
			t.Fatalf("%s: no plain wake-up within %s", key, wakeBound)
		}
		return w.val
	}
	random := func(n int) []byte {
		v := make([]byte, n)
		for i := range v {
			v[i] = byte(rand.N(256))
		}
		return v
	}
	short, long := "k", strings.Repeat("x", 250)
	for _, key := range []string{short, long} {
		subscribe(key)
		limit := maxMessage(b.keys.Encode(key))
		if limit < 5800 {
			t.Fatalf("%s: values up to %d bytes carried, want at least 5,800", key, limit)
		}
		for _, n := range []int{0, 1, 57, 58, 1000, limit - 2, limit - 1, limit, limit + 1, limit + 3, 64 << 10} {
			val := random(n)
			l := backendtest.Claim(t, c, key, time.Hour)
			if err := c.CommitRelease(ctx, l, val, time.Hour); err != nil {
				t.Fatalf("CommitRelease: %v", err)
			}
			got := next(key)
			switch {
			case n > limit && got != nil:
				t.Errorf("%d-byte key, %d-byte value (over %d): carried %d bytes, want none", len(key), n, limit, len(got))
			case n <= limit && (got == nil || !bytes.Equal(got, val)):
				t.Errorf("%d-byte key, %d-byte value: carried %d bytes (nil %v), want the value", len(key), n, len(got), got == nil)
			}
		}
	}
	// CommitReleaseMany: per key, as CommitRelease.
	small, big := random(100), random(maxMessage(b.keys.Encode(long))+1)
	ls := []claim.Lease{backendtest.Claim(t, c, short, time.Hour), backendtest.Claim(t, c, long, time.Hour)}
	errs, err := c.CommitReleaseMany(ctx, []claim.Commit{{Lease: ls[0], Value: small, TTL: time.Hour}, {Lease: ls[1], Value: big}})
	if err != nil || errors.Join(errs...) != nil {
		t.Fatalf("CommitReleaseMany: %v, %v", errs, err)
	}
	got := map[string][]byte{}
	for range 2 {
		var w wake
		select {
		case w = <-woken:
		case <-time.After(wakeBound):
			t.Fatalf("CommitReleaseMany: no wake-up within %s", wakeBound)
		}
		got[w.key] = w.val
		select {
		case <-plain:
		case <-time.After(wakeBound):
			t.Fatalf("CommitReleaseMany: no plain wake-up within %s", wakeBound)
		}
	}
	if v, ok := got[short]; !ok || !bytes.Equal(v, small) {
		t.Errorf("CommitReleaseMany: %s carried %d bytes (woken %v), want the %d stored", short, len(v), ok, len(small))
	}
	if v, ok := got[long]; !ok || v != nil {
		t.Errorf("CommitReleaseMany: the value over the bound: carried %d bytes (woken %v), want none", len(v), ok)
	}
	// A CommitRelease of a lease no longer current sends nothing.
	l := backendtest.Claim(t, c, short, time.Hour)
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if v := next(short); v != nil {
		t.Errorf("Release carried %q", v)
	}
	if err := c.CommitRelease(ctx, l, small, time.Hour); !errors.Is(err, claim.ErrLost) {
		t.Fatalf("CommitRelease of a released lease: %v, want ErrLost", err)
	}
	if err := c.Notify(ctx, short); err != nil {
		t.Fatal(err)
	}
	if v := next(short); v != nil {
		t.Errorf("Notify carried %q (or the lost CommitRelease woke)", v)
	}
}

// TestWakeValueForeignPayloads: value payloads that do not decode still
// wake their key, without a value; unknown tags wake nothing.
func TestWakeValueForeignPayloads(t *testing.T) {
	ctx := backendtest.Context(t)
	_, b := newClient(t, nil, "prefix", "wf"+randID()+"_")
	woken := make(chan []byte, 16)
	if err := b.SubscribeValue(ctx, "k", func(v []byte) { woken <- v }); err != nil {
		t.Fatal(err)
	}
	enc := b.keys.Encode("k")
	for _, p := range []string{"x" + enc, string(tagValue) + enc + " !!", string(tagValue) + enc} {
		if err := notifyRaw(ctx, b, p); err != nil {
			t.Fatal(err)
		}
	}
	// A marker the dispatcher handles after the payloads above (one
	// connection, notifications in order).
	if err := notifyRaw(ctx, b, keyPayload(enc)); err != nil {
		t.Fatal(err)
	}
	var got [][]byte
	for len(got) < 2 {
		select {
		case v := <-woken:
			got = append(got, v)
		case <-time.After(wakeBound):
			t.Fatalf("wake-ups %q, want 2 within %s", got, wakeBound)
		}
	}
	if got[0] != nil || got[1] != nil {
		t.Errorf("wake-ups %q, want two without a value", got)
	}
	select {
	case v := <-woken:
		t.Errorf("a third wake-up (%q): a payload without a value woke", v)
	default:
	}
}

func notifyRaw(ctx context.Context, b *backend, payload string) error {
	_, err := b.pool.Exec(ctx, b.q.notify, b.channel, payload)
	return err
}

// TestNoValueWake: with value_wake=false a CommitRelease's wake-up
// carries no value, on its own Client or on one without the option, and
// its listener takes no value from a payload that carries one (sent by a
// Client without it, or forged by a bare pg_notify).
func TestNoValueWake(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "nv" + randID() + "_"
	c, b := newClient(t, nil, "prefix", prefix, "value_wake", "false")
	d, db := newClient(t, nil, "prefix", prefix)
	if !b.opt.NoValueWake || db.opt.NoValueWake {
		t.Fatalf("NoValueWake: %v, %v", b.opt.NoValueWake, db.opt.NoValueWake)
	}
	type wake struct {
		who string
		val []byte
	}
	woken := make(chan wake, 16)
	for who, be := range map[string]*backend{"off": b, "on": db} {
		if err := be.SubscribeValue(ctx, "k", func(v []byte) { woken <- wake{who, v} }); err != nil {
			t.Fatal(err)
		}
	}
	// next takes the wake-ups of both Clients and returns the values by
	// Client: off (value_wake=false), on.
	next := func(what string) map[string][]byte {
		t.Helper()
		got := map[string][]byte{}
		for len(got) < 2 {
			select {
			case w := <-woken:
				got[w.who] = w.val
			case <-time.After(wakeBound):
				t.Fatalf("%s: wake-ups %q, want both Clients' within %s", what, got, wakeBound)
			}
		}
		return got
	}
	val := []byte("value")
	l := backendtest.Claim(t, c, "k", time.Hour)
	if err := c.CommitRelease(ctx, l, val, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := next("CommitRelease with value_wake=false"); got["off"] != nil || got["on"] != nil {
		t.Errorf("CommitRelease with value_wake=false carried %q, want none", got)
	}
	l = backendtest.Claim(t, d, "k", time.Hour)
	if err := d.CommitRelease(ctx, l, val, time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := next("CommitRelease"); got["off"] != nil || !bytes.Equal(got["on"], val) {
		t.Errorf("CommitRelease carried %q, want none to value_wake=false, %q to the other", got, val)
	}
	if err := notifyRaw(ctx, b, string(tagValue)+b.keys.Encode("k")+" Zm9yZ2Vk"); err != nil {
		t.Fatal(err)
	}
	if got := next("a forged payload"); got["off"] != nil || string(got["on"]) != "forged" {
		t.Errorf("forged payload carried %q, want none to value_wake=false, %q to the other", got, "forged")
	}
	if v, err := c.Get(ctx, "k"); err != nil || !bytes.Equal(v, val) {
		t.Errorf("Get = %q, %v; want %q", v, err, val)
	}
}

// TestWaiterTakesWakeValue: a process waiting in GetOrAcquire for another
// process's holder answers with the value its wake-up carried: 3 round
// trips (get, subscribe, claim+read), no read after the wake-up; 4 with
// value_wake=false (the get after the wake-up). Counted by
// internal/countdriver around a Client's own driver.
func TestWaiterTakesWakeValue(t *testing.T) {
	for _, tc := range []struct {
		valueWake bool
		gets      int64
		total     int64
	}{{true, 1, 3}, {false, 2, 4}} {
		t.Run(fmt.Sprintf("value_wake=%v", tc.valueWake), func(t *testing.T) {
			ctx := backendtest.Context(t)
			prefix := "ww" + randID() + "_"
			holder, _ := newClient(t, nil, "prefix", prefix)
			wb, err := newBackend(newPool(t), &Options{TablePrefix: prefix, NoValueWake: !tc.valueWake})
			if err != nil {
				t.Fatal(err)
			}
			d, n := countdriver.Wrap(wb, nil, countdriver.Options{})
			held := make(chan struct{}, 1)
			waiter := claim.NewClient(heldSignal{d, d.(driver.ClaimReader), d.(driver.ValueNotifier), held}, nil)
			defer waiter.Close()
			l := backendtest.Claim(t, holder, "k", time.Hour)
			type result struct {
				got claim.Got
				err error
			}
			done := make(chan result, 1)
			go func() {
				g, err := waiter.GetOrAcquire(ctx, "k", time.Hour, nil)
				done <- result{g, err}
			}()
			select {
			case <-held: // the waiter found the key held: it waits
			case r := <-done:
				t.Fatalf("GetOrAcquire returned before the release: %+v, %v", r.got, r.err)
			}
			val := []byte("from the holder")
			if err := holder.CommitRelease(ctx, l, val, time.Hour); err != nil {
				t.Fatal(err)
			}
			var r result
			select {
			case r = <-done:
			case <-time.After(wakeBound):
				t.Fatalf("GetOrAcquire not answered within %s of the release", wakeBound)
			}
			if r.err != nil || !r.got.Found || !bytes.Equal(r.got.Value, val) {
				t.Fatalf("GetOrAcquire = %+v, %v; want the holder's value", r.got, r.err)
			}
			if got := n.Snapshot(); got.Total() != tc.total || n.Load(countdriver.Get) != tc.gets {
				t.Errorf("waiter's round trips: %v (%d), want %d, %d of them gets", got, got.Total(), tc.total, tc.gets)
			}
		})
	}
}

// heldSignal is a driver (with driver.ClaimReader and
// driver.ValueNotifier) that signals held when a TryClaimRead finds the
// key held.
type heldSignal struct {
	driver.Driver
	cr   driver.ClaimReader
	vn   driver.ValueNotifier
	held chan struct{}
}

func (h heldSignal) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	l, v, ok, err := h.cr.TryClaimRead(ctx, key, holder, ttl)
	if _, isHeld := errors.AsType[*driver.HeldError](err); isHeld {
		select {
		case h.held <- struct{}{}:
		default:
		}
	}
	return l, v, ok, err
}

func (h heldSignal) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	return h.vn.SubscribeValue(ctx, key, wake)
}
