package etcd

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTakeoverBeforeLeaseExpiry: a holder whose etcd lease lives on (kept
// alive here, as a leader change would extend it) but whose deadline has
// passed without an Extend is taken over by a waiter that saw its claim a
// TTL ago, without waiting for etcd to expire the lease; the token rises.
func TestTakeoverBeforeLeaseExpiry(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	c := backendtest.Open(t, withPrefix(t, srv, "takeover"))
	b := drv(c)
	cli := b.cli.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	kctx, stop := context.WithCancel(ctx)
	defer stop()
	if _, err := cli.KeepAlive(kctx, g.ID); err != nil {
		t.Fatal(err)
	}
	lk := b.lockKey("k")
	put, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(clientv3.OpPut(lk, "0123456789abcdef01234567", clientv3.WithLease(g.ID))).Commit()
	if err != nil || !put.Succeeded {
		t.Fatalf("the holder's claim: %v, %v", put, err)
	}
	l, err := c.Acquire(ctx, "k", time.Second)
	if err != nil {
		t.Fatalf("Acquire of a claim whose holder stopped extending it: %v", err)
	}
	if l.Token <= uint64(put.Header.Revision) {
		t.Errorf("takeover token %d <= the holder's %d", l.Token, put.Header.Revision)
	}
	if r, err := cli.TimeToLive(ctx, g.ID); err != nil || r.TTL < 0 {
		t.Errorf("the holder's etcd lease: %v, %v; want it alive (the takeover must not have waited for it)", r, err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
}

// TestNoTakeoverWhileExtended: a waiter never takes over a claim its
// holder keeps extending; if it did, the holder must have been told its
// lease was lost.
func TestNoTakeoverWhileExtended(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	a := backendtest.Open(t, withPrefix(t, srv, "extended"))
	w := backendtest.Open(t, withPrefix(t, srv, "extended"))
	ctx := context.Background()
	l, err := a.TryClaim(ctx, "k", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := a.KeepAlive(ctx, l, nil)
	actx, cancel := context.WithTimeout(ctx, 3*l.TTL)
	defer cancel()
	got, err := w.Acquire(actx, "k", 2*time.Second)
	cur := k.Stop()
	switch {
	case err == nil && k.Err() == nil:
		t.Errorf("waiter took over (token %d) a claim its holder kept extending (token %d)", got.Token, l.Token)
	case err == nil:
		t.Logf("the holder lost its lease (%v) before the takeover", k.Err())
	case !errors.Is(err, context.DeadlineExceeded):
		t.Errorf("Acquire: %v, want a deadline exceeded", err)
	default:
		if err := a.Release(ctx, cur); err != nil {
			t.Errorf("Release by the holder: %v", err)
		}
	}
}

// TestClaimReusesLease: a released claim's etcd lease carries the next
// claim of the same TTL (no grant), one with a lease that is still in use
// never does, and a held key's attempt keeps its lease for later.
func TestClaimReusesLease(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	c := backendtest.Open(t, withPrefix(t, srv, "reuse"))
	o := backendtest.Open(t, withPrefix(t, srv, "reuse"))
	ctx := context.Background()
	l1, err := c.TryClaim(ctx, "a", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.TryClaim(ctx, "b", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l1.Handle == l2.Handle {
		t.Fatalf("two live claims on one etcd lease %s", l1.Handle)
	}
	if err := c.Release(ctx, l1); err != nil {
		t.Fatal(err)
	}
	l3, err := c.TryClaim(ctx, "c", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l3.Handle != l1.Handle {
		t.Errorf("claim after a release: etcd lease %s, want the released one, %s", l3.Handle, l1.Handle)
	}
	if l3.TTL != l1.TTL {
		t.Errorf("reused lease TTL %s, want %s", l3.TTL, l1.TTL)
	}
	// A held key: the attempt's lease is kept, and carries the next claim.
	if _, err := o.TryClaim(ctx, "b", 2*time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("TryClaim of a held key: %v, want ErrHeld", err)
	}
	l4, err := o.TryClaim(ctx, "d", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if n := countKeys(t, c, l4.Handle, l2.Handle, l3.Handle); n != 3 {
		t.Errorf("%d distinct etcd leases for 3 live claims, want 3", n)
	}
	for _, l := range []claim.Lease{l2, l3} {
		if err := c.Release(ctx, l); err != nil {
			t.Error(err)
		}
	}
	if err := o.Release(ctx, l4); err != nil {
		t.Error(err)
	}
}

// countKeys returns the number of distinct handles, each checked to hold
// exactly one key on the server.
func countKeys(t *testing.T, c *claim.Client, handles ...string) int {
	t.Helper()
	cli := drv(c).cli.Load()
	seen := map[string]bool{}
	for _, h := range handles {
		id := parseHandle(claim.Lease{Handle: h})
		r, err := cli.TimeToLive(context.Background(), id, clientv3.WithAttachedKeys())
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Keys) != 1 {
			t.Errorf("etcd lease %s holds %d keys, want 1", h, len(r.Keys))
		}
		seen[h] = true
	}
	return len(seen)
}
