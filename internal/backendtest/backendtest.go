// Package backendtest holds what every backend's tests share: the test
// binary's main (shared servers stopped, goroutine leaks checked), opening
// a client for a test (or two of the in-memory driver on one space), URL
// query edits, a client's TLS configuration, a test's context, claims and
// subscriptions that fail the test, and the conformance harness on a test
// server.
package backendtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/testserver"
)

// Main runs the tests, stops the servers testserver.Shared started, and
// fails the run if a goroutine leaked. Call it from TestMain.
func Main(m *testing.M, opts ...goleak.Option) {
	code := m.Run()
	testserver.StopShared()
	if code == 0 {
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// Open opens a client on rawURL, closed when the test ends.
func Open(t testing.TB, rawURL string) *claim.Client {
	t.Helper()
	c, err := claim.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// MemoryPair returns two Clients of the in-memory driver on one new
// space with opts (two processes on one server), closed when the test
// ends.
func MemoryPair(t testing.TB, opts *memory.SpaceOptions) (a, b *claim.Client) {
	t.Helper()
	sp := memory.NewSpace(opts)
	open := func() *claim.Client {
		c, err := memory.New(sp, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	return open(), open()
}

// Context returns a context that ends a minute from now, or when the
// test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Claim claims key on c for ttl, or fails the test.
func Claim(t testing.TB, c *claim.Client, key string, ttl time.Duration) claim.Lease {
	t.Helper()
	l, err := c.TryClaim(Context(t), key, ttl)
	if err != nil {
		t.Fatalf("TryClaim(%q): %v", key, err)
	}
	return l
}

// Subscribe subscribes c to key until the test ends, or fails the test.
func Subscribe(t testing.TB, c *claim.Client, key string) *claim.Subscription {
	t.Helper()
	s, err := c.Subscribe(Context(t), key)
	if err != nil {
		t.Fatalf("Subscribe(%q): %v", key, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Woken reports whether s is woken within the given time (false if its
// channel was closed instead).
func Woken(s *claim.Subscription, within time.Duration) bool {
	select {
	case _, ok := <-s.C():
		return ok
	case <-time.After(within):
		return false
	}
}

// WithQuery returns rawURL with the query parameters params (name, value,
// name, value, ...) set.
func WithQuery(t testing.TB, rawURL string, params ...string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	for i := 0; i+1 < len(params); i += 2 {
		q.Set(params[i], params[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

// ClientTLS returns the TLS configuration of a client of srv, a server
// started with TLS (its CA, and a client certificate it accepts), or fails
// the test.
func ClientTLS(t testing.TB, srv *testserver.Server) *tls.Config {
	t.Helper()
	tc, err := srv.TLS().ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

// Harness is the conformance harness on srv: clients of urlFor("") (the
// namespace the checks use) and, for the Isolation check, of
// urlFor("isolated"); and, unless srv is an external server, a Restart
// that kills the server (as a crash does) and starts it again on the same
// address and data (the DurableFence check).
func Harness(srv *testserver.Server, urlFor func(namespace string) string) conformance.Harness {
	opener := func(rawURL string) func(context.Context) (*claim.Client, error) {
		return func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, rawURL) }
	}
	h := conformance.Harness{Open: opener(urlFor("")), OpenIsolated: opener(urlFor("isolated"))}
	if !srv.External() {
		h.Restart = func(ctx context.Context) error {
			if err := srv.Kill(); err != nil {
				return err
			}
			return srv.Restart(ctx)
		}
	}
	return h
}
