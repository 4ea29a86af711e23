package consul_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/clock"
	"github.com/stampede-go/stampede/internal/testserver"
)

// Tests of "takeover by sightings" (driver.Sightings, heldUntil) and of
// the fair queue's writes it depends on. A granter process whose clock
// reads granterAhead ahead of the others' (well within the default
// clock_skew of 50 ms) is simulated by one raw transaction, the one
// fairWrite sends (a lock record {"h","e","t"} made from the granter's
// clock). The grantee and the taker are two clients of this process (one
// clock), so "before the holder's Deadline" needs no assumption on clocks
// at all.

const (
	grantTTL     = time.Second
	granterAhead = 40 * time.Millisecond
)

// grantAhead writes key's lock record granting holder a lease of
// grantTTL, as fairWrite does in a process whose clock reads
// granterAhead ahead (the grant's own record bytes: newRecordServed), and
// returns the record's expiry (Unix ms) and the lock key's ModifyIndex.
// prev is the lock key's ModifyIndex to replace (0: the key is absent).
func grantAhead(t *testing.T, api *capi.Client, lk string, prev uint64, holder string) (int64, uint64) {
	t.Helper()
	exp := time.Now().Add(granterAhead + grantTTL)
	e := exp.UnixMilli()
	if time.UnixMilli(e).Before(exp) {
		e++
	}
	rec := fmt.Sprintf(`{"h":%q,"e":%d,"t":%d,"v":1}`, holder, e, grantTTL.Milliseconds())
	var ops capi.TxnOps
	if prev != 0 {
		ops = append(ops, &capi.TxnOp{KV: &capi.KVTxnOp{Verb: capi.KVDeleteCAS, Key: lk, Index: prev}})
	}
	ops = append(ops, &capi.TxnOp{KV: &capi.KVTxnOp{Verb: capi.KVCAS, Key: lk, Index: 0, Value: []byte(rec)}})
	ok, resp, _, err := api.Txn().Txn(ops, nil)
	if err != nil || !ok {
		t.Fatalf("grant: ok=%v err=%v resp=%+v", ok, err, resp)
	}
	return e, lockIndex(t, api, lk)
}

func lockIndex(t *testing.T, api *capi.Client, lk string) uint64 {
	t.Helper()
	p, _, err := api.KV().Get(lk, &capi.QueryOptions{RequireConsistent: true})
	if err != nil || p == nil {
		t.Fatalf("read %s: %v %v", lk, p, err)
	}
	return p.ModifyIndex
}

// takeOver has b claim key as soon as it may, and returns the local time
// its successful TryClaim returned (the takeover's write came before).
func takeOver(t *testing.T, b *claim.Client, key string) (claim.Lease, time.Time) {
	t.Helper()
	ctx := backendtest.Context(t)
	for i := 0; i < 100; i++ {
		l, err := b.TryClaim(ctx, key, time.Minute)
		if err == nil {
			return l, time.Now()
		}
		var he *claim.HeldError
		if !errors.As(err, &he) {
			t.Fatalf("taker's TryClaim: %v", err)
		}
		time.Sleep(max(he.Remaining, 100*time.Microsecond))
	}
	t.Fatal("taker never took over")
	return claim.Lease{}, time.Time{}
}

