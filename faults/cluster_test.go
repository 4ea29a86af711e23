package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
)

// The cluster fault harness (issue 17). Each cluster backend registers a
// clusterSpec from init() in faults/cluster_<backend>_test.go; TestCluster
// starts each registered cluster and runs, at the same time and under one
// fault schedule, a lease workload checked for overlaps and a random
// workload checked by porcupine against the fenced-register model (see
// linearizability_test.go).

// cluster is a running cluster of a backend, as the harness drives it.
// Member indexes run from 0 to Members()-1. Its methods are safe for
// concurrent use.
type cluster interface {
	Members() int
	// URL is a claim.Open URL listing every member, member `first` first
	// (clients are spread over members by rotating the list).
	URL(first int) string
	// Leader waits (up to ctx) until the members agree on a leader/primary
	// and returns its index.
	Leader(ctx context.Context) (int, error)
	Kill(i int) error                         // SIGKILL member i
	Restart(ctx context.Context, i int) error // start member i again on its data, wait until it is up
	Pause(i int) error                        // SIGSTOP member i
	Resume(i int) error                       // SIGCONT member i
	// Partition cuts member i off from every peer and client (both
	// directions) until Heal(i); errors.ErrUnsupported where not built.
	Partition(i int) error
	Heal(i int) error
}

// clusterSpec is one cluster backend of TestCluster.
type clusterSpec struct {
	name  string                     // "etcd", "zookeeper", "consul", "redis-sentinel"
	start func(t *testing.T) cluster // start it (t.Cleanup stops it); a missing server fails the test under STAMPEDE_TEST_REQUIRE=1
	// lossy: the substrate may lose leases/fence on failover (Redis async replication):
	// the harness then measures and logs violations instead of failing on them.
	lossy bool
}

// clusterSpecs are the cluster backends TestCluster runs, appended from
// init() in faults/cluster_<backend>_test.go.
var clusterSpecs []clusterSpec

// clusterFault is one fault of the schedule: inject it on member i (which
// the fault chose: the leader, a follower), and undo it.
type clusterFault struct {
	name string
	// leader: the fault hits the leader, so a new one is expected (and
	// the time until the others agree on it is measured).
	leader bool
	inject func(c cluster, i int) error
	undo   func(ctx context.Context, c cluster, i int) error
}

var clusterFaults = []clusterFault{
	{
		name: "leader-kill", leader: true,
		inject: func(c cluster, i int) error { return c.Kill(i) },
		undo:   func(ctx context.Context, c cluster, i int) error { return c.Restart(ctx, i) },
	},
	{
		name: "leader-pause", leader: true,
		inject: func(c cluster, i int) error { return c.Pause(i) },
		undo:   func(_ context.Context, c cluster, i int) error { return c.Resume(i) },
	},
	{
		name: "leader-partition", leader: true,
		inject: func(c cluster, i int) error { return c.Partition(i) },
		undo:   func(_ context.Context, c cluster, i int) error { return c.Heal(i) },
	},
	{
		name:   "follower-partition",
		inject: func(c cluster, i int) error { return c.Partition(i) },
		undo:   func(_ context.Context, c cluster, i int) error { return c.Heal(i) },
	},
}

// clusterPlan is the timing of a run: the short set by default, the full
// set under STAMPEDE_CHAOS=1.
type clusterPlan struct {
	rounds int           // times the whole fault list runs
	warm   time.Duration // workload running before each fault
	hold   time.Duration // a fault lasts this long (longer than any election timeout of the test clusters)
	settle time.Duration // at least this long after each recovery
	limit  time.Duration // at most this long after each recovery for every worker to progress
}

func planFor() clusterPlan {
	if chaos() {
		return clusterPlan{rounds: 3, warm: 2 * time.Second, hold: 5 * time.Second, settle: 2 * time.Second, limit: 60 * time.Second}
	}
	return clusterPlan{rounds: 1, warm: time.Second, hold: 3 * time.Second, settle: time.Second, limit: 30 * time.Second}
}

