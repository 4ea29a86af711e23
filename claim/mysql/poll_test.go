package mysql

import (
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestPollCarriesCommittedValue: the poll reads the value with the claim
// row only after a CommitRelease (odd wake-up counter), only when the
// counter moved since the previous poll (since), and never on a
// subscription's first read; a Release, a Notify and a Revoke leave the
// counter even, and the value unread.
func TestPollCarriesCommittedValue(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "pollvalue_", "sweep", "0"))
	ctx := backendtest.Context(t)
	b := c.Driver().(*backend)
	key := "poll-value " + t.Name()
	poll := func(since string) driver.PollState {
		t.Helper()
		st, err := b.pollState(ctx, key, since)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	l, err := b.TryClaim(ctx, key, lease1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	before := poll("")
	if err := b.CommitRelease(ctx, l, []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	if st := poll(before.Token); !st.Valued || string(st.Value) != "v1" {
		t.Errorf("the poll after a CommitRelease: %+v, want the value", st)
	}
	after := poll("")
	if after.Valued {
		t.Errorf("a first read carried a value: %+v", after)
	}
	if st := poll(after.Token); st.Valued {
		t.Errorf("a poll with the counter unchanged carried a value: %+v", st)
	}
	steps := []struct {
		what string
		do   func() error
	}{
		{"Release", func() error {
			l, err := b.TryClaim(ctx, key, lease1, time.Minute)
			if err != nil {
				return err
			}
			return b.Release(ctx, l)
		}},
		{"Notify", func() error { return b.Notify(ctx, key) }},
		{"RevokeSet", func() error { return b.Revoke(ctx, key, []byte("r"), 0) }},
	}
	for _, s := range steps {
		prev := poll("")
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		st := poll(prev.Token)
		if st.Token == prev.Token {
			t.Errorf("%s did not move the wake-up counter (%s)", s.what, st.Token)
		}
		if st.Valued {
			t.Errorf("the poll after %s carried a value: %+v", s.what, st)
		}
	}
	// A value over the bound is left for the waiter to read.
	l, err = b.TryClaim(ctx, key, lease1, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	prev := poll("")
	if err := b.CommitRelease(ctx, l, make([]byte, maxWakeValue+1), 0); err != nil {
		t.Fatal(err)
	}
	if st := poll(prev.Token); st.Valued || st.Token == prev.Token {
		t.Errorf("the poll after a CommitRelease of %d bytes: valued %v, token %s (was %s); want a wake-up without the value", maxWakeValue+1, st.Valued, st.Token, prev.Token)
	}
}

// TestPollStatesMatchPollState: the batched poll (one SELECT of many
// keys) reads what the single-key poll reads, key by key: a key never
// claimed, one held, one committed with a value (carried only where the
// key's since differs), one released without a value, one committed with
// a value over the bound; and no values at all without since
// (SubscribeMany's first reads).
func TestPollStatesMatchPollState(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "pollmany_", "sweep", "0"))
	ctx := backendtest.Context(t)
	b := c.Driver().(*backend)
	key := func(s string) string { return "poll-many " + s }
	keys := []string{key("never"), key("held"), key("committed"), key("released"), key("big"), key("committed-seen")}
	claim := func(k string) driver.Lease {
		t.Helper()
		l, err := b.TryClaim(ctx, k, lease1, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	claim(key("held"))
	if err := b.CommitRelease(ctx, claim(key("committed")), []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.Release(ctx, claim(key("released"))); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitRelease(ctx, claim(key("big")), make([]byte, maxWakeValue+1), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.CommitRelease(ctx, claim(key("committed-seen")), []byte("w"), 0); err != nil {
		t.Fatal(err)
	}
	first, err := b.pollStates(ctx, keys, nil)
	if err != nil {
		t.Fatal(err)
	}
	// since: a counter before every change, except for committed-seen,
	// whose current counter its loop has seen already.
	since := []string{"0", "0", "0", "0", "0", first[5].Token}
	polled, err := b.pollStates(ctx, keys, since)
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		for _, c := range []struct {
			since string
			got   driver.PollState
		}{{"", first[i]}, {since[i], polled[i]}} {
			want, err := b.pollState(ctx, k, c.since)
			if err != nil {
				t.Fatal(err)
			}
			got := c.got
			if got.Token != want.Token || got.Holder != want.Holder || got.Valued != want.Valued || string(got.Value) != string(want.Value) ||
				got.Expires.IsZero() != want.Expires.IsZero() || got.Expires.Sub(want.Expires).Abs() > 5*time.Second {
				t.Errorf("%q since %q: batched %+v, single %+v", k, c.since, got, want)
			}
		}
	}
	// What each key should show, in case both polls are wrong alike.
	if polled[0].Token != "0" || polled[0].Holder != "" {
		t.Errorf("never claimed: %+v", polled[0])
	}
	if polled[1].Holder == "" || polled[1].Expires.IsZero() {
		t.Errorf("held: %+v, want its holder", polled[1])
	}
	if !polled[2].Valued || string(polled[2].Value) != "v" || first[2].Valued {
		t.Errorf("committed: %+v (first read %+v), want the value on the poll only", polled[2], first[2])
	}
	if polled[3].Valued || polled[4].Valued || polled[5].Valued {
		t.Errorf("released %+v, big %+v, committed-seen %+v: want no value", polled[3], polled[4], polled[5])
	}
}
