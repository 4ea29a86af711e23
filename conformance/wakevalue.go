package conformance

import (
	"bytes"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

func init() { register("WakeValue", checkWakeValue) }

// checkWakeValue: a driver.ValueNotifier's wake-up after a CommitRelease
// carries exactly the value stored (a small one must be carried); every
// other wake-up (Release, Notify, Revoke) carries none.
func checkWakeValue(t *T) {
	ctx := t.Context()
	c1, c2 := t.Client(), t.Client()
	vn, ok := c2.Driver().(driver.ValueNotifier)
	if !ok {
		t.Skipf("the driver is not a driver.ValueNotifier")
	}
	k := t.Key("k")
	var mu sync.Mutex
	var got [][]byte
	ch := make(chan struct{}, 16)
	if err := vn.SubscribeValue(ctx, k, func(v []byte) {
		mu.Lock()
		got = append(got, v)
		mu.Unlock()
		ch <- struct{}{}
	}); err != nil {
		t.Fatalf("SubscribeValue: %v", err)
	}
	defer c2.Driver().Unsubscribe(k)
	// next returns what the next wake-up carried. A driver may wake
	// without a cause (it cannot rule out a change: a claim seen by a
	// watch, say), so drain drops what came before a step.
	next := func(what string) []byte {
		select {
		case <-ch:
		case <-time.After(wakeBound):
			t.Fatalf("no wake-up within %s of %s", wakeBound, what)
		case <-ctx.Done():
			t.Fatalf("check ended")
		}
		mu.Lock()
		defer mu.Unlock()
		v := got[len(got)-1]
		return v
	}
	drain := func() {
		mu.Lock()
		got = got[:0]
		mu.Unlock()
		for {
			select {
			case <-ch:
			default:
				return
			}
		}
	}
	// valueWake waits for the wake-up that carries a value, skipping
	// wake-ups without a cause.
	valueWake := func(what string) []byte {
		deadline := time.Now().Add(wakeBound)
		for {
			v := next(what)
			mu.Lock()
			for _, g := range got {
				if g != nil {
					v = g
				}
			}
			mu.Unlock()
			if v != nil || time.Now().After(deadline) {
				return v
			}
		}
	}
	ttl := t.LongTTL()
	l, err := c1.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	want := []byte("value\x00with bytes \xff")
	if err := c1.CommitRelease(ctx, l, want, ttl); err != nil {
		t.Fatalf("CommitRelease: %v", err)
	}
	if v := valueWake("CommitRelease"); !bytes.Equal(v, want) {
		t.Errorf("CommitRelease's wake-up carried %q, want the value stored %q", v, want)
	}
	drain()
	l, err = c1.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := c1.Release(ctx, l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if v := next("Release"); v != nil {
		t.Errorf("Release's wake-up carried %q, want none", v)
	}
	drain()
	if err := c1.Notify(ctx, k); err != nil {
		t.Fatalf("Notify: %v", err)
	}
	if v := next("Notify"); v != nil {
		t.Errorf("Notify's wake-up carried %q, want none", v)
	}
	drain()
	if err := c1.RevokeSet(ctx, k, []byte("set"), ttl); err != nil {
		t.Fatalf("RevokeSet: %v", err)
	}
	if v := next("RevokeSet"); v != nil {
		t.Errorf("RevokeSet's wake-up carried %q, want none", v)
	}
}
