// Command prometheus is a runnable example: a stampede claim.Client and a
// flight.Cache on it whose metrics are exported in the Prometheus text
// format on /metrics, through the OpenTelemetry SDK and its Prometheus
// exporter.
//
//	go run . -addr 127.0.0.1:9464 &
//	curl -s 127.0.0.1:9464/metrics | grep stampede_
//
// The Client and the Cache record through the OpenTelemetry API only;
// this program brings the SDK. It hands its meter provider to both, in
// claim.Options and flight.Options; installing it as the global one
// (otel.SetMeterProvider) works as well, for every Client and Cache opened
// with no provider of their own. The Client's histogram is
// stampede_claim_operation_duration_seconds, labelled by
// stampede_operation, stampede_backend and, on errors, error_type; the
// Cache's series are stampede_flight_*, labelled by stampede_cache (its
// answers by tier, stampede_flight_answers_total{stampede_source=...},
// its loads, waits and load and wait times, and stampede_flight_degraded).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/memory" // mem://; import your backend's package instead
	"github.com/stampede-go/stampede/flight"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:9464", "address to serve /metrics on")
	backend := flag.String("backend", "mem://example", "backend URL (the example registers mem:// only)")
	every := flag.Duration("every", time.Second, "how often the example's worker claims a key")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	if err := run(ctx, ln, *backend, *every, os.Stdout); err != nil {
		log.Fatal(err)
	}
}

// newMetrics returns a meter provider whose metrics are served, in the
// Prometheus text format, by the handler.
func newMetrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

// run serves /metrics on ln (and closes it) and, until ctx ends, every
// period reads, claims and commits a key on the backend at rawURL, and
// gets a key from a flight.Cache on it.
func run(ctx context.Context, ln net.Listener, rawURL string, period time.Duration, out io.Writer) error {
	defer ln.Close()
	mp, metrics, err := newMetrics()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background())
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		<-served
	}()

	c, err := claim.OpenOptions(ctx, rawURL, &claim.Options{MeterProvider: mp})
	if err != nil {
		return err
	}
	defer c.Close()
	reports, err := flight.New(c, &flight.Options[string]{
		Name:          "reports",
		MeterProvider: mp,
		TTL:           3 * period, // reloaded now and then: answers from L1 and from the loader
		TTLJitter:     -1,
		L1TTL:         3 * period,
	})
	if err != nil {
		return err
	}
	defer reports.Close()
	fmt.Fprintf(out, "metrics: http://%s/metrics\n", ln.Addr())

	t := time.NewTicker(period)
	defer t.Stop()
	for n := 0; ; n++ {
		if err := work(ctx, c, fmt.Sprintf("report-%d", n%3)); err != nil && ctx.Err() == nil {
			fmt.Fprintf(out, "work: %v\n", err)
		}
		if _, err := reports.Get(ctx, fmt.Sprintf("summary-%d", n%2), summarise); err != nil && ctx.Err() == nil {
			fmt.Fprintf(out, "flight: %v\n", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// work is the stampede idiom on one key: the stored value, or a lease to
// compute it; the holder commits and releases.
func work(ctx context.Context, c *claim.Client, key string) error {
	if _, err := c.Get(ctx, key); err == nil || !errors.Is(err, claim.ErrNotFound) {
		return err
	}
	l, err := c.TryClaim(ctx, key, 10*time.Second)
	if err != nil {
		return err
	}
	return c.CommitRelease(ctx, l, []byte("computed at "+time.Now().Format(time.RFC3339)), 2*time.Second)
}

// summarise is the flight cache's loader: called once per key (fleet-wide)
// each time the key's value expires.
func summarise(_ context.Context, key string) (string, error) {
	return key + " computed at " + time.Now().Format(time.RFC3339Nano), nil
}
