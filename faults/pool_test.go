package faults

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// TestPoolStarvation: a client whose connection pool is shrunk to one
// connection (where the client has a pool: Redis pool_size, pgx
// pool_max_conns, gomemcache max_idle_conns; the others multiplex one
// connection or open HTTP connections on demand, and run the same checks
// with their defaults):
//
//   - holds many subscriptions, and still claims, commits, reads and
//     releases: notification connections are not taken from the pool;
//   - serves many waiters of one key (Client.Acquire, commit, release, in
//     turn) without deadlock;
//   - with its one connection stuck (blackhole), fails every call within
//     the call's timeout instead of queueing forever behind it.
func TestPoolStarvation(t *testing.T) {
	forEach(t, needsNetwork, func(t *testing.T, b backend) {
		u := withParams(b.sharedURL(t), b.pool)
		c, holder := open(t, u), open(t, u)

		// Subscriptions to keys held by another client.
		const nsubs = 20
		for i := range nsubs {
			k := key(t, fmt.Sprintf("sub-%d", i))
			if _, err := do(func(ctx context.Context) (claim.Lease, error) { return holder.TryClaim(ctx, k, time.Minute) }); err != nil {
				t.Fatalf("holder's claim: %v", err)
			}
			s, err := do(func(ctx context.Context) (*claim.Subscription, error) { return c.Subscribe(ctx, k) })
			if err != nil {
				t.Fatalf("subscription %d with a one-connection pool: %v", i, err)
			}
			t.Cleanup(func() { _ = s.Close() })
		}
		// A lease long enough that a slow machine cannot make it expire
		// between the claim and the release (starvation shows as calls
		// that time out, not as a lapsed lease), and a fresh key for
		// each attempt do0 makes, so that a retry after a transport
		// failure does not find the previous attempt's lease.
		const workTTL = 30 * time.Second
		var k string
		start := time.Now()
		err := do0(func(ctx context.Context) error {
			k = key(t, "work")
			l, err := c.TryClaim(ctx, k, workTTL)
			if err != nil {
				return err
			}
			if err := c.Commit(ctx, l, []byte("v"), 0); err != nil {
				return err
			}
			if _, err := c.Get(ctx, k); err != nil {
				return err
			}
			return c.Release(ctx, l)
		})
		if err != nil {
			t.Fatalf("claim/commit/get/release with %d live subscriptions on a one-connection pool: %v", nsubs, err)
		}
		withSubs := time.Since(start)

		// Many waiters on one key, in turn.
		// A waiter whose call fails for a transport reason tries again,
		// as flight does; such errors are counted, not failures.
		const waiters = 40
		hot := key(t, "hot")
		var wg sync.WaitGroup
		var transient atomic.Int64
		errs := make(chan error, waiters)
		start = time.Now()
		for i := range waiters {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
				defer cancel()
				for ctx.Err() == nil {
					l, err := c.Acquire(ctx, hot, 10*time.Second)
					if err != nil {
						if ctx.Err() == nil && !isAnswer(err) {
							transient.Add(1)
							continue
						}
						errs <- fmt.Errorf("waiter %d: acquire: %w", i, err)
						return
					}
					if err := c.Commit(ctx, l, fmt.Appendf(nil, "w%d", i), 0); isAnswer(err) {
						errs <- fmt.Errorf("waiter %d: commit: %w", i, err)
					} else if err != nil {
						transient.Add(1)
					}
					if err := do0(func(ctx context.Context) error { return c.Release(ctx, l) }); err != nil {
						errs <- fmt.Errorf("waiter %d: release: %w", i, err)
					}
					return
				}
				errs <- fmt.Errorf("waiter %d: no lease in 90 s", i)
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		herd := time.Since(start)

		// One stuck connection: calls fail within their timeout.
		pu, p := proxied(t, u)
		s := open(t, pu)
		if err := do0(func(ctx context.Context) error { _, err := s.TryClaim(ctx, key(t, "warm"), b.ttl); return err }); err != nil {
			t.Fatalf("claim through the proxy: %v", err)
		}
		p.blackhole()
		ops := map[string]func(ctx context.Context) error{}
		for i := range 8 {
			ops[fmt.Sprintf("TryClaim#%d", i)] = func(ctx context.Context) error {
				_, err := s.TryClaim(ctx, key(t, "stuck"), b.ttl)
				return err
			}
			ops[fmt.Sprintf("Get#%d", i)] = func(ctx context.Context) error { _, err := s.Get(ctx, k); return err }
		}
		worst, finish := boundedCalls(t, b, "a blackholed one-connection pool", ops, opTimeout)
		p.heal()
		finish()
		if t.Failed() {
			return
		}
		pool := "default pool"
		if b.pool != "" {
			pool = b.pool
		}
		figure(t, "pool starvation", "client pool", b.name, "%s", pool)
		figure(t, "pool starvation", "claim+commit+get+release with 20 live subscriptions", b.name, "%s", ms(withSubs))
		figure(t, "pool starvation", "40 waiters through one key, in turn (deadlocks; transient errors retried)", b.name, "%s (0; %d)", ms(herd), transient.Load())
		figure(t, "pool starvation", "slowest of 16 calls on a stuck pool (timeout 500 ms)", b.name, "%s", ms(worst))
	})
}
