package claim_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
)

// noQueue hides a driver's optional interfaces, driver.Queuer among them.
type noQueue struct{ driver.Driver }

func TestAcquireFairUnsupported(t *testing.T) {
	m, _ := memory.New(nil, nil)
	c := claim.NewClient(noQueue{m.Driver()}, nil)
	defer c.Close()
	_, err := c.AcquireFair(context.Background(), "k", time.Minute)
	if !errors.Is(err, claim.ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("AcquireFair without a driver.Queuer: %v, want ErrUnsupported", err)
	}
	if _, err := c.AcquireFair(context.Background(), "", time.Minute); !errors.Is(err, claim.ErrInvalidKey) {
		t.Errorf("AcquireFair of an empty key: %v, want ErrInvalidKey", err)
	}
}

// A hand-over lands in the waiter's AcquireFair with the granted token,
// a Deadline no later than the grant's TTL from now, and the value the
// holder committed with CommitRelease; the waiter's next Release hands on.
func TestAcquireFairHandOver(t *testing.T) {
	ctx := context.Background()
	a, b := twoProcesses(t)
	ttl := time.Minute
	l0, err := a.AcquireFair(ctx, "k", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if !l0.Fair {
		t.Fatal("a lease from AcquireFair is not marked Fair")
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := b.AcquireFair(ctx, "k", ttl)
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
		got <- l
	}()
	waitQueued()
	l0, err = a.Extend(ctx, l0, ttl) // Extend keeps the lease fair
	if err != nil || !l0.Fair {
		t.Fatalf("Extend: %v, fair %v", err, l0.Fair)
	}
	if err := a.CommitRelease(ctx, l0, []byte("v"), ttl); err != nil {
		t.Fatalf("CommitRelease (hand-over): %v", err)
	}
	l := <-got
	if l.Token <= l0.Token || !l.Fair {
		t.Errorf("granted lease %v (fair %v), want a token above %d", l, l.Fair, l0.Token)
	}
	if l.Deadline.After(time.Now().Add(ttl)) {
		t.Errorf("granted lease's Deadline %v is later than the grant's TTL from now", l.Deadline)
	}
	if v, err := b.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("value after CommitRelease of a fair lease: %q, %v", v, err)
	}
	if _, err := a.TryClaim(ctx, "k", ttl); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim while the waiter holds the granted lease: %v", err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := a.TryClaim(ctx, "k", ttl); err != nil {
		t.Errorf("TryClaim after the last hand-over: %v", err)
	}
}

// waitQueued gives a waiter time to queue. Whether it has or not, the
// test's outcome is the same (a key released before the waiter queued is
// claimed by it at once); only the path differs.
func waitQueued() { time.Sleep(30 * time.Millisecond) }

// twoProcesses returns two clients of one in-process space, as if in two
// processes, closed when the test ends (Close is idempotent).
func twoProcesses(t *testing.T) (a, b *claim.Client) {
	t.Helper()
	sp := memory.NewSpace(nil)
	a, _ = memory.New(sp, nil)
	b, _ = memory.New(sp, nil)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// A waiter whose context ends leaves the queue: the holder's release then
// frees the key instead of granting it to nobody for the lease's minute.
// AcquireFair returns at its context's end and dequeues in the background
// (it never waits past its ctx), so a release just after it may grant
// the key to the departed waiter: its Dequeue then hands the grant on,
// here to nobody, and the key is free within a round trip or two, far
// within the lease.
func TestAcquireFairCancel(t *testing.T) {
	ctx := context.Background()
	a, b := twoProcesses(t)
	l0, err := a.AcquireFair(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := b.AcquireFair(wctx, "k", time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("AcquireFair past its context: %v", err)
	}
	if err := a.Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		_, err := a.TryClaim(ctx, "k", time.Minute)
		if err == nil {
			break
		}
		if !errors.Is(err, claim.ErrHeld) || time.Now().After(end) {
			t.Fatalf("TryClaim after the only waiter left and the holder released: %v (granted to the departed waiter?)", err)
		}
	}
}

// Close while waiting ends AcquireFair with ErrClosed.
func TestAcquireFairClose(t *testing.T) {
	ctx := context.Background()
	a, b := twoProcesses(t)
	if _, err := a.AcquireFair(ctx, "k", time.Minute); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := b.AcquireFair(ctx, "k", time.Minute)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	select {
	case err := <-done:
		if !errors.Is(err, claim.ErrClosed) {
			t.Errorf("AcquireFair after Close: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("AcquireFair did not return after Close")
	}
}

// CommitReleaseMany of a fair lease commits and hands it over (a batch
// release would drop the queue).
func TestCommitReleaseManyFair(t *testing.T) {
	ctx := context.Background()
	a, b := twoProcesses(t)
	l0, err := a.AcquireFair(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := b.AcquireFair(ctx, "k", time.Minute)
		if err != nil {
			t.Errorf("waiter: %v", err)
		}
		got <- l
	}()
	waitQueued()
	errs, err := a.CommitReleaseMany(ctx, []claim.Commit{{Lease: l0, Value: []byte("v"), TTL: time.Minute}})
	if err != nil || errs[0] != nil {
		t.Fatalf("CommitReleaseMany: %v, %v", err, errs)
	}
	l := <-got
	if l.Token <= l0.Token {
		t.Errorf("granted token %d <= %d", l.Token, l0.Token)
	}
	if v, err := b.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Errorf("Get: %q, %v", v, err)
	}
	_ = b.Release(ctx, l)
}
