package conformance

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
)

func init() {
	register("Store", checkStore)
	register("StoreTTL", checkStoreTTL)
	register("Keys", checkKeys)
	register("InvalidKey", checkInvalidKey)
	register("TooLarge", checkTooLarge)
	register("Closed", checkClosed)
	register("Concurrent", checkConcurrent)
}

func checkStore(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	k := t.Key("k")
	if _, err := a.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get of an absent key: err = %v, want ErrNotFound", err)
	}
	val := []byte("v\x00\xff\n binary ünïcode")
	if err := a.Set(ctx, k, val, 0); err != nil {
		t.Fatalf("Set: %v", err)
	}
	val[0] = 'X' // the store must not retain the caller's slice
	got, err := b.Get(ctx, k)
	if err != nil || string(got) != "v\x00\xff\n binary ünïcode" {
		t.Errorf("Get from another client = %q, %v", got, err)
	}
	if err := b.Set(ctx, k, []byte("second"), 0); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if got, err := a.Get(ctx, k); err != nil || string(got) != "second" {
		t.Errorf("Get after overwrite = %q, %v", got, err)
	}
	if err := a.Set(ctx, t.Key("empty"), []byte{}, 0); err != nil {
		t.Errorf("Set of an empty value: %v", err)
	} else if got, err := b.Get(ctx, t.Key("empty")); err != nil || len(got) != 0 {
		t.Errorf("Get of an empty value = %q, %v; want empty, nil", got, err)
	}
	if err := a.Delete(ctx, k); err != nil {
		t.Errorf("Delete: %v", err)
	}
	if _, err := b.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get after Delete: err = %v, want ErrNotFound", err)
	}
	if err := a.Delete(ctx, k); err != nil {
		t.Errorf("Delete of an absent key: %v", err)
	}
	// Commit writes through the store.
	l, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := a.Commit(ctx, l, []byte("committed"), 0); err != nil {
		t.Errorf("Commit: %v", err)
	}
	if got, err := b.Get(ctx, k); err != nil || string(got) != "committed" {
		t.Errorf("Get after Commit = %q, %v", got, err)
	}
	_ = a.Release(ctx, l)
	if got, err := b.Get(ctx, k); err != nil || string(got) != "committed" {
		t.Errorf("Get after Release = %q, %v: releasing must keep the committed value", got, err)
	}
}