// TestCluster runs every registered cluster backend through the fault
// schedule: SIGKILL and restart of the leader, SIGSTOP and SIGCONT of the
// leader (longer than an election timeout), partition and heal of the
// leader, then of a follower; each fault is a subtest. Throughout, a lease
// workload (several clients, each listing the members from another one;
// workers doing Acquire, KeepAlive, CommitRelease, waiting for each
// other's keys, replaying committed leases as stale holders) and the
// porcupine workload run on their own keys. Checked: no two leases of a
// key overlap on the test process's monotonic clock, every stale replay
// is refused, every worker commits a lease acquired after each recovery
// (no stranded waiter), and the porcupine history is linearizable. A
// lossy spec logs its overlaps, accepted replays and violations instead
// of failing on them.
func TestCluster(t *testing.T) {
	if len(clusterSpecs) == 0 {
		t.Fatal("no cluster spec registered")
	}
	for _, spec := range clusterSpecs {
		t.Run(spec.name, func(t *testing.T) {
			t.Parallel()
			clusterRun(t, spec)
		})
	}
}

// clusterLease is one lease a worker of the lease workload held, on the
// test process's monotonic clock.
type clusterLease struct {
	key    string
	token  uint64
	holder string
	worker int
	// acquired is when Acquire returned; end is when the holder stopped
	// counting on the lease: when its critical section ended (just before
	// CommitRelease was sent), or the lease's local Deadline as last
	// renewed, whichever came first. (Not when CommitRelease returned: its
	// reply may arrive after the next holder was granted the key.)
	acquired, end time.Time
	// committed is when CommitRelease returned nil (zero otherwise).
	committed time.Time
	commit    error // CommitRelease's result
}

// overlaps checks leases with backendtest.Overlaps (proven by its
// TestOverlaps): tokens distinct, and no lease acquired before an earlier
// token's lease ended.
func overlaps(leases []clusterLease) []string {
	spans := make([]backendtest.LeaseSpan, len(leases))
	for i, l := range leases {
		spans[i] = backendtest.LeaseSpan{Key: l.key, Token: l.token, Holder: l.holder, Worker: l.worker, Acquired: l.acquired, End: l.end}
	}
	return backendtest.Overlaps(spans)
}

// leaseLoad is the lease workload's shared record.
type leaseLoad struct {
	mu     sync.Mutex
	leases []clusterLease
	// counts
	acquireErrs, keeperLosses, commitsOK, commitsLost, commitsFailed int
	replaysLost, replaysFailed, replaysAccepted                      int
	longestWait                                                      time.Duration // longest successful Acquire
	failures                                                         []string      // CommitRelease errors other than ErrLost, the first few
	acquireFails                                                     []acquireFail
}

// acquireFail is an Acquire that returned an error.
type acquireFail struct {
	worker        int
	asked, failed time.Time
	err           error
}

// acquireFailsIn returns the Acquire errors returned in [from, to).
func (ld *leaseLoad) acquireFailsIn(from, to time.Time) []acquireFail {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	var out []acquireFail
	for _, f := range ld.acquireFails {
		if !f.failed.Before(from) && f.failed.Before(to) {
			out = append(out, f)
		}
	}
	return out
}

// committedSince returns, per worker, when it first had CommitRelease of
// a lease acquired after since succeed (zero: not yet).
func (ld *leaseLoad) committedSince(workers int, since time.Time) []time.Time {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	first := make([]time.Time, workers)
	for _, l := range ld.leases {
		if !l.committed.IsZero() && l.acquired.After(since) && (first[l.worker].IsZero() || l.committed.Before(first[l.worker])) {
			first[l.worker] = l.committed
		}
	}
	return first
}

