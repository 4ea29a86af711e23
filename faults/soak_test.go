package faults

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/coord"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/testserver"
)

// The soak (make soak; a short run in make test): on every backend,
// several clients, each through a toxiproxy proxy of its own, run a mixed
// workload for STAMPEDE_SOAK (default soakDefault) while random faults
// hit their links (connection resets, latency, blackholes, the proxy
// refusing connections) and, on the backends whose test server keeps its
// state on disk, the server itself (kill -9 and restart). Every backend
// runs at once, on a server of its own where it is killed.
//
// The workload, per client (one *claim.Client, as one process):
//
//   - flight herds: soakHerd goroutines Fetch a small set of hot keys
//     from one flight.Cache (FailClosed: a backend failure is an error,
//     never a load without the claim), so that every Invalidate or Set
//     sends every goroutine of every client to the backend at once;
//   - GetMany of a few keys at a time, with a batch loader;
//   - one mutator for the whole backend: Invalidate or Set of a random key
//     from a random client, one at a time;
//   - an Election: every client campaigns, leads for a while (sometimes
//     longer than the lease, so renewals run through the faults), may
//     Proclaim, and resigns; every client Observes;
//   - a Semaphore of soakSemN slots, soakSemWorkers holders per client.
//
// What is checked (each breach is a violation; the run must end with 0):
//
// Flight. Each key has a generation g, the number of Invalidate and Set
// calls started on it (bumped just before the call, as a system of record
// changes before its cache is invalidated); each load records the g it
// started in, and its value carries (key, g, load id). A load is settled
// when its value is in L2 after the revocation of the Invalidate that
// started g: known when a caller whose call started after that
// Invalidate returned gets it from L2 or from a wait for its holder
// (Source L2 or Remote, not shared with an earlier caller); for g = 0,
// any such answer. The exact invariant is: per (key, g), at most one load
// is ever settled, and no load of (key, g) starts after one was settled
// (beyond a slow goroutine's delay, see lateLoad). So a second load of one
// generation is a violation when it starts after the first one settled,
// or when both settle. What explains a second load, counted and not
// failed ("extra loads"): the first one's value never settled, because
// its claim, taken between the generation's bump and the Invalidate's
// revocation, was revoked (its commit refused, or its value, committed
// just before, deleted by the revocation), or its lease ran out or its
// commit failed in a fault. Invalidate explains every other reload: it
// starts a new generation. A generation whose Invalidate failed is not
// judged (its revocation may land at any time). A generation started by
// Set has the Set's value: a load in it had claimed the key just before
// the Set revoked the claim (the revoked load is not stopped, as flight
// documents; its commit is refused) or committed just before the Set
// replaced its value; those loads are counted apart. Loads are counted by
// the test's loader; stampede's own counters are only reported beside.
//
// Stale values. Values are ordered by rank: 2g for a load of generation
// g, 2g+1 for the value of the Set that started g. Once an Invalidate of
// generation g' (rank 2g') or a Set of g' (rank 2g'+1) returned, (a) a
// caller of the same process that started after it gets no value of a
// lower rank unless Result.Superseded is set; (b) a caller of any process
// that started after it and whose answer came from L2, from a wait for
// another holder, or from its own load (not shared with an earlier
// caller) gets no such value either; (c) a caller of another process
// served from its L1 (or sharing a flight started earlier) may still get
// the old value until the invalidation message reaches it, at most L1TTL
// after its flight ended (flight's documented bound when a message is
// lost): an older value served later than soakCrossBound after the return
// is a violation; within it, it is counted and its lag reported.
//
// Election: one leader per term (the term→ID map built from Campaign's
// returns and every observer's announcements never has two IDs for one
// term); a new leader's term is above every earlier leader's; no two
// leaderships at once (a leadership counts from Campaign's return until
// it is lost, Lost closed, or its Resign starts); each observer sees
// announcements with increasing Rev and non-decreasing terms.
//
// Semaphore: never more than N holders at once, by a counter in the test
// (a permit counts from Acquire's return until its Release starts or its
// Lost is closed), never two holders of one slot, and each slot's tokens
// increase.
//
// No hang: every call has a timeout and must return within it plus
// soakGrace (plus the client's I/O timeout where calls do not follow
// their context); every worker must stop within a minute of the end.
// Goroutine leaks are checked by TestMain (goleak) after every test.
//
// STAMPEDE_SOAK_REPORT=FILE writes the report (counts, faults, latency
// percentiles) as Markdown to FILE; a ZooKeeper pass run by another test
// binary (TestReconnectSoakZooKeeper, without -race) merges its section
// into the same file.

const (
	soakEnv       = "STAMPEDE_SOAK"
	soakReportEnv = "STAMPEDE_SOAK_REPORT"
	soakDefault   = 10 * time.Second

	soakClients    = 3
	soakHerd       = 6 // Fetch goroutines per client
	soakKeys       = 8
	soakSemN       = 2
	soakSemWorkers = 2 // semaphore holders per client
	// soakCoordTTL is the election's and the semaphore's lease: its
	// keepers give a lease up TTL/10 (1 s) before its deadline, so a
	// holder's loss is seen before anyone else can take over even when
	// the keeper's timer fires late on a loaded machine. Partitions
	// longer than it (soakLongFault) make leases run out.
	soakCoordTTL = 10 * time.Second
	// soakFlightLease is the flight cache's LeaseTTL: short, so that
	// takeovers of a partitioned holder happen within WaitTimeout.
	soakFlightLease = 3 * time.Second
	// soakLongFault is how long the long partitions last (one fault in
	// eight): longer than soakCoordTTL.
	soakLongFault = 11 * time.Second
	soakL1TTL     = 2 * time.Second
	soakWait      = 8 * time.Second // flight WaitTimeout
	soakLoadTO    = 5 * time.Second // flight LoadTimeout
	soakOpTO      = 2 * time.Second // flight OpTimeout
	soakCallTO    = 10 * time.Second
	soakWaitTO    = 20 * time.Second // Campaign, Acquire
	soakShortTO   = 5 * time.Second
	soakGrace     = 10 * time.Second
	// soakCrossBound: how long after an Invalidate returned another
	// process may still serve the old value from its L1 when the
	// invalidation message does not reach it (a flight that read L2 just
	// before the revocation ends at most WaitTimeout + LoadTimeout + two
	// backend calls later, and its L1 entry lives L1TTL), plus grace.
	soakCrossBound = soakL1TTL + soakWait + soakLoadTO + 2*soakOpTO + soakGrace
)

