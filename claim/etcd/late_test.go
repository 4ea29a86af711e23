package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// lateMark marks a context whose Txn "times out" after it was applied.
type lateMark struct{}

// appliedThenTimedOut is a gRPC interceptor that lets a Txn made on a
// context marked with lateMark reach the server and be applied, then
// reports a deadline exceeded to the caller, as when a request lands after
// the client gave up on it (slow raft, slow network).
func appliedThenTimedOut(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil && method == "/etcdserverpb.KV/Txn" && ctx.Value(lateMark{}) != nil {
		return status.Error(codes.DeadlineExceeded, "context deadline exceeded (the Txn was applied)")
	}
	return err
}

// TestLateExtendKeepsHolder: an Extend to another TTL (the path that
// grants a new etcd lease and moves the lock key onto it) whose Txn is
// applied but whose answer the client never gets must leave the holder its
// lease until its local Deadline. The driver revoked the new etcd lease on
// the error, which deleted the lock key the Txn had just moved onto it:
// another process then claimed the key at once, 20 s before the first
// holder's Deadline: two holders (found by review).
func TestLateExtendKeepsHolder(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	prefix := fmt.Sprintf("late-extend-%d", time.Now().UnixNano())
	cli := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()},
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(appliedThenTimedOut)}})
	holder, err := New(cli, &Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close() })
	other := backendtest.Open(t, withPrefix(t, srv, prefix))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	l, err := holder.TryClaim(ctx, "k", 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The Extend's Txn lands, its answer is lost: the holder keeps l.
	if _, err := holder.Extend(context.WithValue(ctx, lateMark{}, true), l, 30*time.Second); err == nil {
		t.Fatal("Extend succeeded; the interceptor should have failed it")
	} else if errors.Is(err, claim.ErrLost) {
		t.Fatalf("Extend: %v, want a timeout", err)
	}
	// Within 3 s (l's Deadline is ~20 s away) nobody else may claim k.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		o, err := other.TryClaim(ctx, "k", 2*time.Second)
		if err == nil {
			t.Fatalf("another process claimed k (token %d) %s before the holder's Deadline (token %d): two holders",
				o.Token, time.Until(l.Deadline).Round(time.Millisecond), l.Token)
		}
		if !errors.Is(err, claim.ErrHeld) {
			t.Fatal(err)
		}
	}
	if err := holder.Release(ctx, l); err != nil {
		t.Errorf("Release by the holder: %v", err)
	}
}

// delayMark marks a context whose Txn is delayed in the network: the
// caller is told it timed out at once, and the request reaches the server
// only once the gate is closed.
type delayMark struct{}

// delayedTxn returns an interceptor that, for a Txn on a context marked
// with delayMark, returns a deadline exceeded at once and sends the
// request once gate is closed (landed is closed after it was applied).
func delayedTxn(gate <-chan struct{}, landed chan<- error) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != "/etcdserverpb.KV/Txn" || ctx.Value(delayMark{}) == nil {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		go func() {
			<-gate
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			landed <- invoker(ctx, method, req, reply, cc, opts...)
		}()
		return status.Error(codes.DeadlineExceeded, "context deadline exceeded (the Txn is still on its way)")
	}
}

// TestLateEnqueueAfterDequeue: a waiter's Enqueue whose Txn the client
// gave up on (it leaves the queue: Dequeue) but which reaches the server
// after the Dequeue re-added the departed waiter's entry, on an etcd lease
// the driver neither revoked nor renewed, live for its whole TTL; a
// release then granted the key to that departed waiter instead of the
// live waiter queued behind it, which waited about a TTL (found by
// review). Now the lease of an Enqueue that lost its answer is revoked
// when the waiter leaves, and the late write is refused.
func TestLateEnqueueAfterDequeue(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	prefix := fmt.Sprintf("late-enqueue-%d", time.Now().UnixNano())
	gate := make(chan struct{})
	landed := make(chan error, 1)
	cli := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()},
		DialOptions: []grpc.DialOption{grpc.WithUnaryInterceptor(delayedTxn(gate, landed))}})
	gone, err := New(cli, &Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gone.Close() })
	holder := backendtest.Open(t, withPrefix(t, srv, prefix))
	live := backendtest.Open(t, withPrefix(t, srv, prefix))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ttl = 10 * time.Second

	l0, err := holder.AcquireFair(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	// The departing waiter: its Enqueue "times out" and it leaves.
	g := drv(gone)
	const w = "00000000000000000000dead"
	if _, err := g.Enqueue(context.WithValue(ctx, delayMark{}, true), "k", w, ttl); err == nil || errors.Is(err, claim.ErrHeld) {
		t.Fatalf("Enqueue: %v, want a timeout", err)
	}
	if err := g.Dequeue(ctx, "k", w); err != nil {
		t.Fatal(err)
	}
	// Now the abandoned Enqueue reaches the server: refused (its lease
	// was revoked when the waiter left), or landed on a lease that ends.
	close(gate)
	if err := <-landed; err != nil {
		t.Logf("the late Enqueue: %v", err)
	}
	// A live waiter queues, and the holder releases.
	type res struct {
		l   claim.Lease
		err error
	}
	got := make(chan res, 1)
	go func() {
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		l, err := live.AcquireFair(actx, "k", ttl)
		got <- res{l, err}
	}()
	waitCached(t, holder, "k", 1) // the live waiter only: the late entry was refused
	if err := holder.Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		kv, _ := drv(holder).cli.Load().Get(ctx, drv(holder).lockKey("k"))
		t.Fatalf("the live waiter did not get the key within 3 s of the release (TTL %s): %v; lock key %v (the departed waiter %s dequeued before)",
			ttl, r.err, kv.Kvs, w)
	}
	_ = live.Release(ctx, r.l)
}
