package claim_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// GetOrAcquireMany reports every key exactly once, also when ctx ends or
// the Client closes while keys are still held elsewhere.
func TestGetOrAcquireManyEnds(t *testing.T) {
	for _, how := range []string{"cancel", "close"} {
		t.Run(how, func(t *testing.T) {
			sp := memory.NewSpace(nil)
			holder, _ := memory.New(sp, nil)
			defer holder.Close()
			c, _ := memory.New(sp, nil)
			defer c.Close()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			for _, k := range []string{"a", "b"} {
				if _, err := holder.TryClaim(ctx, k, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			seen := map[int]error{}
			waiting := make(chan struct{}, 2)
			done := make(chan error, 1)
			go func() {
				done <- c.GetOrAcquireMany(ctx, []string{"a", "b", "free"}, time.Hour,
					&claim.GetOrAcquireManyOptions{OnWait: func(int) { waiting <- struct{}{} }},
					func(rs []claim.Resolved) {
						for _, r := range rs {
							if _, dup := seen[r.Index]; dup {
								t.Errorf("key %d reported twice", r.Index)
							}
							seen[r.Index] = r.Err
						}
					})
			}()
			<-waiting
			<-waiting
			if how == "cancel" {
				cancel()
			} else {
				c.Close()
			}
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("GetOrAcquireMany did not return")
			}
			want := context.Canceled
			if how == "close" {
				want = claim.ErrClosed
			}
			if len(seen) != 3 || seen[2] != nil || !errors.Is(seen[0], want) || !errors.Is(seen[1], want) {
				t.Errorf("reported %v; want the free key's lease and %v for the held ones", seen, want)
			}
		})
	}
}

// A batch with a key twice, or an invalid key, is refused before any I/O.
func TestBatchRefusesBadKeys(t *testing.T) {
	c, _ := memory.New(nil, nil)
	defer c.Close()
	ctx := context.Background()
	for _, keys := range [][]string{{"a", "a"}, {"a", ""}} {
		if _, err := c.GetMany(ctx, keys); !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("GetMany(%q): %v, want ErrInvalidKey", keys, err)
		}
		if _, err := c.TryClaimMany(ctx, keys, time.Second); !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("TryClaimMany(%q): %v, want ErrInvalidKey", keys, err)
		}
		if err := c.GetOrAcquireMany(ctx, keys, time.Second, nil, func([]claim.Resolved) { t.Error("reported") }); !errors.Is(err, claim.ErrInvalidKey) {
			t.Errorf("GetOrAcquireMany(%q): %v, want ErrInvalidKey", keys, err)
		}
	}
}

// The leases GetOrAcquireMany's claims took on keys whose value they
// found (committed since the caller's read) are given back in one
// ReleaseMany where the driver has a driver.ReleaseBatcher, else (the
// counting wrapper's stand-in for a driver without one) one Release each;
// either way the keys are free again.
func TestGetOrAcquireManyReleasesUnneededTogether(t *testing.T) {
	for _, batched := range []bool{true, false} {
		t.Run(map[bool]string{true: "ReleaseBatcher", false: "Release each"}[batched], func(t *testing.T) {
			ctx := context.Background()
			sp := memory.NewSpace(nil)
			m, _ := memory.New(sp, nil)
			defer m.Close()
			var d driver.Driver = m.Driver()
			if !batched {
				d = noReleaseBatcher{d.(batchDriver)}
			}
			cd, n := countdriver.Wrap(d, nil, countdriver.Options{})
			c := claim.NewClient(cd, nil)
			defer c.Close()
			keys := []string{"a", "b", "c", "absent"}
			for _, k := range keys[:3] {
				if err := c.Set(ctx, k, []byte("v-"+k), time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			before := n.Snapshot()
			var got []claim.Resolved
			err := c.GetOrAcquireMany(ctx, keys, time.Hour, &claim.GetOrAcquireManyOptions{SkipGet: true},
				func(rs []claim.Resolved) { got = append(got, rs...) })
			if err != nil {
				t.Fatal(err)
			}
			calls := n.Snapshot().Sub(before)
			if len(got) != 4 {
				t.Fatalf("%d keys reported, want 4", len(got))
			}
			for _, r := range got {
				if r.Err != nil || r.Got.Found != (r.Index < 3) {
					t.Errorf("key %q: %+v", keys[r.Index], r)
				}
			}
			wantMany, wantSingle := int64(1), int64(0)
			if !batched {
				wantMany, wantSingle = 0, 3
			}
			if calls[countdriver.ReleaseMany] != wantMany || calls[countdriver.Release] != wantSingle {
				t.Errorf("calls %v: want %d release-many, %d release", calls.ByName(), wantMany, wantSingle)
			}
			for _, k := range keys[:3] {
				l, err := c.TryClaim(ctx, k, time.Hour)
				if err != nil {
					t.Errorf("%q not free after GetOrAcquireMany found its value: %v", k, err)
					continue
				}
				_ = c.Release(ctx, l)
			}
		})
	}
}

// batchDriver is a driver with a Batcher.
type batchDriver interface {
	driver.Driver
	driver.Batcher
}

// noReleaseBatcher hides a driver's ReleaseBatcher (and every other
// optional interface but the Batcher).
type noReleaseBatcher struct{ batchDriver }
