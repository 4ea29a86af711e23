package mysql_test

import (
	"context"

	"testing"

	_ "github.com/stampede-go/stampede/claim/mysql"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// TestConformance runs the suite on a server of its own, which the
// DurableFence check kills (SIGKILL) and restarts (tokens survive it).
// The isolated namespace is another table prefix; maxvalue is low enough
// for TooLarge to round-trip a value of exactly the limit.
func TestConformance(t *testing.T) {
	srv := testserver.Require(t, testserver.MySQL)
	conformance.Run(t, backendtest.Harness(srv, func(ns string) string {
		return backendtest.WithQuery(t, srv.URL(), "max_conns", "8", "prefix", "conf"+ns+"_", "maxvalue", "1048576")
	}))
}

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1, on this backend.
func TestFlight(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	backendtest.FlightOn(t, backendtest.Harness(srv, func(string) string {
		return backendtest.WithQuery(t, srv.URL(), "max_conns", "8", "prefix", "flight_")
	}))
}

// BenchmarkConformance: the suite's benchmarks on the shared server.
func BenchmarkConformance(b *testing.B) {
	srv := testserver.Shared(b, testserver.MySQL)
	conformance.Bench(b, backendtest.Harness(srv, func(string) string {
		return backendtest.WithQuery(b, srv.URL(), "prefix", "bench_")
	}))
}

// TestDefaultValueLimit: the conformance suite's TooLarge check at the
// default maxvalue (4 MiB) on a server with MariaDB's default
// max_allowed_packet (16 MiB): a value of exactly the limit goes through
// the statements (escaped into their text), one byte more is ErrTooLarge.
func TestDefaultValueLimit(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	h := backendtest.Harness(srv, func(string) string {
		return backendtest.WithQuery(t, srv.URL(), "prefix", "limit_")
	})
	if err := conformance.Test(context.Background(), h, "TooLarge"); err != nil {
		t.Error(err)
	}
}
