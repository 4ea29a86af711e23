//go:build unix

package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// pairFault is backendtest.MeasureFailover's fault on a primary and its
// streaming standby: kill (SIGKILL of the primary) or lag (the standby
// SIGSTOPped while the primary takes 64 MiB of filler values, more WAL
// than the loopback socket buffers hold (tcp_rmem up to 32 MiB here), and a second of the workers'
// writes; then SIGKILL of the primary and SIGCONT of the standby); then
// the standby is promoted, as a failover manager would, and the old
// primary rebuilt as its standby.
type pairFault struct {
	p      *testserver.PostgresPair
	kind   string
	filler *claim.Client
	old    int
}

func (f *pairFault) Inject(ctx context.Context) (string, error) {
	f.old = f.p.Primary()
	if f.kind == "lag" {
		// A write first, so that the filler's pool holds a connection to
		// the primary: a new one would try the paused standby first
		// (both hosts are in the URL) and wait out its connect timeout.
		if err := f.filler.Set(ctx, "filler", []byte("warm"), time.Minute); err != nil {
			return "", err
		}
		if err := f.p.Pause(1 - f.old); err != nil {
			return "", err
		}
		// Incompressible (TOAST compresses), so the WAL is as large.
		big := make([]byte, 1<<20)
		rand.NewChaCha8([32]byte{}).Read(big)
		var err error
		// With sync the commits wait for the paused standby: the first
		// waits out this bound. Without, 64 MiB may take a while on a
		// loaded machine (a CI run with other tests running took more
		// than 3 s): a bound that only catches a hang.
		d := time.Minute
		if f.p.Sync() {
			d = 3 * time.Second
		}
		fctx, cancel := context.WithTimeout(ctx, d)
		for i := 0; i < 64 && err == nil; i++ {
			err = f.filler.Set(fctx, "filler"+strconv.Itoa(i), big, time.Minute)
		}
		cancel()
		if f.p.Sync() {
			err = nil // the first Set waits until it times out: nothing is acknowledged
		}
		time.Sleep(time.Second)
		err = errors.Join(err, f.p.Kill(f.old), f.p.Resume(1-f.old))
		return fmt.Sprintf("standby paused, filled, primary %d killed, standby resumed", f.old), err
	}
	return fmt.Sprintf("primary %d killed", f.old), f.p.Kill(f.old)
}

func (f *pairFault) Failover(ctx context.Context) (string, error) {
	return fmt.Sprintf("%d promoted", 1-f.old), f.p.Promote(ctx, 1-f.old)
}

func (f *pairFault) Recover(ctx context.Context) (string, error) {
	return fmt.Sprintf("node %d rebuilt as a standby", f.old), f.p.Rebuild(ctx, f.old)
}

// TestFailoverLoss measures what a failover of a primary and a streaming
// standby loses (backendtest.MeasureFailover: six workers claiming and
// committing through three clients whose URL names both nodes with
// target_session_attrs=read-write), with asynchronous replication
// (PostgreSQL's default) and with synchronous replication (the standby
// named in synchronous_standby_names, synchronous_commit on: what
// docs/postgres.md recommends), after: SIGKILL of the primary (kill); the
// standby SIGSTOPped while the primary takes 64 MiB of filler and a
// second of writes, then SIGKILL of the primary (lag). Asynchronous replication is expected to lose what the standby
// had not received and is only measured (logged); synchronous must lose
// nothing: every acknowledged claim and commit was flushed on the
// standby before the client heard of it. One round each by default;
// STAMPEDE_CHAOS=1 runs six.
func TestFailoverLoss(t *testing.T) {
	rounds := 1
	if os.Getenv("STAMPEDE_CHAOS") == "1" {
		rounds = 6
	}
	for _, fault := range []string{"kill", "lag"} {
		for _, mode := range []struct {
			name string
			sync bool
		}{{"async", false}, {"sync", true}} {
			t.Run(fault+"/"+mode.name, func(t *testing.T) {
				p := testserver.RequirePostgresPair(t, mode.sync)
				var clients []*claim.Client
				for range 3 {
					clients = append(clients, backendtest.Open(t, p.URL()))
				}
				filler := backendtest.Open(t, p.URL())
				st := backendtest.MeasureFailover(t, clients, rounds, &pairFault{p: p, kind: fault, filler: filler})
				t.Logf("%s, %s: %v", fault, mode.name, st)
				for _, e := range st.Examples {
					t.Logf("  %s", e)
				}
				if mode.sync && st.Overlaps+st.Regressions+st.Lost > 0 {
					t.Errorf("synchronous replication lost leases, tokens or values: %v", st)
				}
				if st.Claims == 0 || st.Commits == 0 {
					t.Errorf("no progress: %v", st)
				}
			})
		}
	}
}
