package backendtest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// A FailoverFault is what MeasureFailover does to a replicated backend
// (a primary and its replicas) in each round, and how the backend gets
// over it.
type FailoverFault interface {
	// Inject finds the primary and faults it (kills it, pauses it, cuts
	// it off, ...), and returns a description for the log.
	Inject(ctx context.Context) (string, error)
	// Failover returns once a new primary is serving (promoted by the
	// backend's own means, or by the fault's), and describes it.
	Failover(ctx context.Context) (string, error)
	// Recover brings the faulted node back as a replica of the new
	// primary, and describes it.
	Recover(ctx context.Context) (string, error)
}

// FailoverStats are what MeasureFailover counts over its rounds.
type FailoverStats struct {
	Rounds, Claims, Commits     int
	Overlaps, Regressions, Lost int
	// Per round: from the fault to the new primary; from the fault to
	// the first claim sent after it that was acknowledged.
	Failover, Unavailable []time.Duration
	Examples              []string
}

func (s FailoverStats) String() string {
	med := func(ds []time.Duration) time.Duration {
		ds = slices.Clone(ds)
		slices.SortFunc(ds, cmp.Compare)
		if len(ds) == 0 {
			return 0
		}
		return ds[len(ds)/2].Round(time.Millisecond)
	}
	return fmt.Sprintf("%d rounds: %d claims and %d commits acknowledged; leases lost (overlaps) %d, fence regressions %d, values lost %d; failover (fault to new primary) median %v, max %v; fault to the first claim sent after it acknowledged: median %v",
		s.Rounds, s.Claims, s.Commits, s.Overlaps, s.Regressions, s.Lost, med(s.Failover), slices.Max(append([]time.Duration{0}, s.Failover...)).Round(time.Millisecond), med(s.Unavailable))
}

// TimeOverlaps returns one line per pair of leases of a key whose
// intervals intersect: a second holder granted the key while the first
// still held it by its local deadline (a span's End: when its holder
// stopped counting on it). Tokens are not trusted (a failover may repeat
// them; MeasureFailover counts that apart): spans are compared by time
// only, unlike Overlaps.
func TimeOverlaps(leases []LeaseSpan) []string {
	byKey := map[string][]LeaseSpan{}
	for _, l := range leases {
		byKey[l.Key] = append(byKey[l.Key], l)
	}
	var bad []string
	for key, ls := range byKey {
		slices.SortFunc(ls, func(a, b LeaseSpan) int { return a.Acquired.Compare(b.Acquired) })
		for i := range ls {
			for j := i + 1; j < len(ls) && ls[j].Acquired.Before(ls[i].End); j++ {
				bad = append(bad, fmt.Sprintf("%s: token %d (worker %d) granted %v before token %d (worker %d) ended",
					key, ls[j].Token, ls[j].Worker, ls[i].End.Sub(ls[j].Acquired), ls[i].Token, ls[i].Worker))
			}
		}
	}
	slices.Sort(bad)
	return bad
}

