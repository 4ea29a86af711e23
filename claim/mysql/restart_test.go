package mysql

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestFenceAcrossCrash: the server is killed (SIGKILL, as in a crash)
// and restarted on the same data. A live lease survives (the key is still
// held, and its holder can still commit, extend and release it), and a
// key's next token is greater than every token issued before the crash,
// released or not: the claim rows are committed InnoDB rows.
func TestFenceAcrossCrash(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.MySQL, nil)
	c := backendtest.Open(t, srv.URL())
	ctx := backendtest.Context(t)
	held := backendtest.Claim(t, c, "held", time.Minute)
	var last uint64
	for range 3 {
		l := backendtest.Claim(t, c, "free", time.Minute)
		if err := c.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
		last = l.Token
	}

	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	// The pool's connections died with the server: the first calls may
	// fail while it reconnects.
	var l claim.Lease
	err := retry(ctx, func() (err error) { l, err = c.TryClaim(ctx, "free", time.Minute); return })
	if err != nil {
		t.Fatalf("TryClaim after restart: %v", err)
	}
	if l.Token <= last {
		t.Errorf("token after crash %d, want > %d", l.Token, last)
	}
	if _, err := c.TryClaim(ctx, "held", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim of a key held across the crash: %v, want ErrHeld", err)
	}
	if err := c.Commit(ctx, held, []byte("after"), 0); err != nil {
		t.Errorf("Commit of a lease held across the crash: %v", err)
	}
	if held, err = c.Extend(ctx, held, time.Minute); err != nil {
		t.Errorf("Extend of a lease held across the crash: %v", err)
	}
	if err := c.Release(ctx, held); err != nil {
		t.Errorf("Release of a lease held across the crash: %v", err)
	}
	if v, err := c.Get(ctx, "held"); err != nil || string(v) != "after" {
		t.Errorf("Get = %q, %v; want after", v, err)
	}
	next := backendtest.Claim(t, c, "held", time.Minute)
	if next.Token <= held.Token {
		t.Errorf("token after the crash %d, want > %d", next.Token, held.Token)
	}
}

// retry calls f until it succeeds (or ctx ends), 100 ms apart.
func retry(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}