// leaseWorker runs worker w of the lease workload on cl until run is
// done: acquire one of keys (waiting for its holder), hold it under
// KeepAlive for a short or a longer critical section, CommitRelease, and
// every third time replay the commit as a stale holder.
func leaseWorker(run context.Context, ld *leaseLoad, cl *claim.Client, w int, keys []string, ttl time.Duration) {
	for i := 0; run.Err() == nil; i++ {
		key := keys[(w+i)%len(keys)]
		actx, acancel := context.WithTimeout(run, 10*time.Second)
		asked := time.Now()
		l, err := cl.Acquire(actx, key, ttl)
		acquired := time.Now()
		acancel()
		if err != nil {
			if run.Err() != nil {
				return
			}
			ld.mu.Lock()
			ld.acquireErrs++
			ld.acquireFails = append(ld.acquireFails, acquireFail{worker: w, asked: asked, failed: acquired, err: err})
			ld.mu.Unlock()
			sleep(run, 20*time.Millisecond)
			continue
		}
		k := cl.KeepAlive(run, l, nil)
		// Short critical sections; every second worker holds for 150 to
		// 900 ms, so that some renewals span a fault.
		ms := 5 + (w*7+i*3)%20
		if w%2 == 1 {
			ms = 150 + (w*131+i*337)%750
		}
		hold := time.NewTimer(time.Duration(ms) * time.Millisecond)
		select {
		case <-hold.C:
		case <-k.Lost():
		case <-run.Done():
		}
		hold.Stop()
		end := time.Now()
		cur := k.Stop()
		lost := k.Err() != nil
		if cur.Deadline.Before(end) {
			end = cur.Deadline
		}
		value := []byte(fmt.Sprintf("%d %s", cur.Token, cur.Holder))
		cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = cl.CommitRelease(cctx, cur, value, 0)
		ccancel()
		committed := time.Time{}
		if err == nil {
			committed = time.Now()
		}
		// A stale holder: the same commit again, from a copy of the lease
		// whose local deadline is not past (as for a holder paused after
		// its check), so only the server's fence can refuse it.
		var replay error
		if err == nil && i%3 == 0 {
			stale := cur
			stale.Deadline = time.Now().Add(ttl)
			cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
			replay = cl.CommitRelease(cctx, stale, value, 0)
			ccancel()
		}
		ld.mu.Lock()
		if err == nil && i%3 == 0 {
			switch {
			case replay == nil:
				ld.replaysAccepted++
			case errors.Is(replay, claim.ErrLost):
				ld.replaysLost++
			default:
				ld.replaysFailed++
			}
		}
		ld.leases = append(ld.leases, clusterLease{key: key, token: l.Token, holder: l.Holder, worker: w,
			acquired: acquired, end: end, committed: committed, commit: err})
		if lost {
			ld.keeperLosses++
		}
		ld.longestWait = max(ld.longestWait, acquired.Sub(asked))
		switch {
		case err == nil:
			ld.commitsOK++
		case errors.Is(err, claim.ErrLost):
			ld.commitsLost++
		default:
			ld.commitsFailed++
			if len(ld.failures) < 10 {
				ld.failures = append(ld.failures, fmt.Sprintf("worker %d, %s token %d: %v", w, key, l.Token, err))
			}
		}
		ld.mu.Unlock()
		// A pause between claims, so the waiters of a key are not always
		// beaten to it by the holder coming back.
		sleep(run, 10*time.Millisecond)
	}
}

// linLoad is the porcupine workload's shared record: linClient runs in
// rounds of a few seconds, each round on the keys of the current phase
// (fresh keys per fault keep the histories porcupine checks short).
type linLoad struct {
	start   time.Time
	mu      sync.Mutex
	history []porcupine.Operation
	maybes  []int // indexes of operations whose return is unknown
	keys    []string
}

func (ll *linLoad) now() int64 { return int64(time.Since(ll.start)) }

func (ll *linLoad) record(c int, in linIn, call int64, out linOut, known bool) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if !known {
		ll.maybes = append(ll.maybes, len(ll.history))
	}
	ll.history = append(ll.history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ll.now()})
}

func (ll *linLoad) setKeys(keys []string) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	ll.keys = keys
}

func (ll *linLoad) currentKeys() []string {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	return ll.keys
}

// finish gives every operation of unknown outcome the end of the history
// as its return (it may take effect at any time) and returns the history.
func (ll *linLoad) finish() []porcupine.Operation {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	end := ll.now() + 1
	for _, i := range ll.maybes {
		ll.history[i].Return = end
	}
	return ll.history
}

