package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/internal/cli"

	"github.com/stampede-go/stampede/bench/internal/benchchart"
	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/countdriver"
	"github.com/stampede-go/stampede/internal/testserver"
)

func init() {
	app.Register(cli.Command{Name: "bench", Summary: "benchmark backends side by side: claim, handoff, fan-out, store, flight tiers, herd", Run: benchCmd})
}

type benchConfig struct {
	Backends    string
	BenchTime   time.Duration // ns/op benchmarks
	Rounds      int           // handoffs, fan-outs and herds per benchmark
	HerdProcs   int
	HerdCallers int
	Out         string
	Run         string // regexp on benchmark names
	JSON        bool
	Timeout     time.Duration // per benchmark
}

func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := app.Flags("bench", stderr)
	var cfg benchConfig
	fs.StringVar(&cfg.Backends, "backends", "mem", "comma-separated backend URLs or kinds (mem, redis, postgres, memcache, etcd, consul, dynamo, zookeeper, nats, mysql), or all; "+
		"a kind uses $STAMPEDE_TEST_<KIND>_URL if set, else starts a test server on loopback (scripts/install-backends installs them); "+
		"a kind may add URL parameters (memcache?poll_learn=false)")
	fs.DurationVar(&cfg.BenchTime, "benchtime", time.Second, "run time of each per-operation benchmark (claim+release, store, L1 and L2 hits)")
	fs.IntVar(&cfg.Rounds, "rounds", 30, "handoffs per hold time, fan-outs and herds per backend")
	fs.IntVar(&cfg.HerdProcs, "herd-procs", 8, "simulated processes in the herd benchmark")
	fs.IntVar(&cfg.HerdCallers, "herd-callers", 100, "callers per process in the herd benchmark")
	fs.StringVar(&cfg.Out, "out", "bench-out", "directory for the SVG charts and results.json (\"\": none)")
	fs.StringVar(&cfg.Run, "run", "", "only the benchmarks whose name matches this regexp")
	fs.BoolVar(&cfg.JSON, "json", false, "print the results as JSON instead of a markdown table")
	fs.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "bound on each benchmark")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: stampede-bench bench [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Runs the conformance benchmarks (uncontended claim+release, handoff latency with")
		fmt.Fprintln(stderr, "the lock held 20 ms and 300 ms, notify fan-out to 100 waiters, store set+get) and")
		fmt.Fprintln(stderr, "flight's (L1 hit, L2 hit, herd collapse) on every backend given, and prints a")
		fmt.Fprintln(stderr, "markdown table; writes one SVG chart per figure to -out.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if cfg.Rounds < 1 || cfg.HerdProcs < 1 || cfg.HerdCallers < 1 || cfg.BenchTime <= 0 {
		fmt.Fprintln(stderr, "stampede-bench bench: need -rounds, -herd-procs, -herd-callers >= 1 and -benchtime > 0")
		return cli.ErrUsage
	}
	var filter *regexp.Regexp
	if cfg.Run != "" {
		var err error
		if filter, err = regexp.Compile(cfg.Run); err != nil {
			fmt.Fprintf(stderr, "stampede-bench bench: -run: %v\n", err)
			return cli.ErrUsage
		}
	}
	targets, err := benchTargets(ctx, cfg.Backends, stderr)
	defer func() {
		for _, t := range targets {
			if t.stop != nil {
				t.stop()
			}
		}
	}()
	if err != nil {
		return err
	}
	res, err := runBench(ctx, cfg, targets, filter, benchchart.Progress(stderr))
	if err != nil {
		return err
	}
	if cfg.Out != "" {
		if err := res.writeFiles(cfg.Out); err != nil {
			return err
		}
	}
	if cfg.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	fmt.Fprint(stdout, res.markdown())
	if cfg.Out != "" {
		fmt.Fprintf(stdout, "\nCharts: %s\n", filepath.Join(cfg.Out, "*.svg"))
	}
	if n := res.failed(); n > 0 {
		return fmt.Errorf("bench: %d benchmark(s) failed (marked FAIL; run the backend's own `go test -bench` for the message)", n)
	}
	return nil
}

// benchTarget is one backend under benchmark.
type benchTarget struct {
	Name string `json:"name"`
	URL  string `json:"url"` // redacted
	open func(ctx context.Context) (*claim.Client, error)
	stop func()
}

var benchKinds = map[string]testserver.Kind{
	"redis": testserver.Redis, "postgres": testserver.Postgres, "memcache": testserver.Memcache, "etcd": testserver.Etcd,
	"consul": testserver.Consul, "dynamo": testserver.Dynamo, "zookeeper": testserver.ZooKeeper,
	"nats": testserver.NATS, "mysql": testserver.MySQL,
}

// benchTargets resolves -backends: URLs are used as given; a kind uses
// its STAMPEDE_TEST_<KIND>_URL, else a test server started here (and
// stopped by the caller through stop).
func benchTargets(ctx context.Context, spec string, stderr io.Writer) ([]*benchTarget, error) {
	var names []string
	for _, s := range strings.Split(spec, ",") {
		s = strings.TrimSpace(s)
		switch s {
		case "":
		case "all":
			names = append(names, "mem")
			for _, k := range testserver.Kinds {
				names = append(names, string(k))
			}
		default:
			names = append(names, s)
		}
	}
	var ts []*benchTarget
	for _, n := range names {
		// A kind may carry URL parameters for its test server
		// ("memcache?poll_learn=false").
		base, query, _ := strings.Cut(n, "?")
		if strings.Contains(n, "://") {
			base, query = n, ""
		}
		switch kind, isKind := benchKinds[base]; {
		case n == "mem":
			space := memory.NewSpace(nil)
			ts = append(ts, &benchTarget{Name: "mem", URL: "in-process", open: func(context.Context) (*claim.Client, error) { return memory.New(space, nil) }})
		case isKind:
			url, stop, err := kindServer(ctx, kind, stderr)
			if err != nil {
				return ts, fmt.Errorf("bench: %w", err)
			}
			if query != "" {
				url += map[bool]string{false: "?", true: "&"}[strings.Contains(url, "?")] + query
			}
			t := &benchTarget{Name: n, stop: stop}
			t.URL = claim.RedactURL(url)
			t.open = func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url) }
			ts = append(ts, t)
		case strings.Contains(n, "://"):
			url := n
			name, _, _ := strings.Cut(n, "://")
			ts = append(ts, &benchTarget{Name: name, URL: claim.RedactURL(url), open: func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, url) }})
		default:
			return ts, fmt.Errorf("bench: -backends: %q is neither a URL nor one of all, mem, %s", n, strings.Join(slices.Sorted(mapKeys(benchKinds)), ", "))
		}
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("bench: -backends names no backend")
	}
	// Open each once: a bad URL fails now, and a backend that creates its
	// table on first use does so before the benchmarks open clients.
	for _, t := range ts {
		b, err := t.open(ctx)
		if err != nil {
			return ts, fmt.Errorf("bench: %s: %w", t.URL, err)
		}
		_, err = b.Get(ctx, "bench-probe")
		b.Close()
		if err != nil && !errors.Is(err, claim.ErrNotFound) {
			return ts, fmt.Errorf("bench: %s: %w", t.URL, err)
		}
	}
	return ts, nil
}