// TestExtendMovesRev: Consul does not move a key's ModifyIndex on a
// write of the bytes it holds (agent/consul/state/kvs.go, kvsSetTxn:
// "Skip further writing ... if the entry is not actually changed"), and
// the ModifyIndex is the Rev a waiter's sighting is of (heldUntil). An
// Extend whose record came out byte for byte the one it replaces (the
// same holder, TTL and served entries, and the same expiry: a grant
// written on a clock ahead of the grantee's by the time between the two)
// kept the grant's index, and a waiter that saw the grant counted the
// renewed lease from that sighting: taken over about the clock offset
// before the holder's Deadline (measured with real clocks, 40 ms ahead:
// 31 ms early). The lease clock is frozen here, so the Extend's record
// is computed at the grant's instant: every Extend must still move the
// index.
func TestExtendMovesRev(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := backendtest.Context(t)
	api := apiClient(t, srv)
	a := backendtest.Open(t, uniq(t, srv))
	const key = "k"
	lk := consul.NamesForTest(a, key)[0]
	// freeze stops the lease clock at t.
	freeze := func(t0 time.Time) {
		if err := clock.Set(time.Until(t0), 1e-9); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	freeze(t0)
	defer clock.Reset()
	// The grant, as fairWrite writes it, of a lease of grantTTL to "w"
	// counted from the (frozen) lease clock.
	rec := fmt.Sprintf(`{"h":"w","e":%d,"t":%d,"v":1}`, ceilMsTest(clock.Now().Add(grantTTL)), grantTTL.Milliseconds())
	ok, resp, _, err := api.Txn().Txn(capi.TxnOps{{KV: &capi.KVTxnOp{Verb: capi.KVCAS, Key: lk, Index: 0, Value: []byte(rec)}}}, nil)
	if err != nil || !ok {
		t.Fatalf("grant: ok=%v err=%v resp=%+v", ok, err, resp)
	}
	// The grantee's lease as Enqueue's step 2 returns it.
	gl, err := a.Driver().(driver.Queuer).Enqueue(ctx, key, "w", grantTTL)
	if err != nil {
		t.Fatalf("grantee's Enqueue: %v", err)
	}
	for i := range 3 {
		// Each Extend computes, from its clock, the expiry the record
		// it replaces holds: the grant's, then the renewal before's
		// (each a millisecond later than the one before it).
		freeze(t0.Add(time.Duration(i) * time.Millisecond))
		before := lockIndex(t, api, lk)
		gl, err = a.Driver().Extend(ctx, gl, grantTTL)
		if err != nil {
			t.Fatalf("Extend %d: %v", i, err)
		}
		if after := lockIndex(t, api, lk); after == before {
			t.Fatalf("Extend %d left the lock key's ModifyIndex at %d: one Rev for two lease writes", i, after)
		}
	}
}

// ceilMsTest is t in Unix milliseconds, rounded up (as the driver's
// records are).
func ceilMsTest(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// TestStep2LeaseWithinRecordedTTL: Enqueue's step 2 (queue.go,
// "granted meanwhile") returns the lease with TTL = recorded expiry less
// the grantee's now, so its Deadline (the client's since + TTL) counts
// the granter's clock offset in. Before the change that was covered by
// the clock rule (taker at expiry + clock_skew); a taker that judges by
// its first sighting of the grant plus the record's TTL takes over up to
// the granter's offset before the grantee's Deadline.
func TestStep2LeaseWithinRecordedTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := backendtest.Context(t)
	api := apiClient(t, srv)
	h, a, b := backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv)), backendtest.Open(t, uniq(t, srv))
	qa := a.Driver().(driver.Queuer)
	const key = "k"
	lk := consul.NamesForTest(a, key)[0]
	hl := backendtest.Claim(t, h, key, time.Minute)
	_ = hl
	since := time.Now() // AcquireFair's cl.start: queued
	if _, err := qa.Enqueue(ctx, key, "w", grantTTL); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("grantee's first Enqueue: %v, want ErrHeld", err)
	}
	// The holder's process (clock granterAhead ahead) hands over to w.
	_, _ = grantAhead(t, api, lk, lockIndex(t, api, lk), "w")
	if _, err := b.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("taker's first TryClaim: %v, want ErrHeld", err)
	}
	// The grantee's next Enqueue (its grant subscription reset, or its
	// timer) finds the grant: step 2.
	gl, err := qa.Enqueue(ctx, key, "w", grantTTL)
	if err != nil {
		t.Fatalf("grantee's second Enqueue: %v", err)
	}
	gl.Deadline = since.Add(gl.TTL) // fairLease(l, key, holder, since=queued), fair.go
	t.Logf("step 2 lease TTL %s (the record says %s)", gl.TTL, grantTTL)
	nl, got := takeOver(t, b, key)
	defer func() { _ = b.Release(ctx, nl) }()
	if got.Before(gl.Deadline) {
		t.Fatalf("taken over %s before the grantee's Deadline (grantee and taker on one clock; granter %s ahead, under clock_skew)", gl.Deadline.Sub(got), granterAhead)
	}
}

