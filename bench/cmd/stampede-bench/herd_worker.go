package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// The herd's worker: one process of the herd (an OS process started by
// `stampede-bench herd`, or a simulated one inside it). It opens its own backend
// client and its own cache (its own L1), and for each round starts its
// callers, says it is ready, waits for the start barrier, releases all of
// them at once and reports what they got. The loaders (one key, or a
// batch) report every key to the parent as they start, so a holder that
// is killed mid-load is still counted.

// herdWorkerEnv carries a worker's configuration (JSON) to a child
// process: `stampede-bench herd` with it set runs one worker, speaking the
// protocol below on stdin and stdout.
//
// Protocol: the child writes one JSON herdEvent per line on stdout
// ("ready" once its callers of a round wait at the barrier, "load" when its
// loader is called, "round" with its report when every caller of the round
// has its answer, "error" when it cannot go on); the parent writes one line
// "go" on stdin per round to release the callers. EOF on stdin ends the
// worker.
const herdWorkerEnv = "STAMPEDE_HERD_WORKER"

// herdConfig is the herd's configuration; workers get it too.
type herdConfig struct {
	Backend    string        `json:"backend"`
	Procs      int           `json:"procs"`
	Callers    int           `json:"callers"`
	Keys       int           `json:"keys"`
	Zipf       float64       `json:"zipf,omitempty"`
	Rounds     int           `json:"rounds"`
	Load       time.Duration `json:"load_ns"`
	Lease      time.Duration `json:"lease_ns,omitempty"`
	KillHolder bool          `json:"kill_holder,omitempty"`
	Sim        bool          `json:"simulated"`
	// Batch > 0: each caller asks Batch distinct keys at once, with one
	// GetMany (a BatchFunc loader), or with Loop a loop of Batch Gets.
	Batch   int           `json:"batch,omitempty"`
	Loop    bool          `json:"loop,omitempty"`
	Timeout time.Duration `json:"-"`
	JSON    bool          `json:"-"`
	// Name is the cache's name: unique per run, so the backend starts
	// empty for it.
	Name string `json:"name"`
	Seed uint64 `json:"seed"`
}

// workerConfig is what one worker gets.
type workerConfig struct {
	herdConfig
	Proc int `json:"proc"`
}

// herdEvent is one line from a worker to the parent.
type herdEvent struct {
	Ev     string     `json:"ev"` // ready, load, round, error; "exit" is made by the parent
	Proc   int        `json:"proc"`
	Round  int        `json:"round"`
	Key    string     `json:"key,omitempty"`
	Report *procRound `json:"report,omitempty"`
	Err    string     `json:"err,omitempty"`

	at time.Time // when the parent received it
}

// procRound is one worker's report of one round.
type procRound struct {
	// Requests counts the callers' asks: Gets, or batches in batch mode
	// (a loop of Gets is one batch); KeyRequests the keys they asked,
	// in batch mode. BySource counts keys answered, by tier.
	Requests    int            `json:"requests"`
	KeyRequests int            `json:"key_requests,omitempty"`
	BySource    map[string]int `json:"by_source"`
	// Errors counts the asks answered with an error (a batch with one
	// failed key or more, or a wrong value); KeyErrors the keys.
	Errors    int    `json:"errors"`
	KeyErrors int    `json:"key_errors,omitempty"`
	ErrorEg   string `json:"error_example,omitempty"`
	// Keys is the number of distinct keys this worker's callers asked for.
	Keys int `json:"keys"`
	// Calls are this worker's backend round trips during the round, by
	// method (counted at the driver under its *claim.Client).
	Calls countdriver.Counts `json:"calls"`
	// Latencies of every caller answered without error, from the barrier
	// to its answer (to its whole batch's), in µs.
	LatUS     []int64 `json:"lat_us"`
	ElapsedUS int64   `json:"elapsed_us"`
	// flight.Stats deltas (Loads counts loader calls: batches for
	// GetMany's BatchFunc).
	Loads       uint64 `json:"loads"`
	Commits     uint64 `json:"commits"`
	LostCommits uint64 `json:"lost_commits"`
	Waits       uint64 `json:"waits"`
	Takeovers   uint64 `json:"takeovers"`
	FailOpen    uint64 `json:"fail_open"`
}

// herdValue is what the herd's loader returns.
type herdValue struct {
	Key  string `json:"key"`
	Proc int    `json:"proc"`
}

// herdKey names key k of a round: each round is a new herd on new keys.
func herdKey(round, k int) string { return fmt.Sprintf("r%d-k%d", round, k) }

