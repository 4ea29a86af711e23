// Command peers benchmarks stampede against the libraries users would pick
// instead, on the same servers in the same run: go-redsync/redsync and
// bsm/redislock on Redis (and a raw SET NX PX + DEL), etcd's
// clientv3/concurrency.Mutex, consul/api's Lock, against stampede's
// Client.Acquire + Release on the same substrate (acquire+release latency,
// and handoff latency: release → the next holder holds it, with the lock
// held 20 ms and 300 ms; the tables keep the label "claim.Acquire"); and
// x/sync/singleflight and otter (flight's L1 library) against flight's
// coalesced miss and L1 hit.
//
// It is in the bench module (bench/go.mod), so users of stampede never
// download the rivals. From the repository root:
//
//	scripts/bench-peers              # starts Redis, etcd and Consul test servers
//	cd bench && go run ./peers -h
//
// Servers: -redis, -etcd and -consul URLs, else STAMPEDE_TEST_<KIND>_URL,
// else a test server on a free loopback port (scripts/install-backends
// installs them).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/bench/internal/benchchart"
	_ "github.com/stampede-go/stampede/claim/consul"
	_ "github.com/stampede-go/stampede/claim/etcd"
	_ "github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/internal/testserver"
)

type config struct {
	urls      map[string]*string
	only      string
	rounds    int
	benchtime time.Duration
	out       string
}

func main() {
	testing.Init()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if err != flag.ErrHelp {
			fmt.Fprintf(os.Stderr, "peers: %v\n", err)
			os.Exit(1)
		}
	}
}

