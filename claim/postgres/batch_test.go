package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
)

// requestCounter counts the requests a client sends on its connections:
// the frontend messages after which it waits for the server's
// ReadyForQuery, Sync (extended protocol, pipelines included) and Query
// (simple protocol). One request is one round trip.
type requestCounter struct{ n atomic.Int64 }

// afterNetConnect is a pgconn.Config.AfterNetConnect that counts what
// each connection sends (after TLS, if any).
func (rc *requestCounter) afterNetConnect(_ context.Context, _ *pgconn.Config, c net.Conn) (net.Conn, error) {
	return &countingConn{Conn: c, rc: rc}, nil
}

// countingConn parses the frontend message stream it writes: first the
// untyped startup message (length, then body), then messages of a type
// byte, a length (itself included) and a body.
type countingConn struct {
	net.Conn
	rc      *requestCounter
	started bool   // the startup message is behind
	hdr     []byte // the next message's header, as far as written
	skip    int    // bytes of the current message's body still to come
}

// NetConn lets ShouldPing look at the socket.
func (c *countingConn) NetConn() net.Conn { return c.Conn }

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	for q := p[:n]; len(q) > 0; {
		if c.skip > 0 {
			k := min(c.skip, len(q))
			c.skip, q = c.skip-k, q[k:]
			continue
		}
		size := 5
		if !c.started {
			size = 4
		}
		k := min(size-len(c.hdr), len(q))
		c.hdr, q = append(c.hdr, q[:k]...), q[k:]
		if len(c.hdr) < size {
			break
		}
		if !c.started {
			c.started = true
			c.skip = int(binary.BigEndian.Uint32(c.hdr)) - 4
		} else {
			if c.hdr[0] == 'S' || c.hdr[0] == 'Q' {
				c.rc.n.Add(1)
			}
			c.skip = int(binary.BigEndian.Uint32(c.hdr[1:])) - 4
		}
		c.hdr = c.hdr[:0]
	}
	return n, err
}