// herdAssign returns the key index each caller of proc asks for in round:
// caller j asks key (proc+j) mod Keys, so with Callers >= Keys every
// process asks for every key; with Zipf > 1 keys are drawn from a Zipf
// distribution of exponent Zipf (key 0 the most popular), seeded so the
// parent can recompute the assignment.
func herdAssign(cfg herdConfig, proc, round int) []int {
	ks := make([]int, cfg.Callers)
	if cfg.Zipf > 1 && cfg.Keys > 1 {
		r := rand.New(rand.NewPCG(cfg.Seed, uint64(proc)<<32|uint64(round)))
		z := rand.NewZipf(r, cfg.Zipf, 1, uint64(cfg.Keys-1))
		for j := range ks {
			ks[j] = int(z.Uint64())
		}
		return ks
	}
	for j := range ks {
		ks[j] = (proc + j) % cfg.Keys
	}
	return ks
}

// herdAsks returns the key indexes each caller of proc asks in round:
// one key per caller (herdAssign), or Batch keys per caller in batch mode
// (herdBatch).
func herdAsks(cfg herdConfig, proc, round int) [][]int {
	asks := make([][]int, cfg.Callers)
	if cfg.Batch > 0 {
		for j := range asks {
			asks[j] = herdBatch(cfg, proc, j, round)
		}
		return asks
	}
	ks := herdAssign(cfg, proc, round)
	for j := range asks {
		asks[j] = ks[j : j+1 : j+1]
	}
	return asks
}

// herdBatch returns the batch caller asks in round: Batch distinct key
// indexes drawn uniformly from [0, Keys) (Floyd's sampling, then
// shuffled), seeded by the run's seed, the process, the caller and the
// round, so the parent can recompute it. Batches overlap by chance only:
// with Callers×Batch well above Keys, every process asks nearly every key
// and every key is in many batches of every process, as records of a page
// reference the same few companies.
func herdBatch(cfg herdConfig, proc, caller, round int) []int {
	r := rand.New(rand.NewPCG(cfg.Seed, uint64(round)<<48|uint64(proc)<<32|uint64(caller)))
	picked := make(map[int]bool, cfg.Batch)
	ks := make([]int, 0, cfg.Batch)
	for j := cfg.Keys - cfg.Batch; j < cfg.Keys; j++ {
		k := r.IntN(j + 1)
		if picked[k] {
			k = j
		}
		picked[k] = true
		ks = append(ks, k)
	}
	r.Shuffle(len(ks), func(a, b int) { ks[a], ks[b] = ks[b], ks[a] })
	return ks
}

func (cfg herdConfig) cacheOptions(log *slog.Logger) *flight.Options[herdValue] {
	return &flight.Options[herdValue]{
		Name:        cfg.Name,
		Normalize:   flight.Identity,
		TTL:         time.Hour,
		TTLJitter:   -1,
		LeaseTTL:    cfg.Lease,
		LoadTimeout: max(10*cfg.Load, 10*time.Second),
		WaitTimeout: max(30*time.Second, 4*cfg.Lease+2*cfg.Load),
		FailClosed:  true, // a backend failure is an error to report, not a silent extra load
		Logger:      log,
	}
}