// soakDuration is how long each backend's workload runs.
func soakDuration(t *testing.T) time.Duration {
	s := os.Getenv(soakEnv)
	if s == "" {
		return soakDefault
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration such as 30m", soakEnv, s)
	}
	return d
}

// TestSoak runs the soak on every backend but ZooKeeper, whose client
// library races on reconnection under -race (TestReconnectSoakZooKeeper,
// built without -race, runs it).
func TestSoak(t *testing.T) {
	t.Parallel()
	var bs []backend
	for _, b := range backends {
		if b.kind != testserver.ZooKeeper {
			bs = append(bs, b)
		}
	}
	soakAll(t, bs, "go test -race -count=1 -run '^TestSoak$' ./faults")
}

// soakAll runs the soak on bs at once and writes the report.
func soakAll(t *testing.T, bs []backend, cmd string) {
	d := soakDuration(t)
	cmd = soakEnv + "=" + d.String() + " " + cmd
	var mu sync.Mutex
	var results []*soakResult
	// Every backend at once, whatever -parallel says (the subtests are
	// not parallel ones: t.Run from one goroutine each).
	var wg sync.WaitGroup
	for _, b := range bs {
		wg.Go(func() {
			t.Run(b.name, func(t *testing.T) {
				r := soakOne(t, b, d)
				mu.Lock()
				results = append(results, r)
				mu.Unlock()
			})
		})
	}
	wg.Wait()
	for _, r := range results {
		t.Logf("soak %s: %s", r.name, r.summary())
		for name, c := range r.ops {
			for class, e := range c.sample {
				t.Logf("soak %s: %s: %d × %s, e.g. %s", r.name, name, c.errs[class], class, e)
			}
		}
	}
	if path := os.Getenv(soakReportEnv); path != "" {
		if err := writeSoakReport(path, results, d, cmd); err != nil {
			t.Errorf("soak report: %v", err)
		}
	}
}

// soakVal is the flight cache's value: which load (or Set) made it.
type soakVal struct {
	Key string `json:"k"`
	Gen uint64 `json:"g"`
	ID  string `json:"id"` // "c<client>-<n>" for a load, "s-<n>" for a Set
}

// rank orders values: a Set's value comes after the loads of the
// generation it started.
func (v soakVal) rank() uint64 {
	if v.loaderOf() == -1 {
		return 2*v.Gen + 1
	}
	return 2 * v.Gen
}

// loaderOf is the client that loaded v, or -1 for a Set.
func (v soakVal) loaderOf() int {
	if !strings.HasPrefix(v.ID, "c") {
		return -1
	}
	n, err := strconv.Atoi(v.ID[1:strings.IndexByte(v.ID, '-')])
	if err != nil {
		return -2
	}
	return n
}

// kg is a (key, generation).
type kg struct {
	key string
	gen uint64
}

// mutation is an Invalidate or Set that returned without error.
type mutation struct {
	at     time.Time
	rank   uint64 // the lowest rank a value may have once it returned
	client int
}

// soakRun is one backend's soak in progress.
type soakRun struct {
	t    *testing.T
	b    backend
	res  *soakResult
	keys []string
	gen  []atomic.Uint64 // per key index
	seq  atomic.Uint64

	mu        sync.Mutex
	loads     map[kg][]time.Time // load start times
	published map[kg]pubInfo     // loads settled
	setGens   map[kg]bool        // generations started by a Set
	began     map[kg]time.Time   // when the mutation that started a generation returned (if it did)
	mutations map[string][]mutation

	emu      sync.Mutex
	terms    map[uint64]string
	maxTerm  uint64
	leaders  map[*coord.Leadership]string
	smu      sync.Mutex
	holders  map[*coord.Permit]bool
	slotTok  []uint64
	nviolate atomic.Int64
}

type pubInfo struct {
	id string
	at time.Time // when it was first seen settled
}

// violation records a breach of an invariant.
func (s *soakRun) violation(kind, format string, args ...any) {
	s.res.mu.Lock()
	s.res.violations[kind]++
	s.res.mu.Unlock()
	if s.nviolate.Add(1) <= 20 {
		s.t.Errorf("%s: VIOLATION %s: %s", s.b.name, kind, fmt.Sprintf(format, args...))
	}
}

// timed runs op with a context of timeout d, records its latency under
// name, and reports a hang if it overran d by more than soakGrace.
func (s *soakRun) timed(name string, d time.Duration, op func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	start := time.Now()
	err := op(ctx)
	took := time.Since(start)
	s.res.hist(name).add(took)
	s.res.count(name, err)
	bound := d + soakGrace
	if s.b.ioBound {
		bound += ioTimeout
	}
	if took > bound {
		s.violation("hang", "%s took %s (timeout %s): %v", name, took, d, err)
	}
	return err
}