// TestBatchRoundTrips counts the requests each batch call sends on the
// wire: one, whatever the number of keys, once the statements are
// prepared on the connection (pgx prepares a statement the first time a
// connection runs it, one request more). CommitReleaseMany in many
// statements (values over chunkBytes) is still one pipeline, and Revoke,
// two statements, one request.
func TestBatchRoundTrips(t *testing.T) {
	ctx := backendtest.Context(t)
	var rc requestCounter
	cfg, err := pgxpool.ParseConfig(serverURL(t, "pool_max_conns", "1"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.AfterNetConnect = rc.afterNetConnect
	cfg.ShouldPing = ShouldPing // no ping after a second idle
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	c, err := New(pool, &Options{TablePrefix: "rt" + randID() + "_", SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	d := c.Driver().(*backend)
	cost := func(what string, n int, f func() error) int64 {
		t.Helper()
		before := rc.n.Load()
		if err := f(); err != nil {
			t.Fatalf("%s of %d keys: %v", what, n, err)
		}
		return rc.n.Load() - before
	}
	for round, n := range []int{1, 4, 300} {
		if n == 300 {
			d.chunkBytes = 64 // 21 values of 3 bytes a statement: 15 statements
		}
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("r%d/%d", round, i)
		}
		costs := map[string]int64{}
		var got []claim.Claimed
		costs["TryClaimMany"] = cost("TryClaimMany", n, func() (err error) {
			got, err = c.TryClaimMany(ctx, keys, time.Hour)
			return err
		})
		commits := make([]claim.Commit, n)
		for i, g := range got {
			if g.Err != nil {
				t.Fatalf("TryClaimMany: key %d: %v", i, g.Err)
			}
			commits[i] = claim.Commit{Lease: g.Lease, Value: []byte{'v', byte(i), byte(i >> 8)}, TTL: time.Hour}
		}
		costs["CommitReleaseMany"] = cost("CommitReleaseMany", n, func() error {
			errs, err := c.CommitReleaseMany(ctx, commits)
			if err == nil {
				err = errors.Join(errs...)
			}
			return err
		})
		costs["GetMany"] = cost("GetMany", n, func() error {
			vals, err := c.GetMany(ctx, keys)
			for i, v := range vals {
				if !bytes.Equal(v, commits[i].Value) {
					return fmt.Errorf("key %d: %q, want %q", i, v, commits[i].Value)
				}
			}
			return err
		})
		costs["Revoke"] = cost("Revoke", 1, func() error { return c.Revoke(ctx, keys[0]) })
		for what, k := range costs {
			if round == 0 && k > 2 || round > 0 && k != 1 {
				t.Errorf("%s of %d keys: %d requests, want 1 (2 the first time)", what, n, k)
			}
		}
	}
}

// TestRevokeWaitsForCommit: a Commit in progress (its transaction holds
// the claim row's lock and has written the value, not yet committed) when
// Revoke starts. Revoke waits for it, and then its value is the one
// replaced: Revoke deletes it, RevokeSet overwrites it. (A single
// statement would read the values table with the snapshot it started
// with, before the Commit's new row, and leave it.)
func TestRevokeWaitsForCommit(t *testing.T) {
	for _, set := range []bool{false, true} {
		t.Run(fmt.Sprintf("set=%v", set), func(t *testing.T) {
			ctx := backendtest.Context(t)
			prefix := "rw" + randID() + "_"
			c, d := newClient(t, nil, "prefix", prefix)
			l := backendtest.Claim(t, c, "k", time.Hour)
			tx, tag := openStatement(ctx, t, d, d.q.commit, d.keys.Encode("k"), []byte("stale"), int64(0), int64(l.Token), l.Holder)
			if tag.RowsAffected() != 1 {
				t.Fatalf("commit in a transaction changed %d rows", tag.RowsAffected())
			}
			done := make(chan error, 1)
			go func() {
				if set {
					done <- c.RevokeSet(ctx, "k", []byte("new"), 0)
				} else {
					done <- c.Revoke(ctx, "k")
				}
			}()
			awaitLockWait(ctx, t, d, "WITH r AS (", prefix, done)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			v, err := c.Get(ctx, "k")
			if set && (err != nil || string(v) != "new") || !set && !errors.Is(err, claim.ErrNotFound) {
				t.Errorf("Get after Revoke (set %v) that waited for a Commit: %q, %v", set, v, err)
			}
			if err := c.Commit(ctx, l, []byte("stale"), 0); !errors.Is(err, claim.ErrLost) {
				t.Errorf("Commit of the revoked lease: %v, want ErrLost", err)
			}
		})
	}
}

// openStatement runs one of d's statements in a transaction it leaves
// open (holding the statement's locks), rolled back when the test ends.
func openStatement(ctx context.Context, t *testing.T, d *backend, sql string, args ...any) (pgx.Tx, pgconn.CommandTag) {
	t.Helper()
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	tag, err := tx.Exec(ctx, sql, args...)
	if err != nil {
		t.Fatalf("a statement in a transaction: %v", err)
	}
	return tx, tag
}

// awaitLockWait returns once a statement starting with start, on the
// tables of prefix, waits for a row lock; it fails the test if done
// receives first.
func awaitLockWait(ctx context.Context, t *testing.T, d *backend, start, prefix string, done <-chan error) {
	t.Helper()
	for {
		var n int
		err := d.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
WHERE wait_event_type = 'Lock' AND starts_with(query, $1) AND strpos(query, $2) > 0`, start, prefix+"claims").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("the statement did not wait for the row lock: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestBatchesNoDeadlock: batches over the same keys, each in its own
// order, claimed (TryClaimMany locks every row it tries, held or not)
// and committed (CommitReleaseMany) from several Clients at once. Both
// lock rows in key order, so none waits for another in a cycle: no
// deadlock error (40P01) from any call, every key granted to one
// holder at a time, and each lease granted commits.
func TestBatchesNoDeadlock(t *testing.T) {
	ctx := backendtest.Context(t)
	prefix := "dl" + randID() + "_"
	const workers, rounds, nkeys = 4, 15, 24
	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%02d", i)
	}
	var (
		mu      sync.Mutex
		holding = map[string]int{} // key -> worker holding it
		granted atomic.Int64
		wg      sync.WaitGroup
	)
	for w := range workers {
		c, _ := newClient(t, nil, "prefix", prefix)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range rounds {
				order := append([]string(nil), keys...)
				r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
				got, err := c.TryClaimMany(ctx, order[:nkeys/2], time.Minute)
				if err != nil {
					t.Errorf("TryClaimMany: %v", err)
					return
				}
				var commits []claim.Commit
				mu.Lock()
				for _, g := range got {
					if g.Err != nil {
						if !errors.Is(g.Err, claim.ErrHeld) {
							t.Errorf("TryClaimMany: %v", g.Err)
						}
						continue
					}
					if o, ok := holding[g.Lease.Key]; ok {
						t.Errorf("%s granted to worker %d while worker %d holds it", g.Lease.Key, w, o)
					}
					holding[g.Lease.Key] = w
					commits = append(commits, claim.Commit{Lease: g.Lease, Value: []byte("v")})
				}
				granted.Add(int64(len(commits)))
				r.Shuffle(len(commits), func(i, j int) { commits[i], commits[j] = commits[j], commits[i] })
				for _, cm := range commits {
					delete(holding, cm.Lease.Key)
				}
				mu.Unlock()
				if len(commits) == 0 {
					continue
				}
				errs, err := c.CommitReleaseMany(ctx, commits)
				if err == nil {
					err = errors.Join(errs...)
				}
				if err != nil {
					t.Errorf("CommitReleaseMany: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if granted.Load() == 0 {
		t.Error("no key was ever granted")
	}
}

// TestBatchExecModes: the batch calls and Revoke (a pipeline) in each of
// pgx's query modes, including those a transaction-pooling PgBouncer
// needs (exec, simple_protocol: the pipeline becomes one multi-statement
// query, still one transaction).
func TestBatchExecModes(t *testing.T) {
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			ctx := backendtest.Context(t)
			c, _ := newClient(t, nil, "prefix", "em"+randID()+"_", "default_query_exec_mode", mode)
			keys := []string{"a", "b", "c"}
			if err := c.Set(ctx, "b", []byte{0, 'B', 0xff}, time.Hour); err != nil {
				t.Fatal(err)
			}
			got, err := c.TryClaimMany(ctx, keys, time.Hour)
			if err != nil {
				t.Fatalf("TryClaimMany: %v", err)
			}
			commits := make([]claim.Commit, len(keys))
			for i, g := range got {
				if g.Err != nil {
					t.Fatalf("TryClaimMany: %s: %v", keys[i], g.Err)
				}
				if want := keys[i] == "b"; g.Found != want || want && !bytes.Equal(g.Value, []byte{0, 'B', 0xff}) {
					t.Errorf("TryClaimMany: %s: value %q, found %v", keys[i], g.Value, g.Found)
				}
				commits[i] = claim.Commit{Lease: g.Lease, Value: []byte{byte(i), '\'', 0}, TTL: time.Hour}
			}
			if errs, err := c.CommitReleaseMany(ctx, commits); err != nil || errors.Join(errs...) != nil {
				t.Fatalf("CommitReleaseMany: %v, %v", errs, err)
			}
			l := backendtest.Claim(t, c, "a", time.Hour)
			if err := c.RevokeSet(ctx, "a", []byte("'x\\"), 0); err != nil {
				t.Fatalf("RevokeSet: %v", err)
			}
			if err := c.Revoke(ctx, "c"); err != nil {
				t.Fatalf("Revoke: %v", err)
			}
			vals, err := c.GetMany(ctx, keys)
			if err != nil {
				t.Fatalf("GetMany: %v", err)
			}
			if want := [][]byte{[]byte("'x\\"), commits[1].Value, nil}; fmt.Sprint(vals) != fmt.Sprint(want) {
				t.Errorf("GetMany = %q, want %q", vals, want)
			}
			if err := c.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
				t.Errorf("Release of a revoked lease: %v, want ErrLost", err)
			}
		})
	}
}
