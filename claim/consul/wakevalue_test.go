package consul_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// valueWakes subscribes to key through d's SubscribeValue and returns
// the values its wake-ups carry, one per wake-up.
func valueWakes(t *testing.T, d driver.Driver, key string) <-chan []byte {
	t.Helper()
	vn, ok := d.(driver.ValueNotifier)
	if !ok {
		t.Fatal("the driver is not a driver.ValueNotifier")
	}
	ch := make(chan []byte, 64)
	if err := vn.SubscribeValue(context.Background(), key, func(v []byte) { ch <- v }); err != nil {
		t.Fatalf("SubscribeValue(%q): %v", key, err)
	}
	t.Cleanup(func() { d.Unsubscribe(key) })
	return ch
}

// nextWake returns the value the next wake-up of ch carries.
func nextWake(t *testing.T, ch <-chan []byte, what string) []byte {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not wake the subscriber", what)
		return nil
	}
}

// A CommitRelease's wake-up carries its value, exactly, up to
// MaxWakeValue bytes (the empty value included, as an empty value, not
// none); a larger value rides neither in the wake-up nor in the notify
// key; Release carries none, also after a CommitRelease that carried
// one. Through a blocking query and through the poll loop.
func TestWakeValueBound(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	api := apiClient(t, srv)
	for _, polled := range []bool{false, true} {
		t.Run(map[bool]string{false: "blocking", true: "polled"}[polled], func(t *testing.T) {
			ctx := context.Background()
			w := backendtest.Open(t, uniq(t, srv, "maxwatches", "1"))
			c := backendtest.Open(t, uniq(t, srv))
			if polled {
				// The only blocking-query slot goes to another key.
				if err := w.Driver().Subscribe(ctx, "slot", func() {}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { w.Driver().Unsubscribe("slot") })
			}
			wakes := valueWakes(t, w.Driver(), "k")
			if bq, pk := consul.WatchesForTest(w); bq != 1 || pk != map[bool]int{false: 0, true: 1}[polled] {
				t.Fatalf("watches: %d blocking, %d polled", bq, pk)
			}
			notifyKey := consul.NamesForTest(c, "k")[1]
			for _, n := range []int{0, 1, 1000, consul.MaxWakeValue, consul.MaxWakeValue + 1, 100 << 10} {
				val := bytes.Repeat([]byte{byte('a' + n%26)}, n)
				l, err := c.TryClaim(ctx, "k", time.Minute)
				if err != nil {
					t.Fatalf("TryClaim: %v", err)
				}
				if err := c.CommitRelease(ctx, l, val, time.Minute); err != nil {
					t.Fatalf("CommitRelease of %d bytes: %v", n, err)
				}
				got := nextWake(t, wakes, fmt.Sprintf("CommitRelease of %d bytes", n))
				nk, _, err := api.KV().Get(notifyKey, nil)
				if err != nil || nk == nil {
					t.Fatalf("reading the notify key: %v, %v", nk, err)
				}
				if n <= consul.MaxWakeValue {
					if got == nil || !bytes.Equal(got, val) {
						t.Errorf("CommitRelease of %d bytes: the wake-up carried %d bytes (nil: %v), want the value", n, len(got), got == nil)
					}
				} else {
					if got != nil {
						t.Errorf("CommitRelease of %d bytes (over %d): the wake-up carried %d bytes, want none", n, consul.MaxWakeValue, len(got))
					}
					if len(nk.Value) > 100 {
						t.Errorf("CommitRelease of %d bytes (over %d): the notify key holds %d bytes, want no copy", n, consul.MaxWakeValue, len(nk.Value))
					}
				}
				// A Release after it: the notify key's new content
				// carries nothing.
				l, err = c.TryClaim(ctx, "k", time.Minute)
				if err != nil {
					t.Fatalf("TryClaim: %v", err)
				}
				if err := c.Release(ctx, l); err != nil {
					t.Fatalf("Release: %v", err)
				}
				if got := nextWake(t, wakes, "Release"); got != nil {
					t.Errorf("Release after a CommitRelease of %d bytes: the wake-up carried %d bytes, want none", n, len(got))
				}
			}
			select {
			case v := <-wakes:
				t.Errorf("a wake-up nothing called for (carrying %d bytes)", len(v))
			default:
			}
		})
	}
}

// A full CommitReleaseMany whose values are all MaxWakeValue bytes takes
// the 4 transactions of 16 keys it takes without the copies in the notify
// keys (they stay under Consul's 512 KiB per request), and every key's
// subscriber (6 by blocking query, the rest polled) is woken with its
// key's value.
func TestWakeValueBatch(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	rc := &requestCounter{base: http.DefaultTransport.(*http.Transport).Clone(), txns: map[string]int{}, rest: map[string]int{}}
	defer rc.base.(*http.Transport).CloseIdleConnections()
	open := openVia(t, srv, rc, consul.Options{})
	c, w := open(), open()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keys := make([]string, 64)
	wakes := make([]<-chan []byte, len(keys))
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%d", i)
		wakes[i] = valueWakes(t, w.Driver(), keys[i])
	}
	res, err := c.TryClaimMany(ctx, keys, time.Minute)
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	commits := make([]claim.Commit, len(keys))
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("TryClaimMany: key %d: %v", i, r.Err)
		}
		commits[i] = claim.Commit{Lease: r.Lease, Value: bytes.Repeat([]byte{byte('a' + i%26)}, consul.MaxWakeValue), TTL: time.Minute}
	}
	errs, err := c.CommitReleaseMany(context.WithValue(ctx, callName{}, "CommitReleaseMany"), commits)
	if err != nil {
		t.Fatalf("CommitReleaseMany: %v", err)
	}
	for i, e := range errs {
		if e != nil {
			t.Fatalf("CommitReleaseMany: key %d: %v", i, e)
		}
	}
	rc.check(t, "CommitReleaseMany", 4)
	for i, cm := range commits {
		if got := nextWake(t, wakes[i], "CommitReleaseMany of "+keys[i]); !bytes.Equal(got, cm.Value) {
			t.Errorf("%s: the wake-up carried %d bytes, want its value (%d)", keys[i], len(got), len(cm.Value))
		}
	}
}
