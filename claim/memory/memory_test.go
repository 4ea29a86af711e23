package memory_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func harness() conformance.Harness {
	sp := memory.NewSpace(nil)
	return conformance.Harness{
		Open:         func(context.Context) (*claim.Client, error) { return memory.New(sp, nil) },
		OpenIsolated: func(context.Context) (*claim.Client, error) { return memory.New(memory.NewSpace(nil), nil) },
	}
}

func TestConformance(t *testing.T) { conformance.Run(t, harness()) }

func BenchmarkConformance(b *testing.B) { conformance.Bench(b, harness()) }

func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	a, b := backendtest.Open(t, "mem://urltest"), backendtest.Open(t, "mem://urltest?maxvalue=10")
	l := backendtest.Claim(t, a, "k", time.Minute)
	if _, err := b.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("two mem://urltest clients do not share a space: %v", err)
	}
	if err := b.Set(ctx, "v", make([]byte, 11), 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("maxvalue=10: Set of 11 bytes: %v", err)
	}
	_ = a.Release(ctx, l)
	securitytest.OpenFails(t, "", "mem://x?nope=1", "mem://x?maxvalue=-1", "mem://x/path")
	_, err := claim.Open(ctx, "nosuch://u:secretpw@host/")
	if err == nil || !strings.Contains(err.Error(), "mem") || strings.Contains(err.Error(), "secretpw") {
		t.Errorf("unknown scheme: err = %v; want the registered schemes listed and no password", err)
	}
}

// An injected clock decides expiry.
func TestClock(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1000, 0)
	a, b := backendtest.MemoryPair(t, &memory.SpaceOptions{Clock: func() time.Time { return now }})
	if _, err := a.TryClaim(ctx, "k", time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := a.Set(ctx, "v", []byte("x"), time.Hour); err != nil {
		t.Fatal(err)
	}
	var he *claim.HeldError
	if _, err := b.TryClaim(ctx, "k", time.Hour); !errors.As(err, &he) || he.Remaining != time.Hour {
		t.Fatalf("held: %v", err)
	}
	now = now.Add(time.Hour)
	if _, err := b.TryClaim(ctx, "k", time.Hour); err != nil {
		t.Errorf("after the injected clock passed the TTL: %v", err)
	}
	if _, err := b.Get(ctx, "v"); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("value past its TTL by the injected clock: %v", err)
	}
}

// One Space-level subscription per key per client, however many waiters.
func TestOneSubscriptionPerKey(t *testing.T) {
	ctx := context.Background()
	b, _ := memory.New(nil, nil)
	defer b.Close()
	var subs []*claim.Subscription
	for i := 0; i < 50; i++ {
		s, err := b.Subscribe(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if n := b.Subscriptions(); n != 1 {
		t.Errorf("50 subscribers of one key: %d substrate subscriptions, want 1", n)
	}
	for _, s := range subs {
		s.Close()
	}
	if n := b.Subscriptions(); n != 0 {
		t.Errorf("after every subscriber left: %d substrate subscriptions, want 0", n)
	}
}

func TestBroadcast(t *testing.T) {
	ctx := context.Background()
	a, b := backendtest.MemoryPair(t, nil)
	got := make(chan string, 4)
	stop, err := b.SubscribeTopic(ctx, "t", func(msg []byte, reset bool) { got <- string(msg) })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := a.Publish(ctx, "t", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if m := <-got; m != "hello" {
		t.Errorf("got %q", m)
	}
	stop()
	stop()
}
