package conformance

import (
	"context"
	"errors"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// Checks that need more of the harness than Open.
func init() {
	register("Isolation", checkIsolation)
	registerAlone("DurableFence", checkDurableFence)
}

// isolated opens a client in another namespace (Harness.OpenIsolated);
// the suite closes it when the check ends.
func (t *T) isolated() *claim.Client {
	if t.h.OpenIsolated == nil {
		t.Skipf("Harness.OpenIsolated is nil")
	}
	c, err := t.h.OpenIsolated(t.ctx)
	if err != nil {
		t.Fatalf("open isolated client: %v", err)
	}
	t.mu.Lock()
	t.clients = append(t.clients, c)
	t.mu.Unlock()
	return c
}

// checkIsolation: two namespaces of one server (Harness.OpenIsolated)
// share nothing: the same key is claimed, stored, woken and published on
// independently in each.
func checkIsolation(t *T) {
	ctx := t.Context()
	b := t.isolated()
	a := t.Client()
	k := t.Key("k")
	la, err := a.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	lb, err := b.TryClaim(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("TryClaim of the same key in another namespace: %v (the namespaces share leases)", err)
	}
	if err := a.Commit(ctx, la, []byte("a"), 0); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if v, err := b.Get(ctx, k); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get in another namespace = %q, %v; want ErrNotFound (the namespaces share values)", v, err)
	}
	if err := b.Set(ctx, t.Key("set"), []byte("b"), 0); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if v, err := a.Get(ctx, t.Key("set")); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get of the other namespace's Set = %q, %v; want ErrNotFound", v, err)
	}
	// Wake-ups: a release in one namespace wakes its own subscriber (the
	// witness) and not the other namespace's.
	sa, err := a.Subscribe(ctx, k)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sa.Close()
	sb, err := b.Subscribe(ctx, k)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sb.Close()
	start := time.Now()
	if err := b.Release(ctx, lb); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if !woken(t, sb) {
		t.Errorf("a Release did not wake its own namespace's subscriber")
	}
	select {
	case <-sa.C():
		t.Errorf("a Release in another namespace woke this namespace's subscriber")
	case <-time.After(2*time.Since(start) + 50*time.Millisecond):
	}
	if _, err := a.TryClaim(ctx, k, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("a Release in another namespace freed this namespace's key: TryClaim err = %v", err)
	}
	// Topics: a message in one namespace reaches its handlers only.
	topic := t.Key("topic")
	ra, rb := newTopicRecorder(), newTopicRecorder()
	stopA, err := a.SubscribeTopic(ctx, topic, ra.handle)
	if err != nil {
		t.Fatalf("SubscribeTopic: %v", err)
	}
	defer stopA()
	stopB, err := b.SubscribeTopic(ctx, topic, rb.handle)
	if err != nil {
		t.Fatalf("SubscribeTopic: %v", err)
	}
	defer stopB()
	if err := b.Publish(ctx, topic, []byte("b only")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if err := a.Publish(ctx, topic, []byte("a only")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got, _ := rb.await(t, 1); len(got) != 1 || string(got[0]) != "b only" {
		t.Errorf("handler in the publishing namespace got %q, want [b only]", got)
	}
	if got, _ := ra.await(t, 1); len(got) != 1 || string(got[0]) != "a only" {
		t.Errorf("handler in the other namespace got %q, want only its own namespace's [a only]", got)
	}
	_ = a.Release(ctx, la)
}

// checkDurableFence: where Features.DurableFence is true, fencing tokens
// keep increasing across a restart of the server (Harness.Restart). It
// runs alone, after every other check.
func checkDurableFence(t *T) {
	if !t.feat.DurableFence {
		t.Skipf("Features.DurableFence is false")
	}
	if t.h.Restart == nil {
		t.Skipf("Harness.Restart is nil")
	}
	ctx := t.Context()
	k := t.Key("k")
	before := t.Client()
	var last uint64
	for i := 0; i < 3; i++ {
		l, err := before.TryClaim(ctx, k, t.LongTTL())
		if err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
		last = l.Token
		if err := before.Release(ctx, l); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
	if err := t.h.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	after := t.Client()
	var l claim.Lease
	err := retry(ctx, func() (err error) {
		l, err = after.TryClaim(ctx, k, t.LongTTL())
		return err
	})
	if err != nil {
		t.Fatalf("TryClaim after the restart: %v", err)
	}
	if l.Token <= last {
		t.Errorf("token after a server restart %d <= %d before it: Features.DurableFence is true, but fences did not survive", l.Token, last)
	}
	_ = after.Release(ctx, l)
}

// retry calls f until it succeeds or ctx ends (a server coming back up).
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || errors.Is(err, claim.ErrHeld) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