// MeasureFailover runs rounds of: six workers (two per client of clients,
// which should reach the backend through different members) claiming,
// holding (10-150 ms, one claim in ten 4 s of its 5 s TTL), committing a
// sequence number with CommitRelease, on eight keys; the fault, injected
// after 1.5 s while they run; the new primary awaited; the faulted node
// recovered as a replica; two more seconds of work; then it counts
// leases lost (two leases of a key intersecting in time), fence
// regressions (a claim's token at or below a token granted before that
// claim was sent) and values lost (a key whose value after the failover,
// read through clients[0], is older than its last acknowledged commit).
func MeasureFailover(t *testing.T, clients []*claim.Client, rounds int, fault FailoverFault) FailoverStats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rounds)*2*time.Minute)
	defer cancel()
	const keys = 8
	ttl := 5 * time.Second
	var st FailoverStats
	var mu sync.Mutex
	maxTok := map[string]uint64{} // the highest token granted (reply received) per key
	acked := map[string]int64{}   // the highest sequence number committed (acknowledged) per key
	var seq atomic.Int64
	for round := range rounds {
		var leases []LeaseSpan
		var stop atomic.Bool
		var killed atomic.Int64 // UnixNano of the fault, 0 before it
		firstAfter := time.Duration(0)
		var wg sync.WaitGroup
		for w := range 6 {
			cl := clients[w%len(clients)]
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(round), uint64(w)))
				for !stop.Load() {
					key := "k" + strconv.Itoa(rng.IntN(keys))
					mu.Lock()
					before := maxTok[key]
					mu.Unlock()
					sent := time.Now()
					l, err := cl.TryClaim(ctx, key, ttl) // within the client's op timeout
					if err != nil {
						if !errors.Is(err, claim.ErrHeld) {
							time.Sleep(20 * time.Millisecond)
						}
						continue
					}
					got := time.Now()
					mu.Lock()
					st.Claims++
					if l.Token <= before {
						st.Regressions++
						st.Examples = append(st.Examples, fmt.Sprintf("round %d: %s token %d granted after token %d", round, key, l.Token, before))
					}
					maxTok[key] = max(maxTok[key], l.Token)
					if k := killed.Load(); k != 0 && firstAfter == 0 && sent.UnixNano() > k {
						firstAfter = got.Sub(time.Unix(0, k))
					}
					mu.Unlock()
					hold := time.Duration(10+rng.IntN(140)) * time.Millisecond
					if rng.IntN(10) == 0 {
						hold = 4 * time.Second // across a failover
					}
					time.Sleep(hold)
					n := seq.Add(1)
					end := time.Now()
					if l.Deadline.Before(end) {
						end = l.Deadline
					}
					err = cl.CommitRelease(ctx, l, []byte(strconv.FormatInt(n, 10)), 0)
					mu.Lock()
					leases = append(leases, LeaseSpan{Key: key, Token: l.Token, Holder: l.Holder, Worker: w, Acquired: got, End: end})
					if err == nil {
						st.Commits++
						acked[key] = max(acked[key], n)
					}
					mu.Unlock()
				}
			})
		}
		fail := func(err error) {
			stop.Store(true)
			wg.Wait()
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		what, err := fault.Inject(ctx)
		start := time.Now()
		killed.Store(start.UnixNano())
		if err != nil {
			fail(err)
		}
		promoted, err := fault.Failover(ctx)
		failover := time.Since(start)
		if err != nil {
			fail(err)
		}
		rs := time.Now()
		back, err := fault.Recover(ctx)
		if err != nil {
			fail(err)
		}
		t.Logf("round %d: %s, %s after %v; %s after %v more", round, what, promoted, failover.Round(time.Millisecond), back, time.Since(rs).Round(time.Millisecond))
		// The workers go on for two seconds on the new primary.
		time.Sleep(2 * time.Second)
		stop.Store(true)
		wg.Wait()
		// Values: read each key's value from the new primary.
		for k := range keys {
			key := "k" + strconv.Itoa(k)
			v, gerr := clients[0].Get(ctx, key)
			for i := 0; gerr != nil && !errors.Is(gerr, claim.ErrNotFound) && i < 100; i++ {
				time.Sleep(100 * time.Millisecond) // a connection to the dead primary
				v, gerr = clients[0].Get(ctx, key)
			}
			mu.Lock()
			want := acked[key]
			mu.Unlock()
			if want == 0 {
				continue
			}
			n, _ := strconv.ParseInt(string(v), 10, 64)
			if gerr != nil || n < want {
				st.Lost++
				st.Examples = append(st.Examples, fmt.Sprintf("round %d: %s holds %q (%v), last acknowledged commit %d", round, key, v, gerr, want))
			}
		}
		bad := TimeOverlaps(leases)
		st.Overlaps += len(bad)
		for _, b := range bad {
			st.Examples = append(st.Examples, fmt.Sprintf("round %d: %s", round, b))
		}
		st.Rounds++
		st.Failover = append(st.Failover, failover)
		if firstAfter == 0 {
			// Nothing acknowledged while the workers ran (a mode that
			// waits for a replica): claim until a claim is.
			for {
				octx, cancel := context.WithTimeout(ctx, 2*time.Second)
				l, err := clients[0].TryClaim(octx, "probe", time.Second)
				cancel()
				if err == nil {
					firstAfter = time.Since(start)
					_ = clients[0].Release(ctx, l)
					break
				}
				if ctx.Err() != nil {
					t.Fatal(err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		st.Unavailable = append(st.Unavailable, firstAfter)
	}
	return st
}