// soakOne runs the soak on b for d.
func soakOne(t *testing.T, b backend, d time.Duration) *soakResult {
	res := newSoakResult(b.name)
	s := &soakRun{
		t: t, b: b, res: res,
		loads: map[kg][]time.Time{}, published: map[kg]pubInfo{}, setGens: map[kg]bool{}, began: map[kg]time.Time{}, mutations: map[string][]mutation{},
		terms: map[uint64]string{}, leaders: map[*coord.Leadership]string{}, holders: map[*coord.Permit]bool{},
		slotTok: make([]uint64, soakSemN),
	}
	for i := range soakKeys {
		s.keys = append(s.keys, "k"+strconv.Itoa(i))
	}
	s.gen = make([]atomic.Uint64, soakKeys)

	// The server: one of its own where it is killed (Redis with
	// appendfsync always, so that a kill loses nothing), the shared one
	// otherwise.
	var srv *testserver.Server
	var u string
	killable := false
	switch {
	case b.kind == "":
		u = b.sharedURL(t)
	case b.durable || b.kind == testserver.Redis:
		var opts *testserver.Options
		if b.kind == testserver.Redis {
			opts = &testserver.Options{AppendOnly: true}
		}
		srv = testserver.RequireWith(t, b.kind, opts)
		u = b.urlOf(srv.URL(), ioTimeout)
		killable = true
	default:
		u = b.sharedURL(t)
	}
	res.killable = killable
	var proxies []*proxy
	var clients []*claim.Client
	for range soakClients {
		if b.kind == "" {
			clients = append(clients, open(t, u))
			continue
		}
		pu, p := proxied(t, u)
		proxies = append(proxies, p)
		clients = append(clients, open(t, pu))
	}

	ns := "soak-" + randHex(4)
	discard := slog.New(slog.DiscardHandler)
	var caches []*flight.Cache[soakVal]
	var elections []*coord.Election
	var sems []*coord.Semaphore
	for i, c := range clients {
		fc, err := flight.New[soakVal](c, &flight.Options[soakVal]{
			Name: ns, L1TTL: soakL1TTL, TTL: 2 * time.Hour, TTLJitter: -1, ErrorTTL: -1,
			LeaseTTL: soakFlightLease, LoadTimeout: soakLoadTO, WaitTimeout: soakWait, OpTimeout: soakOpTO,
			Wait: flight.Fresh, FailClosed: true, Logger: discard,
		})
		if err != nil {
			t.Fatalf("flight.New: %v", err)
		}
		defer fc.Close()
		caches = append(caches, fc)
		e, err := coord.NewElection(c, ns, &coord.ElectionOptions{TTL: soakCoordTTL})
		if err != nil {
			t.Fatalf("coord.NewElection: %v", err)
		}
		elections = append(elections, e)
		sem, err := do(func(ctx context.Context) (*coord.Semaphore, error) {
			return coord.NewSemaphore(ctx, c, ns, soakSemN, &coord.SemaphoreOptions{TTL: soakCoordTTL})
		})
		if err != nil {
			t.Fatalf("client %d: coord.NewSemaphore: %v", i, err)
		}
		sems = append(sems, sem)
	}

	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	// pause sleeps d, or less if the run stops.
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-stop:
		}
	}
	var wg sync.WaitGroup
	obsCtx, obsCancel := context.WithCancel(context.Background())
	defer obsCancel()
	for i := range clients {
		for range soakHerd {
			wg.Go(func() {
				for !stopped() {
					s.fetch(i, caches[i])
					pause(time.Duration(20+rand.IntN(40)) * time.Millisecond)
				}
			})
		}
		wg.Go(func() {
			for !stopped() {
				s.getMany(i, caches[i])
				pause(time.Duration(100+rand.IntN(200)) * time.Millisecond)
			}
		})
		wg.Go(func() {
			for !stopped() {
				s.campaign(i, elections[i], stop)
				pause(time.Duration(rand.IntN(300)) * time.Millisecond)
			}
		})
		wg.Go(func() { s.observe(obsCtx, i, elections[i]) })
		for range soakSemWorkers {
			wg.Go(func() {
				for !stopped() {
					s.hold(sems[i], stop)
					pause(time.Duration(rand.IntN(100)) * time.Millisecond)
				}
			})
		}
	}
	wg.Go(func() {
		for !stopped() {
			s.mutate(caches)
			pause(time.Duration(150+rand.IntN(250)) * time.Millisecond)
		}
	})
	var fwg sync.WaitGroup
	if b.kind != "" {
		fwg.Go(func() { s.inject(proxies, srv, killable, d, stop) })
	}

	start := time.Now()
	time.Sleep(d)
	close(stop)
	fwg.Wait() // the faults are healed and the server is up
	obsCancel()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		var sb strings.Builder
		_ = pprof.Lookup("goroutine").WriteTo(&sb, 1)
		t.Fatalf("%s: VIOLATION hang: workers still running a minute after the end\n%s", b.name, sb.String())
	}
	res.elapsed = time.Since(start)

	s.converge(caches)
	for _, c := range caches {
		st := c.Stats()
		res.commits += st.Commits
		res.lostCommits += st.LostCommits
		res.takeovers += st.Takeovers
		res.waits += st.Waits
	}
	s.finish()
	return res
}

// loader is the flight loader of client i: it records the load and
// returns a value naming it.
func (s *soakRun) loader(i int) flight.LoadFunc[soakVal] {
	return func(ctx context.Context, key string) (soakVal, error) {
		v := s.startLoad(i, key)
		select {
		case <-time.After(time.Duration(20+rand.IntN(60)) * time.Millisecond):
		case <-ctx.Done():
			return soakVal{}, ctx.Err()
		}
		return v, nil
	}
}