var kinds = map[string]testserver.Kind{"redis": testserver.Redis, "etcd": testserver.Etcd, "consul": testserver.Consul}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("peers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := config{urls: map[string]*string{}}
	for _, k := range []string{"redis", "etcd", "consul"} {
		cfg.urls[k] = fs.String(k, "", fmt.Sprintf("%s URL (default $%s, else a test server started here)", k, kinds[k].EnvVar()))
	}
	fs.StringVar(&cfg.only, "only", "redis,etcd,consul,cache", "sections to run: redis, etcd, consul, cache (in-process)")
	fs.IntVar(&cfg.rounds, "rounds", 30, "handoffs per library and hold time")
	fs.DurationVar(&cfg.benchtime, "benchtime", time.Second, "duration of each uncontended and in-process benchmark")
	fs.StringVar(&cfg.out, "out", "bench-out/peers", "directory for the SVG charts and results.json (\"\": none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 || cfg.rounds < 1 || cfg.benchtime <= 0 {
		fs.Usage()
		return fmt.Errorf("bad arguments")
	}
	sections := map[string]bool{}
	for _, s := range strings.Split(cfg.only, ",") {
		if s = strings.TrimSpace(s); s != "" {
			if _, ok := kinds[s]; !ok && s != "cache" {
				return fmt.Errorf("-only: unknown section %q", s)
			}
			sections[s] = true
		}
	}
	rep := &report{Machine: benchchart.Machine(), Started: time.Now(), Rounds: cfg.rounds, Benchtime: cfg.benchtime.String()}
	var contenders []contender
	for _, k := range []string{"redis", "etcd", "consul"} {
		if !sections[k] {
			continue
		}
		u, stop, err := server(ctx, k, *cfg.urls[k], stderr)
		if err != nil {
			return err
		}
		defer stop()
		rep.Servers = append(rep.Servers, k+" "+redactHost(u))
		switch k {
		case "redis":
			contenders = append(contenders, redisContenders(u)...)
		case "etcd":
			contenders = append(contenders, etcdContenders(u)...)
		case "consul":
			contenders = append(contenders, consulContenders(u)...)
		}
	}
	progress := benchchart.Progress(stderr)
	results := make([]*lockResult, len(contenders))
	for i, c := range contenders {
		results[i] = &lockResult{Substrate: c.substrate, Name: c.name, Short: c.short, Ours: c.ours, Handoff: map[string]handoffResult{}}
	}
	// The libraries take turns, in slices (uncontended) and one handoff
	// at a time, so a burst of load on the machine hits all of them
	// alike: the ratios are from the same moments.
	const slices = 10
	runs := make([]*uncontendedRun, len(contenders))
	for i, c := range contenders {
		u, err := newUncontended(ctx, c)
		if err != nil {
			results[i].Err = err.Error()
			continue
		}
		defer u.close()
		runs[i] = u
	}
	for s := range slices {
		progress(fmt.Sprintf("acquire+release, uncontended: pass %d/%d", s+1, slices))
		for i, u := range runs {
			if u == nil || results[i].Err != "" {
				continue
			}
			if err := u.slice(ctx, cfg.benchtime/slices); err != nil {
				results[i].Err = err.Error()
			}
		}
	}
	for i, u := range runs {
		if u != nil && results[i].Err == "" {
			results[i].AcqRelP50US = us(pct(u.lats, 0.5))
			results[i].AcqRelMeanUS = us(mean(u.lats))
			results[i].AcqRelN = len(u.lats)
		}
	}
	for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
		hs := make([]*handoffRun, len(contenders))
		for i, c := range contenders {
			if !c.blocking || results[i].Err != "" {
				continue
			}
			h, err := newHandoff(ctx, c)
			if err != nil {
				results[i].Err = err.Error()
				continue
			}
			hs[i] = h
		}
		for round := range cfg.rounds {
			progress(fmt.Sprintf("handoff, lock held %s: round %d/%d", hold, round+1, cfg.rounds))
			for i, h := range hs {
				if h == nil || results[i].Err != "" {
					continue
				}
				if err := h.once(ctx, hold); err != nil {
					results[i].Err = fmt.Sprintf("handoff (hold %s): %v", hold, err)
				}
			}
		}
		for i, h := range hs {
			if h == nil {
				continue
			}
			h.close()
			if results[i].Err == "" {
				results[i].Handoff[hold.String()] = handoffResult{P50MS: ms(pct(h.lats, 0.5)), P99MS: ms(pct(h.lats, 0.99)), N: len(h.lats)}
			}
		}
	}
	rep.Locks = results
	if sections["cache"] {
		if err := flag.Set("test.benchtime", cfg.benchtime.String()); err != nil {
			return err
		}
		// Three passes, the benchmarks taking turns; each keeps its best
		// (least disturbed) pass.
		benches := append(append([]cacheBench{}, l1Benches...), missBenches...)
		best := make([]*cacheResult, len(benches))
		for pass := range cachePasses {
			for i, cb := range benches {
				progress(fmt.Sprintf("in-process, pass %d/%d: %s", pass+1, cachePasses, cb.short))
				r := testing.Benchmark(cb.f)
				cr := &cacheResult{Name: cb.name, Short: cb.short, Ours: cb.ours, N: r.N}
				if r.N > 0 {
					cr.NsPerOp = float64(r.T.Nanoseconds()) / float64(r.N)
					cr.AllocsPerOp = r.AllocsPerOp()
					cr.BytesPerOp = r.AllocedBytesPerOp()
				} else {
					cr.Err = "failed"
				}
				if best[i] == nil || (cr.Err == "" && (best[i].Err != "" || cr.NsPerOp < best[i].NsPerOp)) {
					best[i] = cr
				}
			}
		}
		rep.Cache = best
	}
	progress("")
	fmt.Fprint(stdout, rep.markdown())
	if cfg.out != "" {
		if err := rep.writeFiles(cfg.out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\nCharts and results.json: %s\n", cfg.out)
	}
	for _, r := range rep.Locks {
		if r.Err != "" {
			return fmt.Errorf("%s %s: %s", r.Substrate, r.Name, r.Err)
		}
	}
	return nil
}

// server returns the URL of the server for kind: given, from the
// environment, or started here (stop stops it).
func server(ctx context.Context, kind, given string, stderr io.Writer) (u string, stop func(), err error) {
	k := kinds[kind]
	if given != "" {
		return given, func() {}, nil
	}
	if env := os.Getenv(k.EnvVar()); env != "" {
		return env, func() {}, nil
	}
	fmt.Fprintf(stderr, "peers: starting the %s test server...\n", kind)
	srv, err := testserver.Start(ctx, k, nil)
	if err != nil {
		return "", nil, fmt.Errorf("starting %s: %w (run scripts/install-backends, or give -%s URL)", kind, err, kind)
	}
	return srv.URL(), func() { srv.Stop() }, nil
}

