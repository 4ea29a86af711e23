package dynamo

import (
	"context"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestReadStatesMatchReadState: the batched poll (one BatchGetItem of
// many keys' poll attributes) reads what the single-key poll (GetItem)
// reads, key by key: a key never used, one held, one released, one
// notified.
func TestReadStatesMatchReadState(t *testing.T) {
	srv := testserver.Shared(t, testserver.Dynamo)
	c := backendtest.Open(t, table(t, srv))
	b := c.Driver().(*backend)
	ctx := context.Background()
	key := func(s string) string { return "poll-many " + t.Name() + " " + s }
	keys := []string{key("never"), key("held"), key("released"), key("notified")}
	if _, err := b.TryClaim(ctx, key("held"), "h1", time.Minute); err != nil {
		t.Fatal(err)
	}
	l, err := b.TryClaim(ctx, key("released"), "h2", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	if err := b.Notify(ctx, key("notified")); err != nil {
		t.Fatal(err)
	}
	sts, err := b.readStates(ctx, keys, make([]string, len(keys)))
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		want, err := b.readState(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got := sts[i]
		if got.Token != want.Token || got.Holder != want.Holder || got.Expires.IsZero() != want.Expires.IsZero() || got.Expires.Sub(want.Expires).Abs() > 5*time.Second {
			t.Errorf("%q: batched %+v, single %+v", k, got, want)
		}
	}
	if sts[0].Token != "0" || sts[0].Holder != "" {
		t.Errorf("never used: %+v", sts[0])
	}
	if sts[1].Holder == "" || sts[1].Expires.IsZero() {
		t.Errorf("held: %+v, want its holder and expiry", sts[1])
	}
	if sts[2].Holder != "" || sts[2].Token == "0" || sts[3].Token == "0" {
		t.Errorf("released %+v, notified %+v: want no holder, a counter", sts[2], sts[3])
	}
}