// runWorker runs one worker on client b (which it closes), whose round
// trips calls counts (see count): emit sends an event to the parent,
// barrier waits for the parent's release of a round (an error ends the
// worker).
func runWorker(ctx context.Context, cfg workerConfig, b *claim.Client, calls *countdriver.Counter, emit func(herdEvent), barrier func(round int) error, log *slog.Logger) error {
	defer b.Close()
	pause := func(ctx context.Context) error {
		t := time.NewTimer(cfg.Load) // a slow upsert
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	load := func(ctx context.Context, key string) (herdValue, error) {
		emit(herdEvent{Ev: "load", Proc: cfg.Proc, Round: roundOf(key), Key: key})
		if err := pause(ctx); err != nil {
			return herdValue{}, err
		}
		return herdValue{Key: key, Proc: cfg.Proc}, nil
	}
	// loadMany is load for many keys in one call (one query, one -load
	// latency), counted key by key like load.
	loadMany := func(ctx context.Context, keys []string) (map[string]herdValue, error) {
		for _, key := range keys {
			emit(herdEvent{Ev: "load", Proc: cfg.Proc, Round: roundOf(key), Key: key})
		}
		if err := pause(ctx); err != nil {
			return nil, err
		}
		m := make(map[string]herdValue, len(keys))
		for _, key := range keys {
			m[key] = herdValue{Key: key, Proc: cfg.Proc}
		}
		return m, nil
	}
	c, err := flight.New(b, cfg.cacheOptions(log))
	if err != nil {
		return err
	}
	defer c.Close()
	// answer is one caller's: the tier of each key answered, its latency,
	// its errors (a key's error, or a value of another key).
	type answer struct {
		srcs []flight.Source
		lat  time.Duration
		errs int
		err  error
	}
	check := func(a *answer, key string, r flight.Result[herdValue], err error) {
		if err == nil && r.Value.Key != key {
			err = fmt.Errorf("herd: key %q answered with the value of %q", key, r.Value.Key)
		}
		if err != nil {
			a.errs++
			if a.err == nil {
				a.err = err
			}
			return
		}
		a.srcs = append(a.srcs, r.Source)
	}
	ask := func(keys []string) answer {
		a := answer{srcs: make([]flight.Source, 0, len(keys))}
		switch {
		case cfg.Batch == 0 || cfg.Loop:
			// One Get per key, one after another (a loop of Gets).
			for _, key := range keys {
				r, err := c.Fetch(ctx, key, load)
				check(&a, key, r, err)
			}
		default:
			rs, err := c.GetMany(ctx, keys, loadMany)
			if err != nil {
				a.errs, a.err = len(keys), err
				break
			}
			for i, r := range rs {
				check(&a, keys[i], r, r.Err)
			}
		}
		return a
	}
	for round := 1; round <= cfg.Rounds; round++ {
		asks := herdAsks(cfg.herdConfig, cfg.Proc, round)
		answers := make([]answer, len(asks))
		start := make(chan struct{})
		var t0 time.Time
		var wg sync.WaitGroup
		for j, ks := range asks {
			keys := make([]string, len(ks))
			for i, k := range ks {
				keys[i] = herdKey(round, k)
			}
			wg.Go(func() {
				<-start
				a := ask(keys)
				a.lat = time.Since(t0)
				answers[j] = a
			})
		}
		emit(herdEvent{Ev: "ready", Proc: cfg.Proc, Round: round})
		if err := barrier(round); err != nil {
			close(start) // t0 is zero: latencies are meaningless, and nobody reads them
			wg.Wait()
			return err
		}
		before, stats := calls.Snapshot(), c.Stats()
		t0 = time.Now()
		close(start)
		wg.Wait()
		elapsed := time.Since(t0)
		after := c.Stats()
		rep := &procRound{
			Requests:    len(answers),
			BySource:    map[string]int{},
			Calls:       calls.Snapshot().Sub(before),
			LatUS:       make([]int64, 0, len(answers)),
			ElapsedUS:   elapsed.Microseconds(),
			Loads:       after.Loads - stats.Loads,
			Commits:     after.Commits - stats.Commits,
			LostCommits: after.LostCommits - stats.LostCommits,
			Waits:       after.Waits - stats.Waits,
			Takeovers:   after.Takeovers - stats.Takeovers,
			FailOpen:    after.FailOpen - stats.FailOpen,
		}
		keys := map[int]bool{}
		for j, a := range answers {
			for _, k := range asks[j] {
				keys[k] = true
			}
			if cfg.Batch > 0 {
				rep.KeyRequests += len(asks[j])
				rep.KeyErrors += a.errs
			}
			for _, src := range a.srcs {
				rep.BySource[src.String()]++
			}
			if a.errs > 0 {
				rep.Errors++
				if rep.ErrorEg == "" {
					rep.ErrorEg = a.err.Error()
				}
				continue
			}
			rep.LatUS = append(rep.LatUS, a.lat.Microseconds())
		}
		rep.Keys = len(keys)
		emit(herdEvent{Ev: "round", Proc: cfg.Proc, Round: round, Report: rep})
	}
	return nil
}

// roundOf reads the round back from a key made by herdKey.
func roundOf(key string) int {
	var r, k int
	fmt.Sscanf(key, "r%d-k%d", &r, &k)
	return r
}

// herdChild runs one worker as a child process: configuration from the
// environment value, barrier on stdin, events on stdout.
func herdChild(ctx context.Context, conf string, stdin io.Reader, stdout, stderr io.Writer) error {
	var cfg workerConfig
	if err := json.Unmarshal([]byte(conf), &cfg); err != nil {
		return fmt.Errorf("herd worker: bad %s: %w", herdWorkerEnv, err)
	}
	var mu sync.Mutex
	emit := func(ev herdEvent) {
		line, _ := json.Marshal(ev)
		mu.Lock()
		defer mu.Unlock()
		stdout.Write(append(line, '\n'))
	}
	fail := func(err error) error {
		emit(herdEvent{Ev: "error", Proc: cfg.Proc, Err: err.Error()})
		return err
	}
	// stdin: one "go" per round; EOF (the parent is done, or died) ends
	// the worker.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gos := make(chan struct{}, cfg.Rounds+1)
	go func() {
		defer cancel()
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "go" {
				gos <- struct{}{}
			}
		}
	}()
	barrier := func(int) error {
		select {
		case <-gos:
			return nil
		case <-ctx.Done():
			return errors.New("herd worker: released by no one (stdin closed)")
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("proc", cfg.Proc)
	raw, err := claim.Open(ctx, cfg.Backend)
	if err != nil {
		return fail(err)
	}
	b, calls := count(raw)
	if err := runWorker(ctx, cfg, b, calls, emit, barrier, log); err != nil {
		return fail(err)
	}
	// Stay until the parent closes stdin, so it decides when we exit.
	<-ctx.Done()
	return nil
}