func redactHost(u string) string {
	s := u
	if i := strings.Index(s, "@"); i >= 0 {
		if j := strings.Index(s, "://"); j >= 0 && j < i {
			s = s[:j+3] + s[i+1:]
		}
	}
	return s
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
func ms(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }

// --- report ------------------------------------------------------------------

type handoffResult struct {
	P50MS float64 `json:"p50_ms"`
	P99MS float64 `json:"p99_ms"`
	N     int     `json:"n"`
}

type lockResult struct {
	Substrate    string                   `json:"substrate"`
	Name         string                   `json:"name"`
	Short        string                   `json:"short"`
	Ours         bool                     `json:"ours"`
	AcqRelP50US  float64                  `json:"acquire_release_p50_us"`
	AcqRelMeanUS float64                  `json:"acquire_release_mean_us"`
	AcqRelN      int                      `json:"acquire_release_n"`
	Handoff      map[string]handoffResult `json:"handoff"` // by hold time
	Err          string                   `json:"error,omitempty"`
}

type cacheResult struct {
	Name        string  `json:"name"`
	Short       string  `json:"short"`
	Ours        bool    `json:"ours"`
	N           int     `json:"n"`
	NsPerOp     float64 `json:"ns_per_op"`
	AllocsPerOp int64   `json:"allocs_per_op"`
	BytesPerOp  int64   `json:"bytes_per_op"`
	Err         string  `json:"error,omitempty"`
}

type report struct {
	Machine   string         `json:"machine"`
	Started   time.Time      `json:"started"`
	Servers   []string       `json:"servers"`
	Rounds    int            `json:"rounds"`
	Benchtime string         `json:"benchtime"`
	Locks     []*lockResult  `json:"locks"`
	Cache     []*cacheResult `json:"cache"`
}

var holds = []string{"20ms", "300ms"}

// cachePasses: the in-process benchmarks run this many times, in turn,
// and keep their best pass.
const cachePasses = 3

func (r *report) find(substrate, short string) *lockResult {
	for _, l := range r.Locks {
		if l.Substrate == substrate && l.Short == short {
			return l
		}
	}
	return nil
}

func (r *report) cache(short string) *cacheResult {
	for _, c := range r.Cache {
		if c.Short == short {
			return c
		}
	}
	return nil
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 || math.IsNaN(a) || math.IsNaN(b) {
		return "–"
	}
	return benchchart.Num(a/b) + "×"
}

func (r *report) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Machine: %s. Servers on loopback: %s. Handoffs: %d per library and hold time, the libraries taking turns; uncontended: %s per library in 10 alternating slices; in-process: best of 3 alternating runs of %s each.\n\n",
		r.Machine, strings.Join(r.Servers, ", "), r.Rounds, r.Benchtime, r.Benchtime)
	if len(r.Locks) > 0 {
		b.WriteString("### Locks: acquire + release, and handoff\n\n")
		rows := [][]string{{"substrate", "library", "acquire+release p50 (µs)", "mean (µs)", "handoff p50 / p99, hold 20 ms (ms)", "handoff p50 / p99, hold 300 ms (ms)"}}
		for _, l := range r.Locks {
			row := []string{l.Substrate, l.Name}
			if l.Err != "" && l.AcqRelN == 0 {
				rows = append(rows, append(row, "FAIL: "+l.Err, "", "", ""))
				continue
			}
			row = append(row, benchchart.Num(l.AcqRelP50US), benchchart.Num(l.AcqRelMeanUS))
			for _, h := range holds {
				if x, ok := l.Handoff[h]; ok {
					row = append(row, benchchart.Num(x.P50MS)+" / "+benchchart.Num(x.P99MS))
				} else {
					row = append(row, "–")
				}
			}
			rows = append(rows, row)
		}
		b.WriteString(benchchart.Markdown(rows))
		b.WriteString("\n### Ratios, stampede / rival (below 1: stampede is faster)\n\n")
		rows = [][]string{{"substrate", "stampede", "rival", "acquire+release p50", "handoff p50, hold 20 ms", "handoff p50, hold 300 ms"}}
		for _, l := range r.Locks {
			if l.Ours {
				continue
			}
			// A lock library against Client.Acquire; the raw SET NX + DEL
			// floor against one TryClaim + Release too.
			ours := []string{"stampede", "stampede fair"}
			if strings.HasPrefix(l.Short, "raw") {
				ours = []string{"stampede try", "stampede"}
			}
			for _, short := range ours {
				o := r.find(l.Substrate, short)
				if o == nil {
					continue
				}
				row := []string{l.Substrate, o.Name, l.Name, ratio(o.AcqRelP50US, l.AcqRelP50US)}
				for _, h := range holds {
					row = append(row, ratio(o.Handoff[h].P50MS, l.Handoff[h].P50MS))
				}
				rows = append(rows, row)
			}
		}
		b.WriteString(benchchart.Markdown(rows))
	}
	if len(r.Cache) > 0 {
		b.WriteString("\n### In-process: flight against otter and singleflight\n\n")
		rows := [][]string{{"benchmark", "ns/op", "B/op", "allocs/op"}}
		for _, c := range r.Cache {
			if c.Err != "" {
				rows = append(rows, []string{c.Name, "FAIL", "", ""})
				continue
			}
			rows = append(rows, []string{c.Name, benchchart.Num(c.NsPerOp), fmt.Sprint(c.BytesPerOp), fmt.Sprint(c.AllocsPerOp)})
		}
		b.WriteString(benchchart.Markdown(rows))
		b.WriteString("\n")
		rows = [][]string{{"ratio", "ns/op"}}
		for _, pr := range [][3]string{{"flight L1 hit / otter Get", "flight L1 hit", "otter Get"},
			{"flight coalesced miss / singleflight", "flight miss", "singleflight"},
			{"flight coalesced miss / singleflight, 1 ms loader", "flight miss 1ms", "singleflight 1ms"}} {
			a, c := r.cache(pr[1]), r.cache(pr[2])
			if a != nil && c != nil {
				rows = append(rows, []string{pr[0], ratio(a.NsPerOp, c.NsPerOp)})
			}
		}
		b.WriteString(benchchart.Markdown(rows))
	}
	return b.String()
}

