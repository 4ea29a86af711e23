package main

import (
	"bufio"
	"bytes"
	"context"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe to read while the command writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// demo -metrics serves the backend clients' histogram on /metrics, says
// where, and after the demo keeps serving until interrupted: one
// commit-release per load (12), and as many successful claims, plus one
// per claim that found a value just committed (released at once).
func TestDemoMetrics(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errs syncBuffer
	code := make(chan int, 1)
	go func() { code <- run(ctx, append([]string{"demo", "-metrics", "127.0.0.1:0"}, fast...), &out, &errs) }()

	serving := regexp.MustCompile(`serving metrics at (\S+) until interrupted`)
	var url string
	for deadline := time.Now().Add(60 * time.Second); url == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		select {
		case c := <-code:
			t.Fatalf("exit %d before serving: %s%s", c, out.String(), errs.String())
		default:
		}
		if m := serving.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
		}
	}
	if url == "" {
		t.Fatalf("no \"serving metrics at\" line within 60 s:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "stampede demo: metrics at "+url+"\n") || !strings.Contains(out.String(), "loader calls  12") {
		t.Errorf("output lacks where the metrics are, or the totals:\n%s", out.String())
	}
	counts, err := scrapeCounts(url)
	if err != nil {
		t.Fatal(err)
	}
	const scope = `otel_scope_name="github.com/stampede-go/stampede/claim",otel_scope_schema_url="",otel_scope_version="",stampede_backend="mem",`
	n := func(op string) int {
		v, _ := strconv.Atoi(counts[`{`+scope+`stampede_operation="`+op+`"}`])
		return v
	}
	// Every successful claim either loads (and commit-releases) or finds
	// a value committed just before it and releases at once.
	if n("commit-release") != 12 || n("claim-read") != n("commit-release")+n("release") {
		t.Errorf("commit-release %d (want 12), claim-read %d (want commit-release + release = %d); all counts: %v",
			n("commit-release"), n("claim-read"), n("commit-release")+n("release"), counts)
	}
	if counts[`{error_type="not_found",`+scope+`stampede_operation="get"}`] == "" {
		t.Errorf("no get answered not_found (the first read of every name): %v", counts)
	}
	cancel()
	if c := <-code; c != 0 {
		t.Errorf("exit %d after the interrupt: %s", c, errs.String())
	}
	if errs.String() != "" {
		t.Errorf("stderr: %s", errs.String())
	}
}

// scrapeCounts returns the duration histogram's _count series on url, by
// their labels.
func scrapeCounts(url string) (map[string]string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	const name = "stampede_claim_operation_duration_seconds_count"
	counts := map[string]string{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if labels, ok := strings.CutPrefix(sc.Text(), name); ok {
			labels, n, _ := strings.Cut(labels, " ")
			counts[labels] = n
		}
	}
	return counts, sc.Err()
}