// linRounds runs linClient for client id in rounds of up to two seconds
// until run is done.
func linRounds(run context.Context, ll *linLoad, cl *claim.Client, id int, ttl time.Duration, loose bool) {
	for run.Err() == nil {
		until := time.Now().Add(2 * time.Second)
		if d, ok := run.Deadline(); ok && d.Before(until) {
			until = d
		}
		linClient(cl, id, ll.currentKeys(), ttl, loose, 1<<30, until, ll.now, ll.record)
	}
}

// faultFigures are the measurements of one fault.
type faultFigures struct {
	fault, target string
	newLeader     time.Duration // from the injection until the others agreed on another leader (leader faults; -1: not seen)
	progressed    time.Duration // from the injection until every worker committed a lease acquired after it
	recovered     time.Duration // from the recovery until every worker committed a lease acquired after it
}

// clusterRun starts spec's cluster, runs both workloads through the fault
// schedule (one subtest per fault), then checks the leases for overlaps
// and the history with porcupine, and records the figures.
func clusterRun(t *testing.T, spec clusterSpec) {
	plan := planFor()
	c := spec.start(t)
	if c == nil || t.Failed() {
		t.Fatalf("%s cluster did not start", spec.name)
	}
	n := c.Members()
	ctx := ctxFor(t, 20*time.Minute)
	lctx, lcancel := context.WithTimeout(ctx, 60*time.Second)
	first, err := c.Leader(lctx)
	lcancel()
	if err != nil {
		t.Fatalf("no leader at start: %v", err)
	}
	t.Logf("%d members, leader m%d", n, first)

	// One lease client and one porcupine client per member, each listing
	// the members from its own.
	cls := make([]*claim.Client, n)
	lins := make([]*claim.Client, n)
	for i := range n {
		cls[i] = open(t, c.URL(i))
		lins[i] = open(t, c.URL(i))
	}
	f := cls[0].Features()
	ttl := max(2*time.Second, f.MinTTL)
	linTTL := max(time.Second, f.MinTTL)
	loose := !f.AtomicCommit // as in TestLinearizable
	const perClient = 2
	workers := n * perClient
	keys := []string{key(t, "k0"), key(t, "k1"), key(t, "k2")}
	ld := &leaseLoad{}
	ll := &linLoad{start: time.Now()}
	phaseKeys := func(phase string) []string {
		return []string{key(t, phase+"-lin-a"), key(t, phase+"-lin-b"), key(t, phase+"-lin-c")}
	}
	ll.setKeys(phaseKeys("warm"))
	for i, cl := range lins {
		// Connect before the faults start.
		if _, err := do(func(ctx context.Context) ([]byte, error) { return cl.Get(ctx, keys[0]) }); err != nil && !errors.Is(err, claim.ErrNotFound) {
			t.Fatalf("client %d: %v", i, err)
		}
	}

	run, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() { leaseWorker(run, ld, cls[w/perClient], w, keys, ttl) })
	}
	for i, cl := range lins {
		wg.Go(func() { linRounds(run, ll, cl, i, linTTL, loose) })
	}
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			stop()
			wg.Wait()
		}
	}
	defer halt()

	var figs []faultFigures
	for r := range plan.rounds {
		for _, fl := range clusterFaults {
			name := fl.name
			if plan.rounds > 1 {
				name = fmt.Sprintf("%s-%d", fl.name, r+1)
			}
			ll.setKeys(phaseKeys(name))
			ok := t.Run(name, func(t *testing.T) {
				ff, err := clusterFaultOnce(t, ctx, c, fl, plan, ld, workers)
				if err != nil {
					t.Error(err)
				}
				if ff.fault != "" {
					figs = append(figs, ff)
				}
			})
			if !ok && ctx.Err() != nil {
				break
			}
		}
	}
	halt()

	// The checks over the whole run.
	ld.mu.Lock()
	leases := slices.Clone(ld.leases)
	t.Logf("lease workload: %d leases on %d keys by %d workers: %d committed, %d commits refused (ErrLost), %d commits failed otherwise; %d keepers lost their lease; %d Acquire errors; longest Acquire %v",
		len(leases), len(keys), workers, ld.commitsOK, ld.commitsLost, ld.commitsFailed, ld.keeperLosses, ld.acquireErrs, ld.longestWait.Round(time.Millisecond))
	for _, s := range ld.failures {
		t.Logf("commit failed: %s", s)
	}
	t.Logf("stale commits replayed after a successful CommitRelease: %d refused (ErrLost), %d failed otherwise, %d accepted",
		ld.replaysLost, ld.replaysFailed, ld.replaysAccepted)
	accepted, commitsOK := ld.replaysAccepted, ld.commitsOK
	refused := ld.replaysLost
	ld.mu.Unlock()
	violation := t.Errorf
	if spec.lossy {
		violation = t.Logf
	}
	if accepted > 0 {
		violation("%d stale commits accepted", accepted)
	}
	bad := overlaps(leases)
	for _, s := range bad {
		violation("overlap: %s", s)
	}
	if commitsOK == 0 {
		t.Error("no commit at all")
	}

	history := ll.finish()
	stats := linStats(history)
	res, info, took := linCheck(history)
	t.Logf("porcupine: %d operations (%s) checked in %s: %s", len(history), stats, took, res)
	violations := "0"
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		violations = "history not linearizable"
		path := filepath.Join(os.TempDir(), fmt.Sprintf("stampede-cluster-%s-%d.html", spec.name, time.Now().UnixNano()))
		if err := porcupine.VisualizePath(linModel.ToModel(), info, path); err == nil {
			violation("history not linearizable against the fenced-register model; visualization: %s", path)
		} else {
			violation("history not linearizable against the fenced-register model (visualization failed: %v)", err)
		}
	default:
		violations = "undecided"
		t.Errorf("porcupine could not decide within its time limit (%s); history of %d operations", res, len(history))
	}

	const fig = "cluster"
	figure(t, fig, "leases, overlaps", spec.name, "%d leases, %d commits, %d overlaps", len(leases), commitsOK, len(bad))
	figure(t, fig, "stale replays", spec.name, "%d refused, %d accepted", refused, accepted)
	figure(t, fig, "porcupine", spec.name, "%s violations in %d ops (%s)", violations, len(history), stats)
	// Per fault (over the rounds of the full set: the range).
	for _, fl := range clusterFaults {
		var nl, pr, rc []time.Duration
		for _, ff := range figs {
			if ff.fault == fl.name {
				nl, pr, rc = append(nl, ff.newLeader), append(pr, ff.progressed), append(rc, ff.recovered)
			}
		}
		if len(pr) == 0 {
			continue
		}
		leader := "n/a"
		if fl.leader {
			leader = msRange(nl)
		}
		figure(t, fig, fl.name+": new leader; every worker progressed, from the fault; from the recovery", spec.name,
			"%s; %s; %s", leader, msRange(pr), msRange(rc))
	}
}

