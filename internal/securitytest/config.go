package securitytest

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/flight"
)

// ConfigRefused checks a misconfigured client (a wrong password, a missing
// table: rawURL names such a server): claim.Open fails with an error
// wrapping ErrConfig, never showing secret ("" for none); opened with
// lazy=true, Get fails with ErrConfig too, and a flight Cache on that
// Client returns the error to its callers without calling the loader
// (it never fails open on a configuration error).
func ConfigRefused(t *testing.T, rawURL, secret string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	c, err := claim.Open(ctx, rawURL)
	if err == nil {
		c.Close()
		t.Fatal("Open succeeded")
	}
	if !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Open: %v, want ErrConfig", err)
	}
	if secret != "" && strings.Contains(err.Error(), secret) {
		t.Errorf("Open's error shows the secret: %v", err)
	}

	sep := "?"
	if strings.Contains(rawURL, "?") {
		sep = "&"
	}
	c, err = claim.Open(ctx, rawURL+sep+"lazy=true")
	if err != nil {
		t.Fatalf("Open lazy=true: %v", err)
	}
	defer c.Close()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Get: %v, want ErrConfig", err)
	}
	cache, err := flight.New(c, &flight.Options[string]{Name: Unique(t), OpTimeout: Timeout})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	var loads atomic.Int64
	load := func(context.Context, string) (string, error) {
		loads.Add(1)
		return "v", nil
	}
	for i := range 3 {
		_, err := cache.Get(ctx, "key", load)
		if !errors.Is(err, claim.ErrConfig) {
			t.Errorf("flight Get %d: %v, want ErrConfig", i, err)
		}
	}
	if n := loads.Load(); n != 0 {
		t.Errorf("the loader ran %d times on a misconfigured backend, want 0 (fail open on ErrConfig)", n)
	}
}

// SubscribeRefused opens rawURL lazily and checks that Subscribe fails
// with ErrConfig: the subscription's own connection reports the cause
// (a wrong password, a server of another kind), not a timeout.
func SubscribeRefused(t *testing.T, rawURL string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	sep := "?"
	if strings.Contains(rawURL, "?") {
		sep = "&"
	}
	c, err := claim.Open(ctx, rawURL+sep+"lazy=true")
	if err != nil {
		t.Fatalf("Open lazy=true: %v", err)
	}
	defer c.Close()
	s, err := c.Subscribe(ctx, "k")
	if err == nil {
		s.Close()
		t.Fatal("Subscribe succeeded")
	}
	if !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Subscribe: %v, want ErrConfig", err)
	}
}