func (r *report) writeFiles(dir string) error {
	label := func(l *lockResult) string {
		if l.Ours {
			return l.Short + " (" + l.Substrate + ")"
		}
		return l.Short
	}
	if len(r.Locks) > 0 {
		acq := benchchart.Chart{Title: "Uncontended acquire + release (p50)", Unit: "µs", Log: true}
		ser := benchchart.Series{}
		hand := benchchart.Chart{Title: "Handoff: release → the next holder holds the lock (p50)", Unit: "ms", Log: true}
		h20, h300 := benchchart.Series{Name: "lock held 20 ms"}, benchchart.Series{Name: "lock held 300 ms"}
		for _, l := range r.Locks {
			acq.Groups = append(acq.Groups, label(l))
			v := math.NaN()
			if l.AcqRelN > 0 {
				v = l.AcqRelP50US
			}
			ser.Values = append(ser.Values, v)
			if len(l.Handoff) > 0 {
				hand.Groups = append(hand.Groups, label(l))
				h20.Values = append(h20.Values, handoffOrNaN(l, "20ms"))
				h300.Values = append(h300.Values, handoffOrNaN(l, "300ms"))
			}
		}
		acq.Series = []benchchart.Series{ser}
		hand.Series = []benchchart.Series{h20, h300}
		if err := acq.WriteFile(filepath.Join(dir, "peers-acquire-release.svg")); err != nil {
			return err
		}
		if len(hand.Groups) > 0 {
			if err := hand.WriteFile(filepath.Join(dir, "peers-handoff.svg")); err != nil {
				return err
			}
		}
	}
	if len(r.Cache) > 0 {
		for _, ch := range []struct {
			file, title, unit string
			scale             float64
			shorts            []string
		}{
			{"peers-l1-hit.svg", "L1 hit: flight Get against otter's own Get", "ns/op", 1, []string{"flight L1 hit", "otter Get"}},
			{"peers-coalesced-miss.svg", "16 callers miss one new key: flight against singleflight", "µs/op", 1e-3,
				[]string{"flight miss", "singleflight", "flight miss 1ms", "singleflight 1ms"}},
		} {
			c := benchchart.Chart{Title: ch.title, Unit: ch.unit}
			s := benchchart.Series{}
			for _, short := range ch.shorts {
				if x := r.cache(short); x != nil && x.Err == "" {
					c.Groups = append(c.Groups, short)
					s.Values = append(s.Values, x.NsPerOp*ch.scale)
				}
			}
			c.Series = []benchchart.Series{s}
			if len(c.Groups) > 0 {
				if err := c.WriteFile(filepath.Join(dir, ch.file)); err != nil {
					return err
				}
			}
		}
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644)
}

func handoffOrNaN(l *lockResult, hold string) float64 {
	if x, ok := l.Handoff[hold]; ok {
		return x.P50MS
	}
	return math.NaN()
}
