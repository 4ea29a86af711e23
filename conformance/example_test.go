package conformance_test

import (
	"context"
	"os"
	"testing"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/memory" // the backend under test registers its scheme
	"github.com/stampede-go/stampede/conformance"
)

// A backend's test runs the whole suite against its real server. Only
// public packages are needed: an outside backend author can run it as is,
// with the server's URL from the environment.
func Example() {
	testConformance := func(t *testing.T) {
		url := os.Getenv("MYBACKEND_URL") // e.g. "mem://example"
		if url == "" {
			url = "mem://example"
		}
		conformance.Run(t, conformance.Harness{
			Open: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url) },
			// Another namespace on the same server, for the Isolation check.
			OpenIsolated: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url+"-isolated") },
		})
	}
	_ = testConformance // in a real backend: func TestConformance(t *testing.T) { ... }
}
