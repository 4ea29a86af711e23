package claim_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
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