func (s *soakRun) batchLoader(i int) flight.BatchFunc[soakVal] {
	return func(ctx context.Context, keys []string) (map[string]soakVal, error) {
		out := make(map[string]soakVal, len(keys))
		for _, k := range keys {
			out[k] = s.startLoad(i, k)
		}
		select {
		case <-time.After(time.Duration(20+rand.IntN(60)) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return out, nil
	}
}

func (s *soakRun) keyIndex(key string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(key, "k"))
	return n
}

// startLoad records a load of key by client i, in the key's current
// generation.
func (s *soakRun) startLoad(i int, key string) soakVal {
	g := s.gen[s.keyIndex(key)].Load()
	now := time.Now()
	v := soakVal{Key: key, Gen: g, ID: "c" + strconv.Itoa(i) + "-" + strconv.FormatUint(s.seq.Add(1), 10)}
	s.mu.Lock()
	defer s.mu.Unlock()
	id := kg{key, g}
	s.loads[id] = append(s.loads[id], now)
	if p, ok := s.published[id]; ok && p.at.Before(now) {
		s.lateLoad(v.ID, key, g, now.Sub(p.at), p.id)
	}
	return v
}

// lateLoad judges a load of key's generation g that started late after
// load pub of the same generation settled (s.mu held). Its
// claim was taken before that publication (otherwise it would have read
// the value) and then revoked (by the Invalidate that started g: the
// loader reads the generation when it starts) or run out, and its loader
// started late: within the flight lease, that is a slow goroutine, and
// the load's commit is refused (two loads settled would be caught);
// later than that, no claim can explain it.
func (s *soakRun) lateLoad(id, key string, g uint64, late time.Duration, pub string) {
	if late <= soakFlightLease {
		s.res.lateLoads++
		s.res.maxLate = max(s.res.maxLate, late)
		return
	}
	s.violation("load after settle", "load %s of %s generation %d started %s after %s settled", id, key, g, late, pub)
}

// seen checks a value client i got for key from a call that started at
// start and returned at end.
func (s *soakRun) seen(i int, key string, r flight.Result[soakVal], start, end time.Time) {
	v := r.Value
	if v.Key != key {
		s.violation("wrong value", "client %d got %+v for key %s", i, v, key)
		return
	}
	id := kg{key, v.Gen}
	from := v.loaderOf()
	// Settled: read from L2 (or handed over by its holder's wake-up) by
	// a flight this call started after the mutation that started the
	// generation returned, so the value was committed after that
	// mutation's revocation (a load committed between the generation's
	// bump and the revocation is legitimately revoked and loaded again).
	strict := !r.Shared && (r.Source == flight.SourceL2 || r.Source == flight.SourceRemote)
	s.mu.Lock()
	began, known := s.began[id]
	if from >= 0 && strict && !r.Superseded && (v.Gen == 0 || known && start.After(began)) {
		if p, ok := s.published[id]; !ok {
			s.published[id] = pubInfo{v.ID, end}
			for _, ls := range s.loads[id] {
				if ls.After(end) {
					s.lateLoad("?", key, v.Gen, ls.Sub(end), v.ID)
				}
			}
		} else if p.id != v.ID {
			s.violation("two loads settled", "%s generation %d: %s and %s both settled (one load per generation)", key, v.Gen, p.id, v.ID)
		}
	}
	muts := s.mutations[key]
	s.mu.Unlock()
	if r.Superseded {
		s.res.add(&s.res.superseded, 1)
		return
	}
	// The newest mutation that returned before the call started, overall
	// and by this client; the newest that returned soakCrossBound before
	// (as ranks: 0 when none).
	var newest, own, far uint64
	var newestAt time.Time
	for j := len(muts) - 1; j >= 0; j-- {
		m := muts[j]
		if !m.at.Before(start) {
			continue
		}
		if newest == 0 {
			newest, newestAt = m.rank, m.at
		}
		if own == 0 && m.client == i {
			own = m.rank
		}
		if m.at.Add(soakCrossBound).Before(start) {
			far = m.rank
			break
		}
	}
	rank := v.rank()
	if rank >= newest {
		return
	}
	strict = strict || !r.Shared && r.Source == flight.SourceLoaded
	switch {
	case rank < own:
		s.violation("stale", "client %d got %s of %s generation %d (source %s, shared %v) in a call started after its own invalidation of rank %d returned", i, v.ID, key, v.Gen, r.Source, r.Shared, own)
	case strict:
		s.violation("stale", "client %d got %s of %s generation %d from %s in a call started after the invalidation of rank %d returned", i, v.ID, key, v.Gen, r.Source, newest)
	case rank < far:
		s.violation("stale", "client %d got %s of %s generation %d (source %s) more than %s after the invalidation of rank %d returned", i, v.ID, key, v.Gen, r.Source, soakCrossBound, far)
	default:
		s.res.lag(start.Sub(newestAt))
	}
}

// fetch is one herd Get (as Fetch, to see the source).
func (s *soakRun) fetch(i int, c *flight.Cache[soakVal]) {
	key := s.hotKey()
	var r flight.Result[soakVal]
	start := time.Now()
	err := s.timed("fetch", soakCallTO, func(ctx context.Context) (err error) {
		r, err = c.Fetch(ctx, key, s.loader(i))
		return err
	})
	if err == nil {
		s.seen(i, key, r, start, time.Now())
	}
}

// hotKey picks a key, the first ones more often, so that herds form.
func (s *soakRun) hotKey() string {
	if rand.IntN(3) > 0 {
		return s.keys[rand.IntN(2)]
	}
	return s.keys[rand.IntN(len(s.keys))]
}

func (s *soakRun) getMany(i int, c *flight.Cache[soakVal]) {
	perm := rand.Perm(len(s.keys))[:3]
	keys := make([]string, len(perm))
	for j, p := range perm {
		keys[j] = s.keys[p]
	}
	var rs []flight.Result[soakVal]
	start := time.Now()
	err := s.timed("getmany", soakCallTO, func(ctx context.Context) (err error) {
		rs, err = c.GetMany(ctx, keys, s.batchLoader(i))
		return err
	})
	if err != nil {
		return
	}
	end := time.Now()
	for j, r := range rs {
		if r.Err != nil {
			s.res.count("getmany key", r.Err)
			continue
		}
		s.res.count("getmany key", nil)
		s.seen(i, keys[j], r, start, end)
	}
}

// mutate invalidates or sets a random key from a random client.
func (s *soakRun) mutate(caches []*flight.Cache[soakVal]) {
	key := s.hotKey()
	k := s.keyIndex(key)
	i := rand.IntN(len(caches))
	set := rand.IntN(3) == 0
	s.mu.Lock()
	g := s.gen[k].Add(1)
	if set {
		s.setGens[kg{key, g}] = true
	}
	s.mu.Unlock()
	op := "invalidate"
	var v soakVal
	if set {
		op = "set"
		v = soakVal{Key: key, Gen: g, ID: "s-" + strconv.FormatUint(s.seq.Add(1), 10)}
	}
	err := s.timed(op, soakShortTO, func(ctx context.Context) error {
		if set {
			return caches[i].Set(ctx, key, v)
		}
		return caches[i].Invalidate(ctx, key)
	})
	if err != nil {
		return
	}
	m := mutation{at: time.Now(), rank: 2 * g, client: i}
	if set {
		m.rank = 2*g + 1
	}
	s.mu.Lock()
	s.mutations[key] = append(s.mutations[key], m)
	s.began[kg{key, g}] = m.at
	s.mu.Unlock()
}

// campaign is one term attempt of client i.
func (s *soakRun) campaign(i int, e *coord.Election, stop <-chan struct{}) {
	id := "c" + strconv.Itoa(i)
	var ld *coord.Leadership
	err := s.timed("campaign", soakWaitTO, func(ctx context.Context) (err error) {
		ld, err = e.Campaign(ctx, id, []byte(id))
		return err
	})
	if err != nil {
		return
	}
	term := ld.Term()
	s.emu.Lock()
	select {
	case <-ld.Lost():
		// Lost before it could be counted (a fault right after the
		// election): it never led as far as the test is concerned.
		s.emu.Unlock()
		s.res.add(&s.res.lostTerms, 1)
		_ = s.timed("resign", soakShortTO, func(ctx context.Context) error { return ld.Resign(ctx) })
		return
	default:
	}
	for other, otherID := range s.leaders {
		select {
		case <-other.Lost():
			delete(s.leaders, other)
			continue
		default:
		}
		s.violation("two leaders", "%s became leader of term %d while %s of term %d still led", id, term, otherID, other.Term())
	}
	if term <= s.maxTerm {
		s.violation("term not increasing", "%s leads term %d after term %d", id, term, s.maxTerm)
	}
	s.maxTerm = max(s.maxTerm, term)
	s.termLocked(term, id)
	s.leaders[ld] = id
	s.emu.Unlock()
	s.res.add(&s.res.terms, 1)

	hold := time.Duration(100+rand.IntN(700)) * time.Millisecond
	if rand.IntN(6) == 0 {
		// Renewals (every TTL/3) through the faults.
		hold = soakCoordTTL/2 + time.Duration(rand.Int64N(int64(soakCoordTTL)*7/10))
	}
	lost := false
	select {
	case <-time.After(hold):
	case <-ld.Lost():
		lost = true
	case <-stop:
	}
	if !lost && rand.IntN(3) == 0 {
		_ = s.timed("proclaim", soakShortTO, func(ctx context.Context) error {
			return ld.Proclaim(ctx, []byte(id+"+"))
		})
	}
	s.emu.Lock()
	delete(s.leaders, ld)
	s.emu.Unlock()
	select {
	case <-ld.Lost():
		lost = true
	default:
	}
	if lost {
		s.res.add(&s.res.lostTerms, 1)
	}
	_ = s.timed("resign", soakShortTO, func(ctx context.Context) error { return ld.Resign(ctx) })
}

// termLocked records that id leads term (s.emu held).
func (s *soakRun) termLocked(term uint64, id string) {
	if had, ok := s.terms[term]; ok && had != id {
		s.violation("two leaders", "term %d led by %s and by %s", term, had, id)
		return
	}
	s.terms[term] = id
}

// observe follows the election from client i until ctx is done.
func (s *soakRun) observe(ctx context.Context, i int, e *coord.Election) {
	var lastRev, lastTerm uint64
	for ctx.Err() == nil {
		var ch <-chan coord.Leader
		// Observe's context bounds the stream, so its setup runs without
		// a deadline of its own (the client's op timeouts bound its
		// calls): it is given a partition's length plus a call's.
		err := s.timed("observe", soakLongFault+soakCallTO, func(cctx context.Context) (err error) {
			// Observe's ctx bounds the stream: use the run's, bounded
			// here only while it sets up.
			type res struct {
				ch  <-chan coord.Leader
				err error
			}
			rc := make(chan res, 1)
			go func() { c, err := e.Observe(ctx); rc <- res{c, err} }()
			select {
			case r := <-rc:
				ch, err = r.ch, r.err
			case <-cctx.Done():
				r := <-rc // Observe's own calls end with their timeouts
				ch, err = r.ch, r.err
			}
			return err
		})
		if err != nil {
			select {
			case <-time.After(200 * time.Millisecond):
			case <-ctx.Done():
			}
			continue
		}
		for l := range ch {
			s.res.add(&s.res.announcements, 1)
			if l.Rev <= lastRev && lastRev != 0 {
				s.violation("observer order", "client %d: announcement rev %d after rev %d", i, l.Rev, lastRev)
			}
			if l.Rev > lastRev+1 && lastRev != 0 {
				s.res.add(&s.res.revGaps, 1)
			}
			if l.Term < lastTerm {
				s.violation("observer order", "client %d: term %d announced after term %d", i, l.Term, lastTerm)
			}
			lastRev, lastTerm = max(lastRev, l.Rev), max(lastTerm, l.Term)
			s.emu.Lock()
			s.termLocked(l.Term, l.ID)
			s.emu.Unlock()
		}
	}
}

// hold takes a permit of sem, holds it a while and releases it.
func (s *soakRun) hold(sem *coord.Semaphore, stop <-chan struct{}) {
	var p *coord.Permit
	err := s.timed("acquire", soakWaitTO, func(ctx context.Context) (err error) {
		p, err = sem.Acquire(ctx)
		return err
	})
	if err != nil {
		return
	}
	s.smu.Lock()
	select {
	case <-p.Lost():
		// Lost before it could be counted: it never held as far as the
		// test is concerned.
		s.smu.Unlock()
		s.res.add(&s.res.lostPermits, 1)
		_ = s.timed("release", soakShortTO, func(ctx context.Context) error { return p.Release(ctx) })
		return
	default:
	}
	n := 1
	for other := range s.holders {
		select {
		case <-other.Lost():
			delete(s.holders, other)
			continue
		default:
		}
		n++
		if other.Slot() == p.Slot() {
			s.violation("semaphore", "slot %d held twice (tokens %d and %d)", p.Slot(), other.Token(), p.Token())
		}
	}
	if n > soakSemN {
		s.violation("semaphore", "%d holders of a semaphore of %d", n, soakSemN)
	}
	if p.Token() <= s.slotTok[p.Slot()] {
		s.violation("semaphore", "slot %d token %d after token %d", p.Slot(), p.Token(), s.slotTok[p.Slot()])
	}
	s.slotTok[p.Slot()] = max(s.slotTok[p.Slot()], p.Token())
	s.holders[p] = true
	s.res.maxHolders = max(s.res.maxHolders, n)
	s.smu.Unlock()
	s.res.add(&s.res.permits, 1)

	hold := time.Duration(20+rand.IntN(280)) * time.Millisecond
	if rand.IntN(10) == 0 {
		hold = soakCoordTTL/2 + time.Duration(rand.Int64N(int64(soakCoordTTL)*7/10))
	}
	lost := false
	select {
	case <-time.After(hold):
	case <-p.Lost():
		lost = true
	case <-stop:
	}
	s.smu.Lock()
	delete(s.holders, p)
	s.smu.Unlock()
	select {
	case <-p.Lost():
		lost = true
	default:
	}
	if lost {
		s.res.add(&s.res.lostPermits, 1)
	}
	_ = s.timed("release", soakShortTO, func(ctx context.Context) error { return p.Release(ctx) })
}

// inject runs random faults until stop, then heals everything.
func (s *soakRun) inject(proxies []*proxy, srv *testserver.Server, killable bool, d time.Duration, stop <-chan struct{}) {
	// Kills (if the server can be killed): the first after 2/5 of the
	// run or 20 s, whichever comes first (one in the 10 s run), then one
	// every 45 s.
	const killEvery = 45 * time.Second
	nextKill := time.Now().Add(min(d*2/5, 20*time.Second))
	wait := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-stop:
			return false
		}
	}
	for wait(time.Duration(500+rand.IntN(1500)) * time.Millisecond) {
		if killable && time.Now().After(nextKill) {
			nextKill = time.Now().Add(killEvery)
			s.kill(srv)
			continue
		}
		targets := []*proxy{proxies[rand.IntN(len(proxies))]}
		if rand.IntN(4) == 0 {
			targets = proxies
		}
		dur := time.Duration(300+rand.IntN(3700)) * time.Millisecond
		kind := []string{"reset", "latency", "blackhole", "down"}[rand.IntN(4)]
		if rand.IntN(8) == 0 {
			// A long partition of one client: its leases run out.
			kind, dur, targets = "long blackhole", soakLongFault, targets[:1]
		}
		s.res.fault(kind)
		for _, p := range targets {
			switch kind {
			case "reset":
				p.add("reset", "reset_peer", []string{"upstream", "downstream"}[rand.IntN(2)], 1, map[string]any{"timeout": rand.IntN(200)})
			case "latency":
				p.add("lat-up", "latency", "upstream", 1, map[string]any{"latency": 50 + rand.IntN(200), "jitter": 50})
				p.add("lat-down", "latency", "downstream", 1, map[string]any{"latency": rand.IntN(100), "jitter": 20})
			case "blackhole", "long blackhole":
				p.blackhole()
			case "down":
				p.down()
			}
		}
		wait(dur) // cut short at the end of the run
		for _, p := range targets {
			if kind == "down" {
				p.up()
			} else {
				p.heal()
			}
		}
	}
}