func checkStoreTTL(t *T) {
	ctx := t.Context()
	a := t.Client()
	ttl := t.ShortTTL()
	if err := a.Set(ctx, t.Key("short"), []byte("v"), ttl); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if err := a.Set(ctx, t.Key("forever"), []byte("v"), 0); err != nil {
		t.Fatalf("Set: %v", err)
	}
	l, err := a.TryClaim(ctx, t.Key("committed"), t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := a.Commit(ctx, l, []byte("v"), ttl); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	_ = a.Release(ctx, l)
	start := time.Now()
	for _, k := range []string{t.Key("short"), t.Key("committed")} {
		for {
			_, err := a.Get(ctx, k)
			if errors.Is(err, claim.ErrNotFound) {
				break
			}
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if time.Since(start) > ttl+t.expiryBound() {
				t.Fatalf("value %s with TTL %s still returned after %s", k, ttl, time.Since(start))
			}
			time.Sleep(ttl / 5)
		}
	}
	if _, err := a.Get(ctx, t.Key("forever")); err != nil {
		t.Errorf("value without TTL gone after %s: %v", time.Since(start), err)
	}
}

// checkKeys: long, binary, unicode and look-alike keys all work and stay
// independent of each other.
func checkKeys(t *T) {
	ctx := t.Context()
	a, b := t.Client(), t.Client()
	long := t.Key(strings.Repeat("long/", 2000))
	keys := []string{
		t.Key("plain"),
		long + "1",
		long + "2", // differs from the previous only in its last byte
		t.Key("bin\x00\x01\xff\xfe"),
		t.Key("ключ/🔑/鍵"),
		t.Key("spaces and\nnewlines\tand\rcontrol"),
		t.Key("{braces}:colons:*glob?[x]%"),
		t.Key("=plain"),
		t.Key("#plain"),
		t.Key("PLAIN"),
	}
	leases := make([]claim.Lease, len(keys))
	for i, k := range keys {
		l, err := a.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim(key %d, %d bytes): %v", i, len(k), err)
		}
		if l.Key != k {
			t.Errorf("lease key %q, want %q", l.Key, k)
		}
		leases[i] = l
		if err := a.Commit(ctx, l, []byte(fmt.Sprint(i)), 0); err != nil {
			t.Errorf("Commit(key %d): %v", i, err)
		}
	}
	for i, k := range keys {
		if _, err := b.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("key %d held, but another client's TryClaim: err = %v", i, err)
		}
		if v, err := b.Get(ctx, k); err != nil || string(v) != fmt.Sprint(i) {
			t.Errorf("key %d: Get = %q, %v; want %d (keys collided?)", i, v, err, i)
		}
		s, err := b.Subscribe(ctx, k)
		if err != nil {
			t.Errorf("Subscribe(key %d): %v", i, err)
			continue
		}
		if err := a.Release(ctx, leases[i]); err != nil {
			t.Errorf("Release(key %d): %v", i, err)
		}
		if !woken(t, s) {
			t.Errorf("key %d: release did not wake its subscriber", i)
		}
		s.Close()
		if err := b.Set(ctx, k, []byte("x"), 0); err != nil {
			t.Errorf("Set(key %d): %v", i, err)
		}
		if err := b.Delete(ctx, k); err != nil {
			t.Errorf("Delete(key %d): %v", i, err)
		}
	}
}

func checkInvalidKey(t *T) {
	ctx := t.Context()
	a := t.Client()
	is := func(op string, err error) {
		if !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("%s with an empty key: err = %v, want ErrInvalidKey", op, err)
		}
	}
	_, err := a.TryClaim(ctx, "", t.LongTTL())
	is("TryClaim", err)
	_, err = a.Extend(ctx, claim.Lease{Token: 1, Holder: "h", Deadline: time.Now().Add(time.Hour)}, t.LongTTL())
	is("Extend", err)
	is("Release", a.Release(ctx, claim.Lease{Token: 1, Holder: "h", Deadline: time.Now().Add(time.Hour)}))
	is("Commit", a.Commit(ctx, claim.Lease{Token: 1, Holder: "h", Deadline: time.Now().Add(time.Hour)}, []byte("v"), 0))
	_, err = a.Get(ctx, "")
	is("Get", err)
	is("Set", a.Set(ctx, "", []byte("v"), 0))
	is("Delete", a.Delete(ctx, ""))
	s, err := a.Subscribe(ctx, "")
	is("Subscribe", err)
	if s != nil {
		s.Close()
	}
	is("Notify", a.Notify(ctx, ""))
	_, err = a.Acquire(ctx, "", t.LongTTL())
	is("Acquire", err)
}

