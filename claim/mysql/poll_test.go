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
