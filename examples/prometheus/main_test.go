package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The example serves the Client's histogram on /metrics: a series per
// operation and outcome, with the backend and the documented buckets;
// and the flight Cache's series, labelled by the cache's name.
func TestScrape(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, ln, "mem://scrape-test", 5*time.Millisecond, io.Discard) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}()

	// Each of these series appears once the worker has gone round once.
	want := []string{
		`stampede_claim_operation_duration_seconds_count{error_type="not_found",otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",stampede_operation="get"}`,
		`stampede_claim_operation_duration_seconds_count{otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",stampede_operation="claim"}`,
		`stampede_claim_operation_duration_seconds_count{otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",stampede_operation="commit-release"}`,
		`stampede_claim_operation_duration_seconds_bucket{otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",stampede_operation="claim",le="5e-05"}`,
		`stampede_claim_operation_duration_seconds_bucket{otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",stampede_operation="claim",le="10"}`,
	}
	const flightScope = `otel_scope_name="github.com/stampede-go/stampede/flight",otel_scope_schema_url="",otel_scope_version="",stampede_cache="reports"`
	for _, source := range []string{"l1", "l2", "loaded", "remote", "stale", "fallback", "error"} {
		want = append(want, `stampede_flight_answers_total{`+flightScope+`,stampede_source="`+source+`"}`)
	}
	for _, name := range []string{"coalesced", "misses", "loads", "load_errors", "waits", "takeovers", "commits",
		"error_commits", "error_hits", "lost_commits", "refreshes", "fail_open", "decode_errors", "invalidations"} {
		want = append(want, "stampede_flight_"+name+"_total{"+flightScope+"}")
	}
	want = append(want,
		`stampede_flight_degraded{error_type="config",`+flightScope+`}`,
		`stampede_flight_degraded{error_type="unavailable",`+flightScope+`}`,
		`stampede_flight_load_duration_seconds_count{`+flightScope+`}`,
		`stampede_flight_load_duration_seconds_bucket{`+flightScope+`,le="10"}`,
	)
	url := "http://" + ln.Addr().String() + "/metrics"
	var missing []string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		series, err := scrape(url)
		if err != nil {
			t.Fatal(err)
		}
		missing = missing[:0]
		for _, w := range want {
			if !series[w] {
				missing = append(missing, w)
			}
		}
		if len(missing) == 0 {
			return
		}
	}
	t.Errorf("/metrics lacks, after 10 s:\n%s", strings.Join(missing, "\n"))
}

// scrape returns the series names (with labels) on url.
func scrape(url string) (map[string]bool, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	series := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if l := sc.Text(); !strings.HasPrefix(l, "#") {
			name, _, _ := strings.Cut(l, " ")
			series[name] = true
		}
	}
	return series, sc.Err()
}
