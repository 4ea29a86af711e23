package memcache

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// wire counts what a gomemcache client sends: connections dialled, and
// commands by verb. gomemcache flushes each command in one write (a small
// value's storage command included), so the first word of a write is a
// command's verb.
type wire struct {
	mu    sync.Mutex
	dials int
	verbs map[string]int
}

func (w *wire) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		w.mu.Lock()
		w.dials++
		w.mu.Unlock()
	}
	return countConn{conn, w}, err
}

// reset forgets the commands counted so far (not the dials).
func (w *wire) reset() {
	w.mu.Lock()
	w.verbs = map[string]int{}
	w.mu.Unlock()
}

func (w *wire) count(verb string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.verbs[verb]
}

type countConn struct {
	net.Conn
	w *wire
}

func (c countConn) Write(p []byte) (int, error) {
	verb, _, _ := bytes.Cut(p, []byte(" "))
	c.w.mu.Lock()
	c.w.verbs[string(bytes.TrimSpace(verb))]++
	c.w.mu.Unlock()
	return c.Conn.Write(p)
}

// TestBatchRequests: each batch reads with one multi-get (one gets
// command to the one server) whatever its size, and never has more
// requests in flight than the pool keeps connections: a batch of ten
// times max_idle_conns keys dials no more than max_idle_conns
// connections in all.
func TestBatchRequests(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := backendtest.Context(t)
	const idle = 4
	w := &wire{verbs: map[string]int{}}
	mc := gomemcache.New(srv.Addr())
	mc.MaxIdleConns = idle
	mc.DialContext = w.dial
	defer mc.Close()
	// Poll loops that never poll, so that only the batches send gets.
	c, err := New(mc, &Options{PollMin: time.Hour, PollMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	base := securitytest.Unique(t)
	for _, n := range []int{3, 10 * idle} {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("%sbatch-%d-%d", base, n, i)
		}
		if err := c.Set(ctx, keys[0], []byte("v0"), time.Minute); err != nil {
			t.Fatal(err)
		}
		gets := func(op string) {
			t.Helper()
			if got := w.count("gets"); got != 1 {
				t.Errorf("%s of %d keys: %d gets commands, want 1", op, n, got)
			}
			w.reset()
		}
		w.reset()
		vals, err := c.GetMany(ctx, keys)
		if err != nil {
			t.Fatal(err)
		}
		if string(vals[0]) != "v0" || vals[n-1] != nil {
			t.Errorf("GetMany = %q...%q, want v0...nil", vals[0], vals[n-1])
		}
		gets("GetMany")
		res, err := c.TryClaimMany(ctx, keys, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		commits := make([]claim.Commit, n)
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("TryClaimMany: key %d: %v", i, r.Err)
			}
			commits[i] = claim.Commit{Lease: r.Lease, Value: []byte("x"), TTL: time.Minute}
		}
		if !res[0].Found || string(res[0].Value) != "v0" || res[n-1].Found {
			t.Errorf("TryClaimMany read %q (found %v) and found %v, want v0 and nothing", res[0].Value, res[0].Found, res[n-1].Found)
		}
		gets("TryClaimMany")
		errs, err := c.CommitReleaseMany(ctx, commits)
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("CommitReleaseMany: key %d: %v", i, err)
			}
		}
		gets("CommitReleaseMany")
		subs, err := c.SubscribeMany(ctx, keys)
		if err != nil {
			t.Fatal(err)
		}
		gets("SubscribeMany")
		for _, s := range subs {
			s.Close()
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.dials > idle {
		t.Errorf("%d connections dialled, want at most max_idle_conns (%d)", w.dials, idle)
	}
}