// kill kills the server with SIGKILL and restarts it.
func (s *soakRun) kill(srv *testserver.Server) {
	s.res.fault("kill -9")
	start := time.Now()
	if err := srv.Kill(); err != nil {
		s.t.Errorf("%s: kill: %v", s.b.name, err)
		return
	}
	time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := srv.Restart(ctx); err != nil {
		s.t.Errorf("%s: restart: %v", s.b.name, err)
		return
	}
	s.res.mu.Lock()
	s.res.downtime = append(s.res.downtime, time.Since(start))
	s.res.mu.Unlock()
}

// converge: once the faults are over and L1TTL has passed, every client
// serves the same value of each key, of a generation no older than the
// last mutation that returned.
func (s *soakRun) converge(caches []*flight.Cache[soakVal]) {
	time.Sleep(soakL1TTL + 500*time.Millisecond)
	for k, key := range s.keys {
		var ids []string
		for i, c := range caches {
			r, err := do(func(ctx context.Context) (flight.Result[soakVal], error) { return c.Fetch(ctx, key, s.loader(i)) })
			if err != nil {
				s.t.Errorf("%s: after the run: client %d: fetch %s: %v", s.b.name, i, key, err)
				return
			}
			s.mu.Lock()
			muts := s.mutations[key]
			s.mu.Unlock()
			if n := len(muts); n > 0 && r.Value.rank() < muts[n-1].rank {
				s.violation("stale", "after the run: client %d serves %s of %s generation %d, older than the last invalidation's (rank %d)", i, r.Value.ID, key, r.Value.Gen, muts[n-1].rank)
			}
			if r.Value.Gen > s.gen[k].Load() {
				s.violation("wrong value", "after the run: client %d serves generation %d of %s, never started", i, r.Value.Gen, key)
			}
			ids = append(ids, r.Value.ID)
		}
		if len(slices.Compact(slices.Clone(ids))) != 1 {
			s.violation("diverged", "after the run, %s: the clients serve %v", key, ids)
		}
	}
}

