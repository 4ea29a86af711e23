package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/internal/cli"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/countdriver"
)

func init() {
	app.Register(cli.Command{Name: "demo", Summary: "replay the cache-stampede scenarios, showing which tier answers each request", Run: demoCmd})
}

type demoConfig struct {
	Backend  string        // "" = embedded memory Space
	Procs    int           // simulated processes in the herds
	Callers  int           // concurrent callers per process in the herds
	MinDelay time.Duration // the loader's latency range
	MaxDelay time.Duration
	JSON     bool
	Metrics  string         // -metrics ADDR: serve /metrics there
	Client   *claim.Options // every simulated process's Client (-metrics: its meter provider, the caches' too)
	// Linger, if set, is called with the report before the simulated
	// processes are closed (-metrics: print the report and serve until
	// interrupted, so that the caches' counters are still read).
	Linger func(*demoReport) error
}

func demoCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := app.Flags("demo", stderr)
	var cfg demoConfig
	fs.StringVar(&cfg.Backend, "backend", "", "backend URL (redis://..., etcd://..., mem://NAME); default: the embedded in-process backend, no server")
	fs.IntVar(&cfg.Procs, "procs", 8, "simulated processes in the herd scenarios")
	fs.IntVar(&cfg.Callers, "callers", 1000, "concurrent callers per process in the herd scenarios")
	fs.DurationVar(&cfg.MinDelay, "min", 100*time.Millisecond, "shortest loader call (a slow database upsert)")
	fs.DurationVar(&cfg.MaxDelay, "max", 300*time.Millisecond, "longest loader call")
	fs.BoolVar(&cfg.JSON, "json", false, "print one JSON report instead of text")
	fs.StringVar(&cfg.Metrics, "metrics", "", "serve the backend clients' and the caches' metrics in the Prometheus format on `ADDR`/metrics (e.g. 127.0.0.1:9464) while the demo runs, and after it until interrupted")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: stampede demo [flags]")
		fmt.Fprintln(stderr)
		fmt.Fprintln(stderr, "Replays the scenarios stampede is built for, with an entity-resolution loader")
		fmt.Fprintln(stderr, "that behaves like a slow, idempotent database upsert (one ID per normalised")
		fmt.Fprintln(stderr, "name), and prints which tier answered each request, its latency, and the")
		fmt.Fprintln(stderr, "totals: loader calls against requests.")
		fmt.Fprintln(stderr)
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if cfg.Procs < 1 || cfg.Callers < 1 || cfg.MinDelay < 0 || cfg.MaxDelay < cfg.MinDelay {
		return fmt.Errorf("demo: need -procs >= 1, -callers >= 1, 0 <= -min <= -max")
	}
	var text, notes io.Writer = stdout, stdout
	if cfg.JSON {
		text, notes = io.Discard, stderr
	}
	var ms *metricsServer
	if cfg.Metrics != "" {
		var err error
		if ms, err = startMetrics(cfg.Metrics); err != nil {
			return fmt.Errorf("demo: -metrics: %w", err)
		}
		defer ms.Close()
		cfg.Client = &claim.Options{MeterProvider: ms.mp}
		fmt.Fprintf(notes, "stampede demo: metrics at %s\n", ms.URL())
	}
	report := func(rep *demoReport) error {
		if !cfg.JSON {
			return nil
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	if ms != nil {
		cfg.Linger = func(rep *demoReport) error {
			if err := report(rep); err != nil {
				return err
			}
			fmt.Fprintf(notes, "stampede demo: done; serving metrics at %s until interrupted (Ctrl-C)\n", ms.URL())
			<-ctx.Done()
			return nil
		}
	}
	rep, err := runDemo(ctx, cfg, text, stderr)
	if err != nil || ms != nil {
		return err
	}
	return report(rep)
}

// Entity is what the demo's loader resolves a company name to.
type Entity struct {
	ID   int    `json:"id"`
	Name string `json:"name"`
}

// entityDB plays the system of record: an idempotent upsert (one ID per
// normalised name) that takes MinDelay..MaxDelay.
type entityDB struct {
	min, max time.Duration
	calls    atomic.Int64
	mu       sync.Mutex
	ids      map[string]int
}

func (db *entityDB) upsert(ctx context.Context, name string) (Entity, error) {
	db.calls.Add(1)
	d := db.min
	if db.max > db.min {
		d += time.Duration(mrand.Int64N(int64(db.max - db.min)))
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return Entity{}, ctx.Err()
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	id, ok := db.ids[name]
	if !ok {
		id = len(db.ids) + 1
		db.ids[name] = id
	}
	return Entity{ID: id, Name: name}, nil
}

// The report, printed as text as it goes, or as JSON at the end.
type demoReport struct {
	Backend   string     `json:"backend"`
	Cache     string     `json:"cache"`
	Scenarios []scenario `json:"scenarios"`
	Totals    totals     `json:"totals"`
}

type scenario struct {
	Title       string          `json:"title"`
	Steps       []step          `json:"steps,omitempty"`
	Herd        *herdReport     `json:"herd,omitempty"`
	Election    *electionReport `json:"election,omitempty"`
	LoaderCalls int64           `json:"loader_calls"`
}

// electionReport is the election scenario's outcome.
type electionReport struct {
	Processes int    `json:"processes"`
	LeaseMS   int64  `json:"lease_ms"`
	First     string `json:"first_leader"`
	FirstTerm uint64 `json:"first_term"`
	Next      string `json:"next_leader"`
	NextTerm  uint64 `json:"next_term"`
	// FailoverMS: from the leader's process being killed to the next
	// leader's announcement.
	FailoverMS float64 `json:"failover_ms"`
	// Observed: the terms each surviving process's Observe delivered.
	Observed map[string][]uint64 `json:"observed"`
}

type step struct {
	Process   string  `json:"process"`
	Input     string  `json:"input"`
	Key       string  `json:"key"`
	ID        int     `json:"id"`
	Source    string  `json:"source"`
	LatencyMS float64 `json:"latency_ms"`
	// BackendCalls counts this request's backend round trips (subscribe
	// included; lease renewals, if any, too).
	BackendCalls int64  `json:"backend_calls"`
	Error        string `json:"error,omitempty"`
}

type herdReport struct {
	Processes int            `json:"processes"`
	Callers   int            `json:"callers_per_process"`
	Inputs    []string       `json:"inputs"`
	Names     int            `json:"distinct_names"`
	Requests  int            `json:"requests"`
	BySource  map[string]int `json:"by_source"`
	Errors    int            `json:"errors"`
	// BackendCalls counts the herd's backend round trips, all processes
	// together: they grow with processes and names, not with callers.
	BackendCalls int64   `json:"backend_calls"`
	P50MS        float64 `json:"p50_ms"`
	P99MS        float64 `json:"p99_ms"`
	MaxMS        float64 `json:"max_ms"`
}

type totals struct {
	Requests      int   `json:"requests"`
	LoaderCalls   int64 `json:"loader_calls"`
	DistinctNames int   `json:"distinct_names"`
	Reloads       int   `json:"reloads_after_l2_loss"`
	IDsIssued     int   `json:"ids_issued"`
	Errors        int   `json:"errors"`
}

// process is one simulated process: its own backend client and cache.
type process struct {
	name  string
	b     *claim.Client
	calls *countdriver.Counter // backend round trips
	c     *flight.Cache[Entity]
}

type demo struct {
	cfg   demoConfig
	out   io.Writer
	space *memory.Space
	db    *entityDB
	name  string // the cache's name: unique per run, so a real backend starts empty
	log   *slog.Logger
	procs []*process
	names map[string]bool
	rep   demoReport
}

func runDemo(ctx context.Context, cfg demoConfig, out, stderr io.Writer) (*demoReport, error) {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	d := &demo{
		cfg:   cfg,
		out:   out,
		db:    &entityDB{min: cfg.MinDelay, max: cfg.MaxDelay, ids: map[string]int{}},
		name:  "demo-" + hex.EncodeToString(rnd[:]),
		names: map[string]bool{},
		log:   slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	defer d.closeAll()
	backend := "embedded in-process memory backend (no server)"
	if cfg.Backend == "" {
		d.space = memory.NewSpace(nil)
	} else {
		backend = claim.RedactURL(cfg.Backend)
	}
	d.rep = demoReport{Backend: backend, Cache: d.name}
	fmt.Fprintf(out, "stampede demo: backend %s\n", backend)
	fmt.Fprintf(out, "loader: entity-resolution upsert taking %s-%s, one ID per normalised name\n", cfg.MinDelay, cfg.MaxDelay)
	fmt.Fprintln(out, "every simulated process has its own backend client and its own L1")

	const apple = "Apple Inc."
	a, err := d.open(ctx, "A")
	if err != nil {
		return nil, err
	}
	if err := d.steps(ctx, "One process asks twice: the second answer comes from its L1, no backend call",
		a, apple, a, "apple inc"); err != nil {
		return nil, err
	}
	b, err := d.open(ctx, "B")
	if err != nil {
		return nil, err
	}
	if err := d.steps(ctx, "A then B: B finds A's value in L2 and keeps it in its own L1",
		b, "APPLE INC.", b, "Apple Inc"); err != nil {
		return nil, err
	}
	if err := d.restart(ctx, a); err != nil {
		return nil, err
	}
	if err := d.steps(ctx, "Restart: A comes back with an empty L1; L2 answers",
		a, "apple  inc"); err != nil {
		return nil, err
	}
	// L2 loses the value (eviction, flush): values live under
	// Name + ":" + normalised key (flight.Options.Name).
	if err := b.b.Delete(ctx, d.name+":"+flight.NormalizeKey(apple)); err != nil {
		return nil, fmt.Errorf("demo: dropping the L2 value: %w", err)
	}
	c, err := d.open(ctx, "C")
	if err != nil {
		return nil, err
	}
	if err := d.steps(ctx, "L2 gone: a new process C misses L2; the loader answers again, with the same ID (idempotent upsert)",
		c, apple); err != nil {
		return nil, err
	}
	d.rep.Totals.Reloads = 1

	if err := d.herd(ctx, "Thundering herd: every process misses one name at once, in three spellings",
		[]string{"Globex Corporation", "GLOBEX CORPORATION.", "globex  corporation"}); err != nil {
		return nil, err
	}
	var many []string
	for _, n := range []string{"Initech", "Umbrella Corp", "Stark Industries", "Wayne Enterprises", "Acme Corp",
		"Soylent Corp", "Hooli", "Vandelay Industries", "Cyberdyne Systems"} {
		many = append(many, n, strings.ToUpper(n)+".", strings.ReplaceAll(strings.ToLower(n), " ", "  "))
	}
	if err := d.herd(ctx, "Herd on many names: one load per name", many); err != nil {
		return nil, err
	}

	if err := d.election(ctx); err != nil {
		return nil, err
	}

	t := &d.rep.Totals
	t.LoaderCalls = d.db.calls.Load()
	d.db.mu.Lock()
	t.IDsIssued = len(d.db.ids)
	d.db.mu.Unlock()
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Totals")
	fmt.Fprintf(out, "  requests      %d\n", t.Requests)
	fmt.Fprintf(out, "  loader calls  %d  (%d distinct names + %d reload after the L2 loss)\n", t.LoaderCalls, t.DistinctNames, t.Reloads)
	fmt.Fprintf(out, "  IDs issued    %d  (one per name: the upsert is idempotent)\n", t.IDsIssued)
	if t.Errors > 0 {
		fmt.Fprintf(out, "  errors        %d\n", t.Errors)
	}
	if cfg.Linger != nil {
		if err := cfg.Linger(&d.rep); err != nil {
			return nil, err
		}
	}
	return &d.rep, nil
}

func (d *demo) openBackend(ctx context.Context) (*claim.Client, error) {
	if d.space != nil {
		return memory.New(d.space, nil)
	}
	return claim.Open(ctx, d.cfg.Backend)
}

func (d *demo) open(ctx context.Context, name string) (*process, error) {
	p := &process{name: name}
	if err := d.start(ctx, p); err != nil {
		return nil, err
	}
	d.procs = append(d.procs, p)
	return p, nil
}

// start gives p a new backend client and a new cache (an empty L1).
func (d *demo) start(ctx context.Context, p *process) error {
	raw, err := d.openBackend(ctx)
	if err != nil {
		return err
	}
	// The round trips are counted under the client, at its driver.
	counted, calls := countdriver.Wrap(raw.Driver(), nil, countdriver.Options{})
	b := claim.NewClient(counted, d.cfg.Client)
	opt := &flight.Options[Entity]{
		Name:        d.name,
		TTL:         time.Hour,
		LoadTimeout: 10*d.cfg.MaxDelay + 10*time.Second,
		Logger:      d.log,
	}
	if d.cfg.Client != nil {
		// The caches of every simulated process record into one provider,
		// under one name: their counters add up while they are open.
		opt.MeterProvider = d.cfg.Client.MeterProvider
	}
	c, err := flight.New(b, opt)
	if err != nil {
		b.Close()
		return err
	}
	p.b, p.calls, p.c = b, calls, c
	return nil
}

// restart closes p (cache and backend client) and starts it anew.
func (d *demo) restart(ctx context.Context, p *process) error {
	p.c.Close()
	p.b.Close()
	return d.start(ctx, p)
}

func (d *demo) closeAll() {
	for _, p := range d.procs {
		p.c.Close()
		p.b.Close()
	}
}

// steps runs requests one after the other: pairs of process and input.
func (d *demo) steps(ctx context.Context, title string, reqs ...any) error {
	sc := scenario{Title: title}
	before := d.db.calls.Load()
	fmt.Fprintf(d.out, "\n%d. %s\n", len(d.rep.Scenarios)+1, title)
	for i := 0; i+1 < len(reqs); i += 2 {
		p, input := reqs[i].(*process), reqs[i+1].(string)
		calls := p.calls.Total()
		start := time.Now()
		r, err := p.c.Fetch(ctx, input, d.db.upsert)
		lat := time.Since(start)
		calls = p.calls.Total() - calls
		st := step{Process: p.name, Input: input, Key: r.Key, ID: r.Value.ID, Source: r.Source.String(), LatencyMS: cli.Millis(lat), BackendCalls: calls}
		if err != nil {
			st.Error = err.Error()
			d.rep.Totals.Errors++
		}
		d.countName(r.Key)
		d.rep.Totals.Requests++
		sc.Steps = append(sc.Steps, st)
		fmt.Fprintf(d.out, "   %s  %-22q -> %-12q id=%-3d %-7s %10s  %s", p.name, input, r.Key, r.Value.ID, r.Source, cli.FormatDuration(lat), plural(calls, "backend call"))
		if err != nil {
			fmt.Fprintf(d.out, "  error: %v", err)
		}
		fmt.Fprintln(d.out)
	}
	sc.LoaderCalls = d.db.calls.Load() - before
	fmt.Fprintf(d.out, "   loader calls: %d\n", sc.LoaderCalls)
	d.rep.Scenarios = append(d.rep.Scenarios, sc)
	return nil
}

// countName counts distinct normalised names asked for.
func (d *demo) countName(key string) {
	if key != "" && !d.names[key] {
		d.names[key] = true
		d.rep.Totals.DistinctNames++
	}
}

// herd: cfg.Procs fresh processes × cfg.Callers concurrent callers each,
// all released at once, caller j of process i asking inputs[(i+j)%n].
func (d *demo) herd(ctx context.Context, title string, inputs []string) error {
	n := len(d.rep.Scenarios) + 1
	fmt.Fprintf(d.out, "\n%d. %s\n", n, title)
	var procs []*process
	for i := range d.cfg.Procs {
		p, err := d.open(ctx, fmt.Sprintf("H%d", i+1))
		if err != nil {
			return err
		}
		procs = append(procs, p)
	}
	type answer struct {
		src flight.Source
		key string
		lat time.Duration
		err error
	}
	answers := make([]answer, d.cfg.Procs*d.cfg.Callers)
	before := d.db.calls.Load()
	var callsBefore int64
	for _, p := range procs {
		callsBefore += p.calls.Total()
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, p := range procs {
		for j := range d.cfg.Callers {
			idx := i*d.cfg.Callers + j
			input := inputs[(i+j)%len(inputs)]
			wg.Go(func() {
				<-start
				t := time.Now()
				r, err := p.c.Fetch(ctx, input, d.db.upsert)
				answers[idx] = answer{r.Source, r.Key, time.Since(t), err}
			})
		}
	}
	close(start)
	wg.Wait()
	h := &herdReport{Processes: d.cfg.Procs, Callers: d.cfg.Callers, Inputs: inputs, Requests: len(answers), BySource: map[string]int{}}
	lats := make([]time.Duration, 0, len(answers))
	names := map[string]bool{}
	for _, a := range answers {
		if a.err != nil {
			h.Errors++
			continue
		}
		h.BySource[a.src.String()]++
		names[a.key] = true
		d.countName(a.key)
		lats = append(lats, a.lat)
	}
	h.Names = len(names)
	for _, p := range procs {
		h.BackendCalls += p.calls.Total()
		// The herd's processes are done: they exit, and give back their
		// connections (a Consul agent allows a client address 200).
		p.c.Close()
		p.b.Close()
	}
	h.BackendCalls -= callsBefore
	slices.Sort(lats)
	if len(lats) > 0 {
		h.P50MS = cli.Millis(lats[len(lats)/2])
		h.P99MS = cli.Millis(lats[len(lats)*99/100])
		h.MaxMS = cli.Millis(lats[len(lats)-1])
	}
	sc := scenario{Title: title, Herd: h, LoaderCalls: d.db.calls.Load() - before}
	d.rep.Scenarios = append(d.rep.Scenarios, sc)
	d.rep.Totals.Requests += h.Requests
	d.rep.Totals.Errors += h.Errors

	fmt.Fprintf(d.out, "   %d processes x %d concurrent callers = %d requests for %d name(s) in %d spellings\n",
		h.Processes, h.Callers, h.Requests, h.Names, len(inputs))
	var parts []string
	for _, s := range []flight.Source{flight.SourceL1, flight.SourceL2, flight.SourceLoaded, flight.SourceRemote, flight.SourceStale, flight.SourceFallback} {
		if k := h.BySource[s.String()]; k > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, k))
		}
	}
	if h.Errors > 0 {
		parts = append(parts, fmt.Sprintf("errors %d", h.Errors))
	}
	fmt.Fprintf(d.out, "   answered by:  %s\n", strings.Join(parts, ", "))
	fmt.Fprintln(d.out, "                 (loaded: callers in the process that held the claim, sharing its one load;")
	fmt.Fprintln(d.out, "                  remote: callers in processes that waited for it and read L2)")
	if len(lats) > 0 {
		fmt.Fprintf(d.out, "   latency:      p50 %s, p99 %s, max %s\n",
			cli.FormatDuration(lats[len(lats)/2]), cli.FormatDuration(lats[len(lats)*99/100]), cli.FormatDuration(lats[len(lats)-1]))
	}
	fmt.Fprintf(d.out, "   backend:      %s (%.1f per process per name)\n", plural(h.BackendCalls, "round trip"),
		float64(h.BackendCalls)/float64(h.Processes*max(h.Names, 1)))
	fmt.Fprintf(d.out, "   loader calls: %d for %d requests\n", sc.LoaderCalls, h.Requests)
	return nil
}

func plural(n int64, what string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, what)
	}
	return fmt.Sprintf("%d %ss", n, what)
}
