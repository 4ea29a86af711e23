// Package backendtest holds what every backend's tests share: the test
// binary's main (shared servers stopped, goroutine leaks checked), opening
// a client for a test, URL query edits, and the conformance harness on a
// test server.
package backendtest

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
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
