package main

import (
	"context"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// metricsServer serves a meter provider's metrics (the demo's backend
// clients and flight caches record into it) in the Prometheus text
// format on /metrics.
type metricsServer struct {
	mp     *sdkmetric.MeterProvider
	ln     net.Listener
	srv    *http.Server
	served chan error
}

// startMetrics listens on addr and serves /metrics there.
func startMetrics(addr string) (*metricsServer, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	m := &metricsServer{
		mp:     sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp)),
		ln:     ln,
		srv:    &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		served: make(chan error, 1),
	}
	go func() { m.served <- m.srv.Serve(ln) }()
	return m, nil
}

// URL is where the metrics are served.
func (m *metricsServer) URL() string { return "http://" + m.ln.Addr().String() + "/metrics" }

// Close stops serving (within 5 s) and shuts the meter provider down.
func (m *metricsServer) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	<-m.served
	_ = m.mp.Shutdown(ctx)
}
