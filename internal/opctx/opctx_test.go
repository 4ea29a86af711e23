package opctx

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type ctxKey struct{}

func TestOpCtxUnarmed(t *testing.T) {
	parent := context.WithValue(context.Background(), ctxKey{}, "v")
	d := time.Now().Add(50 * time.Millisecond)
	o := New(parent, d)
	if got, ok := o.Deadline(); !ok || !got.Equal(d) {
		t.Fatalf("Deadline = %v, %v; want %v", got, ok, d)
	}
	if err := o.Err(); err != nil {
		t.Fatalf("Err before the deadline: %v", err)
	}
	time.Sleep(time.Until(d) + time.Millisecond)
	if err := o.Err(); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Err after the deadline: %v", err)
	}
	if o.armed.Load() != nil {
		t.Fatal("Err and Deadline armed a timer")
	}
	// Armed late: the real context starts expired, and agrees.
	select {
	case <-o.Done():
	case <-time.After(time.Second):
		t.Fatal("Done not closed after the deadline")
	}
	if err, cause := o.Err(), context.Cause(o); err != context.DeadlineExceeded || cause != context.DeadlineExceeded {
		t.Fatalf("Err %v, Cause %v; want DeadlineExceeded", err, cause)
	}
	if v := o.Value(ctxKey{}); v != "v" {
		t.Fatalf("Value = %v", v)
	}
	o.Stop()
}

func TestOpCtxArmed(t *testing.T) {
	o := New(context.Background(), time.Now().Add(30*time.Millisecond))
	defer o.Stop()
	done := o.Done()
	child, cancel := context.WithCancel(o)
	defer cancel()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Done not closed at the deadline")
	}
	<-child.Done()
	if !errors.Is(o.Err(), context.DeadlineExceeded) || !errors.Is(child.Err(), context.DeadlineExceeded) {
		t.Fatalf("Err %v, child %v", o.Err(), child.Err())
	}
}

func TestOpCtxStop(t *testing.T) {
	// Stopped unarmed: Err says Canceled, and a later Done is closed.
	o := New(context.Background(), time.Now().Add(time.Hour))
	o.Stop()
	if err := o.Err(); err != context.Canceled {
		t.Fatalf("Err after stop: %v", err)
	}
	select {
	case <-o.Done():
	default:
		t.Fatal("Done after stop not closed")
	}
	if err := o.Err(); err != context.Canceled {
		t.Fatalf("Err after stop, armed: %v", err)
	}
	// Stopped armed: the real context and its children are cancelled.
	o = New(context.Background(), time.Now().Add(time.Hour))
	child, cancel := context.WithCancel(o)
	defer cancel()
	o.Stop()
	<-child.Done()
	if err := o.Err(); err != context.Canceled {
		t.Fatalf("Err: %v", err)
	}
}

func TestOpCtxParent(t *testing.T) {
	parent, cancel := context.WithCancel(context.Background())
	o := New(parent, time.Now().Add(time.Hour))
	defer o.Stop()
	cancel()
	if err := o.Err(); err != context.Canceled {
		t.Fatalf("Err after the parent's cancel, unarmed: %v", err)
	}
	<-o.Done()
	// A parent deadline earlier than ours is the one reported.
	early := time.Now().Add(time.Minute)
	p2, cancel2 := context.WithDeadline(context.Background(), early)
	defer cancel2()
	o2 := New(p2, time.Now().Add(time.Hour))
	defer o2.Stop()
	if d, _ := o2.Deadline(); !d.Equal(early) {
		t.Fatalf("Deadline %v, want the parent's %v", d, early)
	}
}

// A context derived from an opCtx hangs off the armed context, like any
// context's child: no goroutine watches it.
func TestOpCtxDerivedNoGoroutine(t *testing.T) {
	o := New(context.Background(), time.Now().Add(time.Hour))
	defer o.Stop()
	before := runtime.NumGoroutine()
	var cancels []context.CancelFunc
	for range 100 {
		_, cancel := context.WithCancel(o)
		cancels = append(cancels, cancel)
	}
	if n := runtime.NumGoroutine() - before; n > 10 {
		t.Fatalf("%d goroutines for 100 derived contexts", n)
	}
	for _, c := range cancels {
		c()
	}
}

func TestWithin(t *testing.T) {
	now := time.Now()
	d := now.Add(time.Second)
	early, cancel := context.WithDeadline(context.Background(), now.Add(time.Millisecond))
	defer cancel()
	late, cancel2 := context.WithDeadline(context.Background(), now.Add(time.Hour))
	defer cancel2()
	for _, c := range []struct {
		name   string
		parent context.Context
		want   bool
	}{
		{"no deadline", context.Background(), false},
		{"earlier deadline", early, true},
		{"same deadline", New(context.Background(), d), true},
		{"later deadline", late, false},
		{"an opctx under an earlier deadline", New(early, now.Add(time.Hour)), true},
	} {
		if got := Within(c.parent, d); got != c.want {
			t.Errorf("%s: Within = %v, want %v", c.name, got, c.want)
		}
	}
}
