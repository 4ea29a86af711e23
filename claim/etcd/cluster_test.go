package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// clusterLease is one lease a worker of TestClusterLeaderKill held, on the
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
	commit        error // CommitRelease's result
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

// TestClusterLeaderKill runs claims on a 3-member cluster from three
// clients (each opened with all three endpoints), SIGKILLs the leader in
// the middle and restarts it later. Every lease is checked for overlap
// with the next ones on its key (one monotonic clock: all clients are in
// this process), and etcd's own history is replayed to check that every
// value committed was committed by the lease current at that revision.
// Every worker must make progress after the kill.
func TestClusterLeaderKill(t *testing.T) {
	const (
		clients   = 3
		perClient = 2
		ttl       = 2 * time.Second
		before    = 3 * time.Second  // running before the kill
		down      = 4 * time.Second  // leader down
		after     = 2 * time.Second  // at least, after the restart
		limit     = 12 * time.Second // at most, after the restart
		prefix    = "cluster"
	)
	keys := []string{"k0", "k1", "k2"}
	c := testserver.RequireEtcdCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 35*time.Second)
	defer cancel()
	eps := c.Endpoints()
	raw := userClient(t, clientv3.Config{Endpoints: eps})
	r, err := raw.Get(ctx, "\x00")
	if err != nil {
		t.Fatal(err)
	}
	startRev := r.Header.Revision

	cls := make([]*claim.Client, clients)
	for i := range cls {
		// Each client lists the members starting with another one.
		rot := testserver.Rotated(eps, i)
		cls[i] = backendtest.Open(t, "etcd://"+strings.Join(rot, ",")+"?prefix="+prefix+"&dial_timeout=2s")
	}
	b := drv(cls[0])

	var (
		mu     sync.Mutex
		leases []clusterLease
		killAt time.Time // zero until the kill
		// counts
		acquireErrs, keeperLosses, commitsOK, commitsLost, commitsFailed int
		replaysLost, replaysFailed, replaysAccepted                      int
		failures                                                         []string // CommitRelease errors other than ErrLost
		postKill                                                         = make([]int, clients*perClient)
	)
	run, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	for w := range clients * perClient {
		cl := cls[w/perClient]
		wg.Go(func() {
			for i := 0; run.Err() == nil; i++ {
				key := keys[(w+i)%len(keys)]
				actx, acancel := context.WithTimeout(run, 10*time.Second)
				l, err := cl.Acquire(actx, key, ttl)
				acquired := time.Now()
				acancel()
				if err != nil {
					if run.Err() != nil {
						return
					}
					mu.Lock()
					acquireErrs++
					mu.Unlock()
					time.Sleep(20 * time.Millisecond)
					continue
				}
				k := cl.KeepAlive(run, l, nil)
				// Short critical sections; every second worker holds for
				// 150 to 900 ms, so that some renewals span the failover.
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
				sent := time.Now()
				err = cl.CommitRelease(cctx, cur, value, 0)
				took := time.Since(sent)
				ccancel()
				// A stale holder: the same commit again, from a copy of
				// the lease whose local deadline is not past (as for a
				// holder paused after its check), so only the server's
				// fence can refuse it.
				var replay error
				if err == nil && i%3 == 0 {
					stale := cur
					stale.Deadline = time.Now().Add(ttl)
					cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
					replay = cl.CommitRelease(cctx, stale, value, 0)
					ccancel()
				}
				mu.Lock()
				if err == nil && i%3 == 0 {
					switch {
					case replay == nil:
						replaysAccepted++
					case errors.Is(replay, claim.ErrLost):
						replaysLost++
					default:
						replaysFailed++
					}
				}
				leases = append(leases, clusterLease{key: key, token: l.Token, holder: l.Holder, worker: w, acquired: acquired, end: end, commit: err})
				if lost {
					keeperLosses++
				}
				switch {
				case err == nil:
					commitsOK++
					if !killAt.IsZero() && acquired.After(killAt) {
						postKill[w]++
					}
				case errors.Is(err, claim.ErrLost):
					commitsLost++
				default:
					commitsFailed++
					failures = append(failures, fmt.Sprintf("worker %d, %s token %d, sent %v after the kill, failed after %v: %v",
						w, key, l.Token, sent.Sub(killAt).Round(time.Millisecond), took.Round(time.Millisecond), err))
				}
				mu.Unlock()
				// A pause between claims, so the waiters of a key are
				// not always beaten to it by the holder coming back.
				sleep(run, 10*time.Millisecond)
			}
		})
	}
	progressed := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return !slices.Contains(postKill, 0)
	}

	sleep(run, before)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		stop()
		wg.Wait()
		t.Fatal(err)
	}
	mu.Lock()
	killAt = time.Now()
	mu.Unlock()
	if err := c.Member(leader).Kill(); err != nil {
		stop()
		wg.Wait()
		t.Fatal(err)
	}
	next, err := c.WaitLeader(ctx)
	if err != nil {
		t.Errorf("no new leader after the kill: %v", err)
	}
	elected := time.Since(killAt)
	sleep(run, down-elected)
	if err := c.Member(leader).Restart(ctx); err != nil {
		stop()
		wg.Wait()
		t.Fatal(err)
	}
	restarted := time.Now()
	for time.Since(restarted) < after || !progressed() {
		if time.Since(restarted) > limit || run.Err() != nil {
			break
		}
		sleep(run, 100*time.Millisecond)
	}
	stop()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	t.Logf("leader m%d killed, m%d elected within %v, m%d restarted %v after the kill; ran %v after the restart",
		leader, next, elected.Round(time.Millisecond), leader, restarted.Sub(killAt).Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
	t.Logf("%d leases on %d keys: %d committed, %d commits refused (ErrLost), %d commits failed otherwise; %d keepers lost their lease; %d Acquire errors; commits after the kill per worker %v",
		len(leases), len(keys), commitsOK, commitsLost, commitsFailed, keeperLosses, acquireErrs, postKill)

	for _, f := range failures {
		t.Logf("commit failed: %s", f)
	}
	t.Logf("stale commits replayed after a successful CommitRelease: %d refused (ErrLost), %d failed otherwise, %d accepted",
		replaysLost, replaysFailed, replaysAccepted)
	if replaysAccepted > 0 {
		t.Errorf("%d stale commits accepted", replaysAccepted)
	}
	bad := overlaps(leases)
	for _, s := range bad {
		t.Error("overlap: " + s)
	}
	for w, n := range postKill {
		if n == 0 {
			t.Errorf("worker %d committed nothing acquired after the kill", w)
		}
	}
	if commitsOK == 0 {
		t.Fatal("no commit at all")
	}

	// etcd's history of the run, replayed: every value put must be made
	// while its lease's lock key (token = CreateRevision, holder) is the
	// current one.
	end, err := raw.Put(ctx, "zz-end", "")
	if err != nil {
		t.Fatal(err)
	}
	type grant struct {
		token  int64
		holder string
	}
	lockOf, valueOf := map[string]string{}, map[string]string{}
	for _, k := range keys {
		lockOf[b.lockKey(k)], valueOf[b.valueKey(k)] = k, k
	}
	current := map[string]grant{}             // key -> live lock key
	granted := map[string]map[uint64]string{} // key -> token -> holder
	committed := map[string]map[uint64]bool{}
	for _, k := range keys {
		granted[k], committed[k] = map[uint64]string{}, map[uint64]bool{}
	}
	events, stale := 0, 0
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	wch := raw.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(startRev+1))
	done := false
	for resp := range wch {
		if err := resp.Err(); err != nil {
			t.Fatalf("history: %v", err)
		}
		for _, ev := range resp.Events {
			events++
			kv := ev.Kv
			if k, ok := lockOf[string(kv.Key)]; ok {
				switch {
				case ev.Type == mvccpb.DELETE:
					delete(current, k)
				case ev.IsCreate():
					current[k] = grant{kv.CreateRevision, string(kv.Value)}
					granted[k][uint64(kv.CreateRevision)] = string(kv.Value)
				}
			}
			if k, ok := valueOf[string(kv.Key)]; ok && ev.Type == mvccpb.PUT {
				v, err := decodeValue([]*mvccpb.KeyValue{kv}, time.Now())
				tok, holder, _ := strings.Cut(string(v), " ")
				n, perr := strconv.ParseInt(tok, 10, 64)
				if err != nil || perr != nil {
					t.Errorf("history: value of %s at revision %d: %q, %v", k, kv.ModRevision, v, err)
					continue
				}
				committed[k][uint64(n)] = true
				if g, ok := current[k]; !ok || g.token != n || g.holder != holder {
					stale++
					t.Errorf("history: %s committed at revision %d by token %d, while the current lease is %+v (present %v)", k, kv.ModRevision, n, g, ok)
				}
			}
			if kv.ModRevision >= end.Header.Revision {
				done = true
			}
		}
		if done {
			break
		}
	}
	if !done {
		t.Fatalf("history: watch ended before revision %d: %v", end.Header.Revision, wctx.Err())
	}
	wcancel()
	// What the clients saw against what etcd recorded.
	for _, l := range leases {
		switch {
		case granted[l.key][l.token] != l.holder:
			t.Errorf("%s: token %d (worker %d) not granted to its holder in etcd's history", l.key, l.token, l.worker)
		case l.commit == nil && !committed[l.key][l.token]:
			t.Errorf("%s: token %d: CommitRelease succeeded but no value in etcd's history", l.key, l.token)
		case errors.Is(l.commit, claim.ErrLost) && committed[l.key][l.token]:
			t.Errorf("%s: token %d: CommitRelease returned ErrLost but its value was written", l.key, l.token)
		}
	}
	n := 0
	for _, k := range keys {
		n += len(granted[k])
	}
	t.Logf("history: %d events from revision %d to %d, %d grants, %d overlaps, %d commits by a lease not current",
		events, startRev+1, end.Header.Revision, n, len(bad), stale)
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
