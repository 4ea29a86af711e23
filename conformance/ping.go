package conformance

import (
	"context"
	"errors"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

func init() { register("Ping", checkPing) }

// checkPing: a healthy server passes Ping, through the Client and the
// driver's own Pinger (which every network driver should have); the
// driver's Ping does not start on a done context; a closed Client's Ping
// is ErrClosed. Contract answers are never classed as outages: a held
// key's claim is ErrHeld, not ErrUnavailable or ErrConfig.
func checkPing(t *T) {
	ctx := t.Context()
	c := t.Client()
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
	if p, ok := c.Driver().(driver.Pinger); ok {
		if err := p.Ping(ctx); err != nil {
			t.Errorf("driver Ping: %v", err)
		}
		done, cancel := context.WithCancel(ctx)
		cancel()
		if err := p.Ping(done); err == nil {
			t.Errorf("driver Ping on a cancelled context succeeded")
		}
	}
	k := t.Key("held")
	l, err := c.TryClaim(ctx, k, t.ShortTTL())
	if err != nil {
		t.Fatalf("claim: %v", err)
	}
	_, err = t.Client().TryClaim(ctx, k, t.ShortTTL())
	if !errors.Is(err, claim.ErrHeld) || errors.Is(err, claim.ErrUnavailable) || errors.Is(err, claim.ErrConfig) {
		t.Errorf("claim of a held key: %v, want ErrHeld only", err)
	}
	if err := c.Release(ctx, l); err != nil {
		t.Errorf("release: %v", err)
	}
	d, err := t.h.Open(ctx)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	d.Close()
	if err := d.Ping(ctx); !errors.Is(err, claim.ErrClosed) {
		t.Errorf("Ping after Close: %v, want ErrClosed", err)
	}
}