// msRange formats durations as "a ms" or "a–b ms" (min–max); a negative
// one (not seen within its bound) as "not seen".
func msRange(ds []time.Duration) string {
	if slices.Min(ds) < 0 {
		return "not seen"
	}
	lo, hi := ms(slices.Min(ds)), ms(slices.Max(ds))
	if lo == hi {
		return lo
	}
	return strings.TrimSuffix(lo, " ms") + "–" + hi
}

// clusterFaultOnce runs one fault while the workloads run: wait plan.warm,
// pick the member (the leader, or a follower), inject the fault, measure
// the time until the others agree on another leader (leader faults), hold
// it for plan.hold, undo it, and wait until every worker has committed a
// lease acquired after the recovery (at least plan.settle, at most
// plan.limit).
func clusterFaultOnce(t *testing.T, ctx context.Context, c cluster, fl clusterFault, plan clusterPlan, ld *leaseLoad, workers int) (faultFigures, error) {
	sleep(ctx, plan.warm)
	lctx, lcancel := context.WithTimeout(ctx, 60*time.Second)
	leader, err := c.Leader(lctx)
	lcancel()
	if err != nil {
		return faultFigures{}, fmt.Errorf("no leader before the fault: %w", err)
	}
	target := leader
	if !fl.leader {
		target = (leader + 1) % c.Members()
	}
	injected := time.Now()
	if err := fl.inject(c, target); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			// Declared by the spec, not a failure; shown as a skip, not
			// as a pass.
			t.Skipf("%s: not built for this backend: %v", fl.name, err)
		}
		return faultFigures{}, fmt.Errorf("%s of m%d: %w", fl.name, target, err)
	}
	ff := faultFigures{fault: fl.name, target: fmt.Sprintf("m%d", target)}
	holdEnd := injected.Add(plan.hold)
	if fl.leader {
		// Until the others agree on another leader; keep looking past the
		// hold, up to the election timeout's tenfold bound, so the figure
		// is measured rather than cut.
		ff.newLeader = -1
		deadline := injected.Add(max(plan.hold, 20*time.Second))
		for time.Now().Before(deadline) && ctx.Err() == nil {
			lctx, lcancel := context.WithTimeout(ctx, time.Until(deadline))
			i, err := c.Leader(lctx)
			lcancel()
			if err == nil && i != target {
				ff.newLeader = time.Since(injected)
				break
			}
			sleep(ctx, 20*time.Millisecond)
		}
	}
	sleep(ctx, time.Until(holdEnd))
	held := time.Since(injected)
	uctx, ucancel := context.WithTimeout(ctx, 90*time.Second)
	err = fl.undo(uctx, c, target)
	ucancel()
	if err != nil {
		return ff, fmt.Errorf("undo %s of m%d: %w", fl.name, target, err)
	}
	recovered := time.Now()
	var after []time.Time
	for {
		after = ld.committedSince(workers, recovered)
		if !slices.ContainsFunc(after, time.Time.IsZero) && time.Since(recovered) >= plan.settle {
			break
		}
		if time.Since(recovered) > plan.limit || ctx.Err() != nil {
			break
		}
		sleep(ctx, 50*time.Millisecond)
	}
	since := ld.committedSince(workers, injected)
	per := make([]string, len(since))
	for w, at := range since {
		per[w] = "-"
		if !at.IsZero() {
			per[w] = at.Sub(injected).Round(time.Millisecond).String()
		}
	}
	t.Logf("per worker, first commit of a lease acquired after the fault: %s", strings.Join(per, " "))
	fails := ld.acquireFailsIn(injected, time.Now())
	for i, f := range fails {
		if i == 5 {
			t.Logf("... %d Acquire errors in all", len(fails))
			break
		}
		t.Logf("Acquire error: worker %d, asked %v after the fault, failed after %v: %v",
			f.worker, f.asked.Sub(injected).Round(time.Millisecond), f.failed.Sub(f.asked).Round(time.Millisecond), f.err)
	}
	var stuck []string
	for w, at := range after {
		if at.IsZero() {
			stuck = append(stuck, fmt.Sprint(w))
			continue
		}
		ff.recovered = max(ff.recovered, at.Sub(recovered))
	}
	for _, at := range since {
		ff.progressed = max(ff.progressed, at.Sub(injected))
	}
	nl := "n/a"
	if fl.leader {
		nl = "not seen within the bound"
		if ff.newLeader > 0 {
			nl = ff.newLeader.Round(time.Millisecond).String()
		}
	}
	t.Logf("%s of m%d (leader m%d) for %v: new leader after %s; every worker progressed %v after the fault, %v after the recovery",
		fl.name, target, leader, held.Round(time.Millisecond), nl, ff.progressed.Round(time.Millisecond), ff.recovered.Round(time.Millisecond))
	if len(stuck) > 0 {
		return ff, fmt.Errorf("workers %s committed nothing acquired after the recovery within %v (stranded)", strings.Join(stuck, ", "), plan.limit)
	}
	return ff, nil
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