// TestEnqueueWithoutLockKey: Enqueue's step 4 with no lock key
// (queue.go: left := time.Until(b.heldUntil(f.lock.Key, f.lock, ...)),
// evaluated before the c.grant override) dereferences a nil f.lock. The
// lock key is absent while waiters are queued once Sweep has deleted a
// dead holder's expired record before the waiters enqueued again; the
// next waiter that is not first grants the key to the first (step 4)
// and then panics, after its write landed. Before the change that line
// read f.rec.Expiry (a zero record), not f.lock.
func TestEnqueueWithoutLockKey(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	ctx := backendtest.Context(t)
	u := uniq(t, srv, "clock_skew", "10ms")
	h, x, y := backendtest.Open(t, u), backendtest.Open(t, u), backendtest.Open(t, u)
	const key = "k"
	if _, err := h.Driver().(driver.Queuer).Enqueue(ctx, key, "h", 100*time.Millisecond); err != nil {
		t.Fatalf("holder's Enqueue: %v", err)
	}
	for _, c := range []struct {
		cl     *claim.Client
		holder string
	}{{x, "x"}, {y, "y"}} {
		if _, err := c.cl.Driver().(driver.Queuer).Enqueue(ctx, key, c.holder, time.Minute); !errors.Is(err, claim.ErrHeld) {
			t.Fatalf("%s's Enqueue: %v, want ErrHeld", c.holder, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // the holder died; its lease expired
	if n, err := consul.Sweep(ctx, h); err != nil || n != 1 {
		t.Fatalf("Sweep: %d, %v; want the expired lock key deleted", n, err)
	}
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("y's Enqueue (x first in the queue, no lock key) panicked: %v", r)
			}
		}()
		_, err := y.Driver().(driver.Queuer).Enqueue(ctx, key, "y", time.Minute)
		if !errors.Is(err, claim.ErrHeld) {
			t.Errorf("y's Enqueue: %v, want ErrHeld (x granted)", err)
		}
	}()
}

// TestEarlierVersionsByClockRule: a lock record without "v" was written
// by or granted to a process of an earlier version, whose Deadline may
// run past a waiter's sighting plus the recorded TTL (its Enqueue's
// lease carried the granter's clock offset; its Extend could write the
// grant's bytes again): a waiter that saw it written still waits for the
// recorded expiry plus clock_skew, as earlier versions did. With "v":1,
// the same record is taken over by the sighting.
func TestEarlierVersionsByClockRule(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	api := apiClient(t, srv)
	const skew = 2 * time.Second
	w := backendtest.Open(t, uniq(t, srv, "clock_skew", skew.String()))
	backendtest.EarlierVersionsByClockRule(t, w, skew, func(key string, marked bool) {
		v := ""
		if marked {
			v = `,"v":1`
		}
		rec := fmt.Sprintf(`{"h":"old","e":%d,"t":%d%s}`, ceilMsTest(time.Now().Add(time.Second)), time.Second.Milliseconds(), v)
		lk := consul.NamesForTest(w, key)[0]
		if ok, _, _, err := api.Txn().Txn(capi.TxnOps{{KV: &capi.KVTxnOp{Verb: capi.KVCAS, Key: lk, Index: 0, Value: []byte(rec)}}}, nil); err != nil || !ok {
			t.Fatalf("write %s: %v %v", rec, ok, err)
		}
	})
}