// finish computes the load counts.
func (s *soakRun) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.res
	for id, ls := range s.loads {
		r.loads += uint64(len(ls))
		r.keyGens++
		if s.setGens[id] {
			r.setGenLoads += uint64(len(ls))
			continue
		}
		r.extraLoads += uint64(len(ls) - 1)
		r.maxLoadsPerGen = max(r.maxLoadsPerGen, len(ls))
	}
	r.publishedGens = len(s.published)
	s.emu.Lock()
	r.distinctTerms = len(s.terms)
	s.emu.Unlock()
}

// soakResult is one backend's figures.
type soakResult struct {
	name     string
	killable bool
	elapsed  time.Duration

	mu         sync.Mutex
	ops        map[string]*opCount
	hists      map[string]*hist
	faults     map[string]int
	violations map[string]int
	downtime   []time.Duration
	staleLags  []time.Duration

	loads, keyGens, extraLoads, setGenLoads      uint64
	maxLoadsPerGen, publishedGens, distinctTerms int
	commits, lostCommits, takeovers, waits       uint64
	superseded, terms, lostTerms, announcements  uint64
	revGaps, permits, lostPermits                uint64
	maxHolders                                   int
	lateLoads                                    uint64 // under soakRun.mu
	maxLate                                      time.Duration
}

type opCount struct {
	ok, failed uint64
	errs       map[string]uint64
	sample     map[string]string // an error of each class, for the log
}

func newSoakResult(name string) *soakResult {
	return &soakResult{name: name, ops: map[string]*opCount{}, hists: map[string]*hist{}, faults: map[string]int{}, violations: map[string]int{}}
}

