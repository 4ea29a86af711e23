package claim_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/internal/backendtest"
)

func TestKeepAliveRenews(t *testing.T) {
	ctx := context.Background()
	a, b := backendtest.MemoryPair(t, nil)
	l, err := a.TryClaim(ctx, "k", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := a.KeepAlive(ctx, l, nil)
	time.Sleep(l.TTL + l.TTL/4) // past the original TTL: renewed meanwhile
	if _, err := b.TryClaim(ctx, "k", time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("kept-alive lease past its first TTL: TryClaim err = %v, want ErrHeld", err)
	}
	cur := k.Stop()
	k.Stop() // idempotent
	if k.Err() != nil {
		t.Errorf("Err after a clean Stop: %v", k.Err())
	}
	if !cur.Deadline.After(l.Deadline) || cur.Token != l.Token {
		t.Errorf("Stop returned %v, want the renewed lease (same token, later deadline than %v)", cur, l)
	}
	if k.Context().Err() == nil {
		t.Error("Context not cancelled after Stop")
	}
	select {
	case <-k.Lost():
		t.Error("Lost closed after a clean Stop")
	default:
	}
	if err := a.Release(ctx, cur); err != nil {
		t.Errorf("Release of the renewed lease: %v", err)
	}
}

func TestKeepAliveReportsErrLost(t *testing.T) {
	ctx := context.Background()
	a, _ := memory.New(nil, nil)
	defer a.Close()
	l, err := a.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	var cause error
	k := a.KeepAlive(ctx, l, &claim.KeepAliveOptions{Interval: 5 * time.Millisecond, OnLost: func(err error) { cause = err }})
	defer k.Stop()
	if err := a.Release(ctx, l); err != nil { // behind the keeper's back
		t.Fatal(err)
	}
	<-k.Lost()
	k.Stop() // waits for OnLost to have run
	if !errors.Is(k.Err(), claim.ErrLost) || !errors.Is(context.Cause(k.Context()), claim.ErrLost) || !errors.Is(cause, claim.ErrLost) {
		t.Errorf("after the lease was released elsewhere: Err %v, Cause %v, OnLost %v; want ErrLost", k.Err(), context.Cause(k.Context()), cause)
	}
}

// The keeper fences itself by the local clock, with its margin, even when
// the renewal call never returns (a cut network whose client ignores the
// context).
func TestKeepAliveSelfFences(t *testing.T) {
	ctx := context.Background()
	s := newScript(t)
	hang := make(chan struct{})
	defer close(hang)
	s.extend = func(context.Context, driver.Lease, time.Duration) (driver.Lease, error) {
		<-hang
		return driver.Lease{}, errors.New("network down")
	}
	a := claim.NewClient(s, nil)
	defer a.Close()
	l, err := a.TryClaim(ctx, "k", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	k := a.KeepAlive(ctx, l, &claim.KeepAliveOptions{Interval: 10 * time.Millisecond, Margin: time.Second})
	<-k.Lost()
	lostAt := time.Now()
	if !errors.Is(k.Err(), claim.ErrLost) {
		t.Errorf("Err = %v, want ErrLost", k.Err())
	}
	if !lostAt.Before(l.Deadline) {
		t.Errorf("loss reported at %s, after the lease's deadline %s: no self-fencing margin", lostAt, l.Deadline)
	}
	go func() { hang <- struct{}{} }()
	k.Stop()
}