// kindServer returns the URL of a server of kind: $STAMPEDE_TEST_<KIND>_URL
// if set, else a test server started on loopback (stop stops it; nil for
// an external server).
//
// For DynamoDB the URL asks for the table to be created when missing
// (create_table=true), as the test servers start empty.
func kindServer(ctx context.Context, kind testserver.Kind, stderr io.Writer) (url string, stop func(), err error) {
	if url := os.Getenv(kind.EnvVar()); url != "" {
		return createTable(kind, url), nil, nil
	}
	fmt.Fprintf(stderr, "stampede-bench: starting the %s test server...\n", kind)
	srv, err := testserver.Start(ctx, kind, nil)
	if err != nil {
		return "", nil, fmt.Errorf("starting %s: %w (scripts/install-backends installs the servers; or set %s)", kind, err, kind.EnvVar())
	}
	return createTable(kind, srv.URL()), func() { srv.Stop() }, nil
}

// createTable adds create_table=true to a DynamoDB URL u that does not
// say (test servers start empty); other kinds' URLs are returned as they
// are.
func createTable(kind testserver.Kind, u string) string {
	if kind != testserver.Dynamo || strings.Contains(u, "create_table=") {
		return u
	}
	if strings.Contains(u, "?") {
		return u + "&create_table=true"
	}
	return u + "?create_table=true"
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// benchResult is one benchmark on one backend.
type benchResult struct {
	Backend     string             `json:"backend"`
	Bench       string             `json:"bench"`
	N           int                `json:"n"`
	NsPerOp     float64            `json:"ns_per_op"`
	AllocsPerOp int64              `json:"allocs_per_op"`
	Metrics     map[string]float64 `json:"metrics,omitempty"`
	Failed      bool               `json:"failed,omitempty"`
}

type benchReport struct {
	Machine  string         `json:"machine"`
	Started  time.Time      `json:"started"`
	Config   map[string]any `json:"config"`
	Backends []*benchTarget `json:"backends"`
	Results  []benchResult  `json:"results"`
}

// A bench is one benchmark run per backend: count-based ones (each
// iteration is a handoff or a herd) run -rounds times, the others for
// -benchtime.
type bench struct {
	name    string
	counted bool
	f       func(b *testing.B)
}

var initTesting sync.Once

func runBench(ctx context.Context, cfg benchConfig, targets []*benchTarget, filter *regexp.Regexp, progress func(string)) (*benchReport, error) {
	initTesting.Do(testing.Init)
	rep := &benchReport{
		Machine: benchchart.Machine(), Started: time.Now(), Backends: targets,
		Config: map[string]any{"benchtime": cfg.BenchTime.String(), "rounds": cfg.Rounds, "herd_procs": cfg.HerdProcs, "herd_callers": cfg.HerdCallers},
	}
	type job struct {
		t *benchTarget
		b bench
	}
	var jobs []job
	for _, t := range targets {
		for _, b := range benchesFor(t, cfg) {
			if filter == nil || filter.MatchString(b.name) {
				jobs = append(jobs, job{t, b})
			}
		}
	}
	for i, j := range jobs {
		progress(fmt.Sprintf("[%d/%d] %s: %s", i+1, len(jobs), j.t.Name, j.b.name))
		bt := cfg.BenchTime.String()
		if j.b.counted {
			bt = fmt.Sprintf("%dx", cfg.Rounds)
		}
		if err := flag.Set("test.benchtime", bt); err != nil {
			return nil, err
		}
		var tb *testing.B
		done := make(chan testing.BenchmarkResult, 1)
		go func() {
			done <- testing.Benchmark(func(b *testing.B) {
				tb = b
				j.b.f(b)
			})
		}()
		var r testing.BenchmarkResult
		select {
		case r = <-done:
		case <-time.After(cfg.Timeout):
			progress("")
			return nil, fmt.Errorf("bench: %s %s did not finish within %s (-timeout)", j.t.Name, j.b.name, cfg.Timeout)
		case <-ctx.Done():
			progress("")
			return nil, ctx.Err()
		}
		if tb != nil && tb.Skipped() {
			continue // not applicable to this backend (e.g. no fair queue)
		}
		res := benchResult{Backend: j.t.Name, Bench: j.b.name, N: r.N, AllocsPerOp: r.AllocsPerOp(), Metrics: r.Extra}
		if r.N > 0 {
			res.NsPerOp = float64(r.T.Nanoseconds()) / float64(r.N)
		}
		res.Failed = r.N == 0 || (tb != nil && tb.Failed())
		rep.Results = append(rep.Results, res)
	}
	progress("")
	return rep, nil
}

// benchesFor lists the benchmarks of one backend: the conformance suite's,
// then flight's.
func benchesFor(t *benchTarget, cfg benchConfig) []bench {
	var bs []bench
	for _, b := range conformance.Benchmarks(conformance.Harness{Open: t.open}) {
		counted := strings.HasPrefix(b.Name, "Handoff") || strings.HasPrefix(b.Name, "HandOver") || strings.HasPrefix(b.Name, "FanOut")
		bs = append(bs, bench{b.Name, counted, b.F})
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	ns := "bench-" + hex.EncodeToString(rnd[:])
	open := func(b *testing.B) *claim.Client {
		c, err := t.open(context.Background())
		if err != nil {
			b.Fatalf("open client: %v", err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	cache := func(b *testing.B, be *claim.Client, name string, l1 int) *flight.Cache[string] {
		c, err := flight.New(be, &flight.Options[string]{Name: ns + "-" + name, L1Size: l1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	ctx := context.Background()
	bs = append(bs,
		bench{"FlightL1Hit", false, func(b *testing.B) {
			c := cache(b, open(b), "l1", 0)
			if _, err := c.Get(ctx, "apple inc", benchLoad); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				c.Get(ctx, "apple inc", benchLoad)
			}
		}},
		bench{"FlightL2Hit", false, func(b *testing.B) {
			c := cache(b, open(b), "l2", -1)
			if _, err := c.Get(ctx, "apple inc", benchLoad); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if _, err := c.Get(ctx, "apple inc", benchLoad); err != nil {
					b.Fatal(err)
				}
			}
		}},
		bench{"FlightHerd", true, func(b *testing.B) { benchHerd(b, cfg, t.open, cache) }},
	)
	return bs
}

func benchLoad(_ context.Context, key string) (string, error) { return "value of " + key, nil }

// benchHerd: per op, a new key asked at once by HerdCallers callers in
// each of HerdProcs simulated processes (each its own client and cache);
// reports the time until every caller has its answer, loader calls per
// key and backend round trips per process per key.
func benchHerd(b *testing.B, cfg benchConfig, open func(context.Context) (*claim.Client, error),
	cache func(*testing.B, *claim.Client, string, int) *flight.Cache[string]) {
	ctx := context.Background()
	type proc struct {
		c     *flight.Cache[string]
		calls *countdriver.Counter
	}
	var loads int64
	var mu sync.Mutex
	load := func(ctx context.Context, key string) (string, error) {
		mu.Lock()
		loads++
		mu.Unlock()
		return benchLoad(ctx, key)
	}
	procs := make([]proc, cfg.HerdProcs)
	for i := range procs {
		raw, err := open(ctx)
		if err != nil {
			b.Fatalf("open client: %v", err)
		}
		// Counted at the driver; closing the counted client closes it.
		be, calls := count(raw)
		b.Cleanup(func() { be.Close() })
		procs[i] = proc{cache(b, be, "herd", 0), calls}
	}
	var lats []time.Duration
	var rts int64
	var errs int
	var rnd [4]byte
	_, _ = rand.Read(rnd[:]) // new keys in every run of this function
	run := hex.EncodeToString(rnd[:])
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		key := fmt.Sprintf("herd %s %d", run, i)
		start := make(chan struct{})
		var wg sync.WaitGroup
		var before int64
		for _, p := range procs {
			before += p.calls.Total()
			for range cfg.HerdCallers {
				wg.Go(func() {
					<-start
					if _, err := p.c.Get(ctx, key, load); err != nil {
						mu.Lock()
						errs++
						mu.Unlock()
					}
				})
			}
		}
		b.StartTimer()
		t0 := time.Now()
		close(start)
		wg.Wait()
		lats = append(lats, time.Since(t0))
		for _, p := range procs {
			rts += p.calls.Total()
		}
		rts -= before
	}
	b.StopTimer()
	if errs > 0 {
		b.Fatalf("%d callers got an error", errs)
	}
	var failOpen, takeovers uint64
	for _, p := range procs {
		st := p.c.Stats()
		failOpen += st.FailOpen
		takeovers += st.Takeovers
	}
	slices.Sort(lats)
	b.ReportMetric(float64(lats[len(lats)/2].Microseconds())/1000, "herd-p50-ms")
	b.ReportMetric(float64(loads)/float64(b.N), "loads/key")
	b.ReportMetric(float64(rts)/float64(b.N*cfg.HerdProcs), "rt/proc/key")
	// Extra loads come from these: a backend call that failed or timed
	// out (flight fails open: loads without the claim), or a lease lost.
	b.ReportMetric(float64(failOpen)/float64(b.N), "failopen/key")
	b.ReportMetric(float64(takeovers)/float64(b.N), "takeovers/key")
}

// --- output -----------------------------------------------------------------

func (r *benchReport) failed() int {
	n := 0
	for _, x := range r.Results {
		if x.Failed {
			n++
		}
	}
	return n
}

func (r *benchReport) get(backend, bench string) (benchResult, bool) {
	for _, x := range r.Results {
		if x.Backend == backend && x.Bench == bench {
			return x, true
		}
	}
	return benchResult{}, false
}

// figure is one row of the table: a value per backend.
type figure struct {
	label string
	bench string
	value func(benchResult) float64
	fmt   func(benchResult, float64) string
}

func metric(name string, scale float64) func(benchResult) float64 {
	return func(x benchResult) float64 {
		v, ok := x.Metrics[name]
		if !ok {
			return math.NaN()
		}
		return v * scale
	}
}

// orDash formats a figure that only some backends have (a metric the
// others do not report: NaN) as a dash for those.
func orDash(_ benchResult, v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return benchchart.Num(v)
}

func nsPerOp(scale float64) func(benchResult) float64 {
	return func(x benchResult) float64 { return x.NsPerOp * scale }
}

var figures = []figure{
	{"claim+release, uncontended (µs)", "ClaimRelease", nsPerOp(1e-3), nil},
	{"handoff p50, hold 20 ms (ms)", "Handoff/hold=20ms", metric("handoff-p50-µs", 1e-3), nil},
	{"handoff p99, hold 20 ms (ms)", "Handoff/hold=20ms", metric("handoff-p99-µs", 1e-3), nil},
	{"handoff p50, hold 300 ms (ms)", "Handoff/hold=300ms", metric("handoff-p50-µs", 1e-3), nil},
	{"handoff p99, hold 300 ms (ms)", "Handoff/hold=300ms", metric("handoff-p99-µs", 1e-3), nil},
	{"fair hand-over p50, hold 20 ms (ms)", "HandOver/hold=20ms", metric("handoff-p50-µs", 1e-3), nil},
	{"fair hand-over p99, hold 20 ms (ms)", "HandOver/hold=20ms", metric("handoff-p99-µs", 1e-3), nil},
	{"fair hand-over p50, hold 300 ms (ms)", "HandOver/hold=300ms", metric("handoff-p50-µs", 1e-3), nil},
	{"fair hand-over p99, hold 300 ms (ms)", "HandOver/hold=300ms", metric("handoff-p99-µs", 1e-3), nil},
	{"handoff: the waiter's poll reads per second of waiting, hold 20 ms", "Handoff/hold=20ms", metric("poll-reads/s", 1), orDash},
	{"handoff: the waiter's poll reads per second of waiting, hold 300 ms", "Handoff/hold=300ms", metric("poll-reads/s", 1), orDash},
	{"fair hand-over: the waiter's poll reads per second of waiting, hold 20 ms", "HandOver/hold=20ms", metric("poll-reads/s", 1), orDash},
	{"fair hand-over: the waiter's poll reads per second of waiting, hold 300 ms", "HandOver/hold=300ms", metric("poll-reads/s", 1), orDash},
	{"notify fan-out to 100 waiters, p50 (ms)", "FanOut100", metric("fanout-p50-µs", 1e-3), nil},
	{"store set+get (µs)", "StoreSetGet", nsPerOp(1e-3), nil},
	{"flight L1 hit (ns; allocs)", "FlightL1Hit", nsPerOp(1), func(x benchResult, v float64) string {
		return fmt.Sprintf("%s; %d", benchchart.Num(v), x.AllocsPerOp)
	}},
	{"flight L2 hit (µs)", "FlightL2Hit", nsPerOp(1e-3), nil},
	{"herd collapse, p50 (ms)", "FlightHerd", metric("herd-p50-ms", 1), nil},
	{"herd: loader calls per key", "FlightHerd", metric("loads/key", 1), nil},
	{"herd: round trips per process per key", "FlightHerd", metric("rt/proc/key", 1), nil},
	{"herd: fail-open loads per key (backend calls that failed)", "FlightHerd", metric("failopen/key", 1), nil},
}

func (r *benchReport) markdown() string {
	header := []string{""}
	for _, t := range r.Backends {
		header = append(header, t.Name)
	}
	rows := [][]string{header}
	for _, f := range figures {
		row := []string{f.label}
		any := false
		for _, t := range r.Backends {
			x, ok := r.get(t.Name, f.bench)
			switch {
			case !ok:
				row = append(row, "")
			case x.Failed:
				row = append(row, "FAIL")
				any = true
			default:
				any = true
				v := f.value(x)
				if f.fmt != nil {
					row = append(row, f.fmt(x, v))
				} else {
					row = append(row, benchchart.Num(v))
				}
			}
		}
		if any {
			rows = append(rows, row)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s. Herd: %v simulated processes x %v callers, instant loader. Handoffs and herds: %v rounds each; other figures: -benchtime %v.\n\n",
		r.Machine, r.Config["herd_procs"], r.Config["herd_callers"], r.Config["rounds"], r.Config["benchtime"])
	b.WriteString(benchchart.Markdown(rows))
	return b.String()
}

type chartSpec struct {
	file, title, unit string
	series            []seriesSpec
	linear            bool // else a log scale: backends differ by orders of magnitude
}

type seriesSpec struct {
	name, bench string
	value       func(benchResult) float64
}

var chartSpecs = []chartSpec{
	{"claim-release.svg", "Uncontended TryClaim + Release", "µs per claim+release", []seriesSpec{{"", "ClaimRelease", nsPerOp(1e-3)}}, false},
	{"handoff.svg", "Handoff: Release → the waiter's Acquire returns (p50)", "ms", []seriesSpec{
		{"lock held 20 ms", "Handoff/hold=20ms", metric("handoff-p50-µs", 1e-3)},
		{"lock held 300 ms", "Handoff/hold=300ms", metric("handoff-p50-µs", 1e-3)},
		{"fair hand-over, held 20 ms", "HandOver/hold=20ms", metric("handoff-p50-µs", 1e-3)},
		{"fair hand-over, held 300 ms", "HandOver/hold=300ms", metric("handoff-p50-µs", 1e-3)}}, false},
	{"fanout.svg", "One Release wakes 100 waiters in 2 clients (p50, last woken)", "ms", []seriesSpec{{"", "FanOut100", metric("fanout-p50-µs", 1e-3)}}, false},
	{"store.svg", "Store Set + Get, 100 bytes", "µs", []seriesSpec{{"", "StoreSetGet", nsPerOp(1e-3)}}, false},
	{"flight-l1-hit.svg", "flight L1 hit", "ns per Get", []seriesSpec{{"", "FlightL1Hit", nsPerOp(1)}}, true},
	{"flight-l2-hit.svg", "flight L2 hit (L1 off)", "µs per Get", []seriesSpec{{"", "FlightL2Hit", nsPerOp(1e-3)}}, false},
	{"herd.svg", "Herd collapse: every caller answered (p50)", "ms", []seriesSpec{{"", "FlightHerd", metric("herd-p50-ms", 1)}}, false},
}

func (r *benchReport) writeFiles(dir string) error {
	for _, cs := range chartSpecs {
		c := benchchart.Chart{Title: cs.title, Unit: cs.unit, Log: !cs.linear}
		for _, t := range r.Backends {
			c.Groups = append(c.Groups, t.Name)
		}
		have := false
		for _, s := range cs.series {
			ser := benchchart.Series{Name: s.name}
			for _, t := range r.Backends {
				v := math.NaN()
				if x, ok := r.get(t.Name, s.bench); ok && !x.Failed {
					v = s.value(x)
					have = true
				}
				ser.Values = append(ser.Values, v)
			}
			c.Series = append(c.Series, ser)
		}
		if !have {
			continue
		}
		if err := c.WriteFile(filepath.Join(dir, cs.file)); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644)
}