func (r *soakResult) add(p *uint64, n uint64) {
	r.mu.Lock()
	*p += n
	r.mu.Unlock()
}

func (r *soakResult) fault(kind string) {
	r.mu.Lock()
	r.faults[kind]++
	r.mu.Unlock()
}

func (r *soakResult) lag(d time.Duration) {
	r.mu.Lock()
	r.staleLags = append(r.staleLags, d)
	r.mu.Unlock()
}

func (r *soakResult) hist(name string) *hist {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.hists[name]
	if h == nil {
		h = &hist{}
		r.hists[name] = h
	}
	return h
}

// count counts a call's outcome, errors by class.
func (r *soakResult) count(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.ops[name]
	if c == nil {
		c = &opCount{errs: map[string]uint64{}, sample: map[string]string{}}
		r.ops[name] = c
	}
	if err == nil {
		c.ok++
		return
	}
	c.failed++
	class := errClass(err)
	c.errs[class]++
	if _, ok := c.sample[class]; !ok {
		c.sample[class] = err.Error()
	}
}

// errClass names an error's kind for the report.
func errClass(err error) string {
	switch {
	case errors.Is(err, flight.ErrBackend), errors.Is(err, claim.ErrUnavailable):
		return "backend down"
	case errors.Is(err, flight.ErrWaitTimeout):
		return "wait timeout"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, claim.ErrLost), errors.Is(err, coord.ErrNotHeld):
		return "lost"
	case errors.Is(err, claim.ErrHeld):
		return "held"
	default:
		return "other"
	}
}

func (r *soakResult) violationCount() int {
	n := 0
	for _, v := range r.violations {
		n += v
	}
	return n
}

func (r *soakResult) faultCount() int {
	n := 0
	for _, v := range r.faults {
		n += v
	}
	return n
}

func (r *soakResult) calls() (ok, failed uint64) {
	for _, c := range r.ops {
		ok += c.ok
		failed += c.failed
	}
	return ok, failed
}

func (r *soakResult) summary() string {
	ok, failed := r.calls()
	return fmt.Sprintf("%s: %d calls ok, %d failed; %d loads for %d (key, generation)s (%d extra, max %d per generation); %d faults %v; violations %d %v",
		r.elapsed.Round(time.Second), ok, failed, r.loads, r.keyGens, r.extraLoads, r.maxLoadsPerGen, r.faultCount(), r.faults, r.violationCount(), r.violations)
}

// hist is a latency histogram with buckets 5% wide (1 µs to about 3 min).
type hist struct {
	mu  sync.Mutex
	n   uint64
	b   [400]uint64
	max time.Duration
}

const histBase = 1.05

func histBucket(d time.Duration) int {
	us := float64(d) / float64(time.Microsecond)
	i := 0
	for v := 1.0; v < us && i < len(hist{}.b)-1; v *= histBase {
		i++
	}
	return i
}

func (h *hist) add(d time.Duration) {
	i := histBucket(d)
	h.mu.Lock()
	h.n++
	h.b[i]++
	h.max = max(h.max, d)
	h.mu.Unlock()
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *hist) quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	want := uint64(q*float64(h.n-1)) + 1
	var seen uint64
	v := 1.0
	for i := range h.b {
		seen += h.b[i]
		if seen >= want {
			return min(time.Duration(v*float64(time.Microsecond)), h.max)
		}
		v *= histBase
	}
	return h.max
}

// fmtDur formats a latency for the report.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "—"
	case d < 100*time.Microsecond:
		return strconv.FormatFloat(float64(d)/float64(time.Microsecond), 'f', 0, 64) + " µs"
	case d < time.Millisecond:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64) + " ms"
	case d < 10*time.Second:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64) + " ms"
	default:
		return strconv.FormatFloat(d.Seconds(), 'f', 1, 64) + " s"
	}
}

// soakOrder is the order of the report's sections.
var soakOrder = func() []string {
	var ns []string
	for _, b := range backends {
		ns = append(ns, b.name)
	}
	return ns
}()

const (
	soakSectionStart = "<!-- soak:"
	soakSectionEnd   = "<!-- /soak -->"
)

