package postgres

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/internal/backendtest"
)

// fairChildEnv is the child's number in TestFairProcesses; its other
// settings are STAMPEDE_TEST_FAIR_URL (the Clients' URL, with the
// prefix), STAMPEDE_TEST_FAIR_DB (the audit pool's) and
// STAMPEDE_TEST_FAIR_AUDIT (the audit schema).
const fairChildEnv = "STAMPEDE_TEST_FAIR_CHILD"

// TestFairProcesses: separate OS processes (this test binary run again),
// several Clients in each, take turns on one key with AcquireFair, some
// giving up or dying on the way. Exclusion is checked on the server, not
// in any one process: a holder increments a counter row and must find it
// at 1, and decrements it before it releases; each turn's token goes into
// a log whose order (a serial) must be the tokens' order.
func TestFairProcesses(t *testing.T) {
	if os.Getenv(fairChildEnv) != "" {
		fairChild(t)
		return
	}
	ctx := backendtest.Context(t)
	prefix := "fpr" + randID() + "_"
	u := serverURL(t, "prefix", prefix)
	audit := pgx.Identifier{"fair_audit_" + randID()}.Sanitize()
	p := newPool(t)
	for _, s := range []string{
		`CREATE SCHEMA ` + audit,
		`CREATE TABLE ` + audit + `.inside (n int NOT NULL)`,
		`INSERT INTO ` + audit + `.inside VALUES (0)`,
		`CREATE TABLE ` + audit + `.turns (id bigserial PRIMARY KEY, token bigint NOT NULL, inside int NOT NULL)`,
	} {
		if _, err := p.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _, _ = p.Exec(context.Background(), `DROP SCHEMA `+audit+` CASCADE`) })
	// The tables first, so the children do not race to create them.
	backendtest.Open(t, u)
	const procs = 4
	var wg sync.WaitGroup
	for i := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFairProcesses$", "-test.count=1")
			cmd.Env = append(os.Environ(), fairChildEnv+"="+strconv.Itoa(i), "STAMPEDE_TEST_FAIR_URL="+u, "STAMPEDE_TEST_FAIR_AUDIT="+audit, "STAMPEDE_TEST_FAIR_DB="+serverURL(t))
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("child %d: %v\n%s", i, err, out)
			}
		}()
	}
	wg.Wait()
	rows, err := p.Query(ctx, `SELECT token, inside FROM `+audit+`.turns ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (uint64, error) {
		var tok uint64
		var in int
		err := r.Scan(&tok, &in)
		if err == nil && in != 1 {
			err = fmt.Errorf("token %d: %d holders at once", tok, in)
		}
		return tok, err
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("turn %d: token %d <= the previous turn's %d", i, tokens[i], tokens[i-1])
		}
	}
	if len(tokens) < procs*fairChildClients*fairChildRounds/2 {
		t.Errorf("%d turns in all, want most of %d", len(tokens), procs*fairChildClients*fairChildRounds)
	}
	t.Logf("%d processes, %d turns", procs, len(tokens))
}

const fairChildClients, fairChildRounds = 3, 6

// fairChild is one process of TestFairProcesses.
func fairChild(t *testing.T) {
	ctx := backendtest.Context(t)
	u, audit := os.Getenv("STAMPEDE_TEST_FAIR_URL"), os.Getenv("STAMPEDE_TEST_FAIR_AUDIT")
	n, _ := strconv.Atoi(os.Getenv(fairChildEnv))
	p := newPoolURL(t, os.Getenv("STAMPEDE_TEST_FAIR_DB"))
	const ttl, dieTTL = 5 * time.Second, time.Second
	var wg sync.WaitGroup
	for ci := range fairChildClients {
		c := backendtest.Open(t, u)
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(n), uint64(ci)))
			for r := range fairChildRounds {
				actx, cancel := ctx, context.CancelFunc(func() {})
				if rng.IntN(8) == 0 {
					actx, cancel = context.WithTimeout(ctx, time.Duration(1+rng.IntN(30))*time.Millisecond)
				}
				die := rng.IntN(12) == 0
				lttl := ttl
				if die {
					lttl = dieTTL
				}
				l, err := c.AcquireFair(actx, "k", lttl)
				dl, timed := actx.Deadline()
				gaveUp := actx.Err() != nil || timed && !time.Now().Before(dl)
				cancel()
				if err != nil {
					if gaveUp && errors.Is(err, context.DeadlineExceeded) {
						continue
					}
					t.Errorf("process %d client %d round %d: AcquireFair: %v", n, ci, r, err)
					return
				}
				if _, err := p.Exec(ctx, `WITH i AS (UPDATE `+audit+`.inside SET n = n + 1 RETURNING n)
INSERT INTO `+audit+`.turns (token, inside) SELECT $1, n FROM i`, int64(l.Token)); err != nil {
					t.Errorf("audit: %v", err)
					return
				}
				time.Sleep(time.Duration(rng.IntN(2000)) * time.Microsecond)
				if _, err := p.Exec(ctx, `UPDATE `+audit+`.inside SET n = n - 1`); err != nil {
					t.Errorf("audit: %v", err)
					return
				}
				if die {
					continue // its lease runs out; a waiter takes over
				}
				if err := c.Release(ctx, l); err != nil {
					t.Errorf("Release: %v", err)
				}
			}
		}()
	}
	wg.Wait()
}

// newPoolURL returns a pool on u, closed at cleanup.
func newPoolURL(t testing.TB, u string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