// checkTooLarge: a value over the limit is refused with ErrTooLarge and
// nothing is written; a value at the limit round trips.
func checkTooLarge(t *T) {
	ctx := t.Context()
	limit := t.feat.MaxValueLen
	if limit <= 0 {
		// No limit declared: a 4 MiB value must round trip.
		a := t.Client()
		big := bytes.Repeat([]byte{'x'}, 4<<20)
		if err := a.Set(ctx, t.Key("big"), big, 0); err != nil {
			t.Errorf("Features.MaxValueLen is 0 (no limit), but Set of 4 MiB: %v", err)
		}
		return
	}
	a := t.Client()
	k := t.Key("k")
	over := bytes.Repeat([]byte{'x'}, limit+1)
	if err := a.Set(ctx, k, over, 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set of MaxValueLen+1 (%d) bytes: err = %v, want ErrTooLarge", limit+1, err)
	}
	l, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := a.Commit(ctx, l, over, 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Commit of MaxValueLen+1 bytes: err = %v, want ErrTooLarge", err)
	}
	if _, err := a.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("after refused oversized writes, Get err = %v, want ErrNotFound (nothing written)", err)
	}
	if limit <= 8<<20 {
		at := bytes.Repeat([]byte{'y'}, limit)
		if err := a.Commit(ctx, l, at, 0); err != nil {
			t.Errorf("Commit of exactly MaxValueLen (%d) bytes: %v", limit, err)
		} else if v, err := a.Get(ctx, k); err != nil || len(v) != limit {
			t.Errorf("Get of a MaxValueLen value: %d bytes, %v", len(v), err)
		}
		if err := a.Set(ctx, t.Key("set"), at, 0); err != nil {
			t.Errorf("Set of exactly MaxValueLen bytes: %v", err)
		}
	}
	_ = a.Release(ctx, l)
}

// checkClosed: after Close every call fails with ErrClosed and every open
// subscription's channel is closed.
func checkClosed(t *T) {
	ctx := t.Context()
	a := t.Client()
	k := t.Key("k")
	l, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	s, err := a.Subscribe(ctx, k)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	closedCh := func() bool {
		timer := time.NewTimer(wakeBound)
		defer timer.Stop()
		for {
			select {
			case _, ok := <-s.C():
				if !ok {
					return true
				}
			case <-timer.C:
				return false
			}
		}
	}
	if !closedCh() {
		t.Errorf("subscription channel not closed within %s of Close", wakeBound)
	}
	s.Close()
	is := func(op string, err error) {
		if !errors.Is(err, claim.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", op, err)
		}
	}
	_, err = a.TryClaim(ctx, t.Key("other"), t.LongTTL())
	is("TryClaim", err)
	_, err = a.Extend(ctx, l, t.LongTTL())
	is("Extend", err)
	is("Release", a.Release(ctx, l))
	is("Commit", a.Commit(ctx, l, []byte("v"), 0))
	_, err = a.Get(ctx, k)
	is("Get", err)
	is("Set", a.Set(ctx, k, []byte("v"), 0))
	is("Delete", a.Delete(ctx, k))
	s2, err := a.Subscribe(ctx, k)
	is("Subscribe", err)
	if s2 != nil {
		s2.Close()
	}
	is("Notify", a.Notify(ctx, k))
	// The lease of a closed client is not released: it expires by itself.
	b := t.Client()
	if _, err := b.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("closing a client released its lease: TryClaim err = %v, want ErrHeld", err)
	}
}

// checkConcurrent: many goroutines on two clients, distinct and shared
// keys, mixed operations; run under -race. Every claim on a distinct key
// succeeds and every value reads back.
func checkConcurrent(t *T) {
	ctx := t.Context()
	cs := []*claim.Client{t.Client(), t.Client()}
	const workers = 16
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c := cs[w%2]
			for i := 0; i < 5; i++ {
				k := t.Key(fmt.Sprintf("w%d/%d", w, i))
				l, err := c.TryClaim(ctx, k, t.LongTTL())
				if err != nil {
					t.Errorf("TryClaim(%s): %v", k, err)
					continue
				}
				s, err := c.Subscribe(ctx, t.Key("shared"))
				if err != nil {
					t.Errorf("Subscribe: %v", err)
				}
				if err := c.Commit(ctx, l, []byte(k), 0); err != nil {
					t.Errorf("Commit(%s): %v", k, err)
				}
				if v, err := cs[(w+1)%2].Get(ctx, k); err != nil || string(v) != k {
					t.Errorf("Get(%s) = %q, %v", k, v, err)
				}
				if err := c.Release(ctx, l); err != nil {
					t.Errorf("Release(%s): %v", k, err)
				}
				_ = c.Notify(ctx, t.Key("shared"))
				if s != nil {
					s.Close()
				}
			}
		}(w)
	}
	wg.Wait()
}