// section renders r as the report's section for its backend: the first
// line is its row of the summary table.
func (r *soakResult) section(d time.Duration, cmd string) string {
	var sb strings.Builder
	ok, failed := r.calls()
	viol := r.violationCount()
	vs := "0"
	if viol > 0 {
		vs = fmt.Sprintf("**%d** %v", viol, r.violations)
	}
	fetch := r.hists["fetch"]
	p50, p99 := time.Duration(0), time.Duration(0)
	if fetch != nil {
		p50, p99 = fetch.quantile(0.5), fetch.quantile(0.99)
	}
	fmt.Fprintf(&sb, "| %s | %s | %d | %d | %d | %d (%d extra) | %d | %d | %d | %s / %s | %s |\n",
		r.name, r.elapsed.Round(time.Second), ok, failed, r.faultCount(), r.loads, r.extraLoads, r.terms, r.permits, r.maxHolders, fmtDur(p50), fmtDur(p99), vs)
	fmt.Fprintf(&sb, "\n### %s\n\n", r.name)
	fmt.Fprintf(&sb, "Run: %s of workload (asked %s), `%s`, %s.\n\n", r.elapsed.Round(time.Second), d, cmd, time.Now().UTC().Format(time.RFC3339))
	var fk []string
	for k, n := range r.faults {
		fk = append(fk, fmt.Sprintf("%s %d", k, n))
	}
	slices.Sort(fk)
	if len(fk) == 0 {
		fk = []string{"none (in-process backend: no network, no server)"}
	}
	fmt.Fprintf(&sb, "- Faults injected: %s.", strings.Join(fk, ", "))
	if !r.killable && r.name != "memory" {
		sb.WriteString(" No kill -9: the test server keeps its state in memory, so a restart loses every lease (see TestRestart).")
	}
	if len(r.downtime) > 0 {
		fmt.Fprintf(&sb, " Kill to restarted: max %s.", fmtDur(slices.Max(r.downtime)))
	}
	sb.WriteString("\n")
	fmt.Fprintf(&sb, "- Flight: %d loads for %d (key, generation)s; in the generations started by Invalidate at most %d loads per generation, %d extra loads (a second load of a generation started before any load of it settled: the first one's value never settled, because the Invalidate that started the generation revoked its claim, taken just before, or its lease ran out or its commit failed in a fault); %d loads in generations started by a Set (revoked or overwritten by it); %d loads that started after a load of their generation settled (at most %s after: a claim revoked or run out before its loader started; allowed up to the flight lease, %s); %d loads settled; stampede's counters: %d commits, %d lost commits, %d waits, %d takeovers; %d superseded answers.\n",
		r.loads, r.keyGens, r.maxLoadsPerGen, r.extraLoads, r.setGenLoads, r.lateLoads, fmtDur(r.maxLate), soakFlightLease, r.publishedGens, r.commits, r.lostCommits, r.waits, r.takeovers, r.superseded)
	if len(r.staleLags) > 0 {
		fmt.Fprintf(&sb, "- Old values served by another process's L1 after an invalidation returned (allowed up to %s): %d, latest %s after the return.\n", soakCrossBound, len(r.staleLags), fmtDur(slices.Max(r.staleLags)))
	} else {
		sb.WriteString("- Old values served by another process's L1 after an invalidation returned: 0.\n")
	}
	fmt.Fprintf(&sb, "- Election: %d terms (%d distinct seen), %d lost by their leader (lease run out in a fault), %d announcements observed, %d rev gaps in an observer's stream.\n",
		r.terms, r.distinctTerms, r.lostTerms, r.announcements, r.revGaps)
	fmt.Fprintf(&sb, "- Semaphore of %d: %d permits, at most %d holders at once, %d permits lost (lease run out in a fault).\n", soakSemN, r.permits, r.maxHolders, r.lostPermits)
	fmt.Fprintf(&sb, "- Violations: %s.\n\n", vs)
	sb.WriteString("| call | ok | failed (by cause) | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|\n")
	var names []string
	for n := range r.ops {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		c := r.ops[n]
		var es []string
		for e, k := range c.errs {
			es = append(es, fmt.Sprintf("%s %d", e, k))
		}
		slices.Sort(es)
		cause := ""
		if len(es) > 0 {
			cause = " (" + strings.Join(es, ", ") + ")"
		}
		row := fmt.Sprintf("| %s | %d | %d%s |", n, c.ok, c.failed, cause)
		if h := r.hists[n]; h != nil {
			row += fmt.Sprintf(" %s | %s | %s | %s |", fmtDur(h.quantile(0.5)), fmtDur(h.quantile(0.9)), fmtDur(h.quantile(0.99)), fmtDur(h.max))
		} else {
			row += " | | | |"
		}
		sb.WriteString(row + "\n")
	}
	return sb.String()
}

// writeSoakReport writes the results into path, keeping the sections of
// backends this run did not cover (another pass, e.g. ZooKeeper's
// without -race), under an exclusive lock on the file.
func writeSoakReport(path string, results []*soakResult, d time.Duration, cmd string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if err := lockFile(f); err != nil {
		return fmt.Errorf("lock %s: %w", path, err)
	}
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	sections := parseSoakSections(string(old))
	for _, r := range results {
		sections[r.name] = r.section(d, cmd)
	}
	var sb strings.Builder
	sb.WriteString("# Soak report\n\n")
	sb.WriteString("<!-- generated by faults/soak_test.go (make soak); do not edit -->\n\n")
	fmt.Fprintf(&sb, "Generated by `make soak`, i.e. `cd faults && STAMPEDE_SOAK=%s STAMPEDE_SOAK_REPORT=<this file> go test -race -count=1 -run '^TestSoak$' -timeout 90m .`, and for ZooKeeper the same without `-race` and with `-run '^TestReconnectSoakZooKeeper$'` (go-zk races on reconnection under the race detector). Every backend runs at once on one 2-core machine, each with %d clients (one `claim.Client` each, through a toxiproxy proxy of its own): %d goroutines per client Fetch %d keys from a flight cache, GetMany of 3 keys, one mutator Invalidates (2/3) or Sets (1/3) a random key, mostly the two hot ones, every 150–400 ms, an Election (lease %s) with every client campaigning and observing, a Semaphore of %d (lease %[5]s) with %[7]d holders per client. Faults: every 0.5–2 s a connection reset, latency (50–250 ms), blackhole or refused connections (0.3–4 s) on one link or all, or (one in eight) a blackhole of %[8]s on one link; kill -9 and restart of the server every 45 s on the backends whose test server keeps its state on disk (Redis with appendfsync always). The invariants are in faults/soak_test.go and docs/reliability.md (Soak).\n\n",
		d, soakClients, soakHerd, soakKeys, soakCoordTTL, soakSemN, soakSemWorkers, soakLongFault)
	sb.WriteString("| backend | ran | calls ok | calls failed | faults | loads | terms | permits | max holders (N=2) | fetch p50 / p99 | violations |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	var order []string
	for _, n := range soakOrder {
		if _, ok := sections[n]; ok {
			order = append(order, n)
		}
	}
	for _, n := range order {
		row, _, _ := strings.Cut(sections[n], "\n")
		sb.WriteString(row + "\n")
	}
	for _, n := range order {
		_, rest, _ := strings.Cut(sections[n], "\n")
		fmt.Fprintf(&sb, "\n%s%s -->\n%s%s\n", soakSectionStart, n, rest, soakSectionEnd)
	}
	out := sb.String()
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	if _, err := f.WriteAt([]byte(out), 0); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// parseSoakSections reads the sections of an earlier report: backend →
// section (its summary row first).
func parseSoakSections(s string) map[string]string {
	out := map[string]string{}
	rows := map[string]string{}
	for line := range strings.Lines(s) {
		if strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| backend ") {
			name, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
			rows[name] = strings.TrimRight(line, "\n")
		}
	}
	for {
		i := strings.Index(s, soakSectionStart)
		if i < 0 {
			return out
		}
		s = s[i+len(soakSectionStart):]
		name, rest, ok := strings.Cut(s, " -->\n")
		if !ok {
			return out
		}
		body, after, ok := strings.Cut(rest, soakSectionEnd)
		if !ok {
			return out
		}
		if row, ok := rows[name]; ok {
			out[name] = row + "\n" + body
		}
		s = after
	}
}
