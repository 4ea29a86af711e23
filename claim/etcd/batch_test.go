package etcd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// serverCalls returns how many gRPC calls (a unary request, or a stream)
// the etcd server at srv has started, by method: its
// grpc_server_started_total counters.
func serverCalls(t *testing.T, srv *testserver.Server) map[string]int {
	t.Helper()
	resp, err := http.Get("http://" + srv.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	calls := map[string]int{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "grpc_server_started_total{")
		if !ok {
			continue
		}
		labels, value, ok := strings.Cut(line, "} ")
		_, method, ok2 := strings.Cut(labels, `grpc_method="`)
		method, _, ok3 := strings.Cut(method, `"`)
		n, err := strconv.ParseFloat(value, 64)
		if !ok || !ok2 || !ok3 || err != nil {
			t.Fatalf("unexpected metrics line %q", sc.Text())
		}
		calls[method] = int(n)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(calls) == 0 {
		t.Fatal("no grpc_server_started_total in etcd's /metrics")
	}
	return calls
}

// TestBatchRoundTrips: each Batcher method costs the same gRPC calls on
// the server for 3 keys as for a full batch (maxBatch), counted by the
// server itself on a server of the test's own: GetMany and
// CommitReleaseMany one transaction, TryClaimMany one lease grant and one
// transaction (and one TimeToLive per distinct holder lease when keys are
// held), SubscribeMany at most one watch stream; Revoke one transaction.
// Values too large for one request together are split into transactions
// that fit. Background lease revocations (revokeLater) are not counted:
// they are off the caller's path and land at any time.
func TestBatchRoundTrips(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Etcd, nil)
	c := backendtest.Open(t, withPrefix(t, srv, "roundtrips"))
	ctx := context.Background()
	ttl := 30 * time.Second
	// The shared value and notify leases of these TTL classes, granted
	// once per process, before counting.
	if err := c.Set(ctx, "warm", []byte("v"), ttl); err != nil {
		t.Fatal(err)
	}
	if err := c.Notify(ctx, "warm"); err != nil {
		t.Fatal(err)
	}
	calls := func(what string, want map[string]int, f func() error) {
		t.Helper()
		before := serverCalls(t, srv)
		if err := f(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := serverCalls(t, srv)
		for m, n := range got {
			got[m] = n - before[m]
			if got[m] == 0 || m == "LeaseRevoke" {
				delete(got, m)
			}
		}
		if !maps.Equal(got, want) {
			t.Errorf("%s: server calls %v, want %v", what, got, want)
		}
	}
	for _, n := range []int{3, maxBatch} {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("n%d/k%d", n, i)
		}
		var vals [][]byte
		calls(fmt.Sprint("GetMany of ", n), map[string]int{"Txn": 1}, func() (err error) {
			vals, err = c.GetMany(ctx, keys)
			return err
		})
		if len(vals) != n {
			t.Fatalf("GetMany: %d values for %d keys", len(vals), n)
		}
		var got []claim.Claimed
		calls(fmt.Sprint("TryClaimMany of ", n), map[string]int{"LeaseGrant": 1, "Txn": 1}, func() (err error) {
			got, err = c.TryClaimMany(ctx, keys, ttl)
			return err
		})
		commits := make([]claim.Commit, n)
		for i, r := range got {
			if r.Err != nil {
				t.Fatalf("TryClaimMany of free keys: %s: %v", keys[i], r.Err)
			}
			commits[i] = claim.Commit{Lease: r.Lease, Value: []byte("v"), TTL: ttl}
		}
		// Held by the batch just claimed: one etcd lease to ask about.
		calls(fmt.Sprint("TryClaimMany of ", n, " held keys"), map[string]int{"LeaseGrant": 1, "Txn": 1, "LeaseTimeToLive": 1}, func() error {
			again, err := c.TryClaimMany(ctx, keys, ttl)
			for i, r := range again {
				var held *claim.HeldError
				if !errors.As(r.Err, &held) || held.Remaining <= 0 || held.Remaining > ttl+time.Second {
					t.Errorf("TryClaimMany of a held key %s: %v, want ErrHeld with the holder's remaining lease", keys[i], r.Err)
				}
			}
			return err
		})
		var subs []*claim.Subscription
		before := serverCalls(t, srv)
		subs, err := c.SubscribeMany(ctx, keys)
		if err != nil {
			t.Fatal(err)
		}
		if d := serverCalls(t, srv)["Watch"] - before["Watch"]; d > 1 {
			t.Errorf("SubscribeMany of %d: %d watch streams, want at most 1", n, d)
		}
		var errs []error
		calls(fmt.Sprint("CommitReleaseMany of ", n), map[string]int{"Txn": 1}, func() (err error) {
			errs, err = c.CommitReleaseMany(ctx, commits)
			return err
		})
		for i, err := range errs {
			if err != nil {
				t.Errorf("CommitReleaseMany: %s: %v", keys[i], err)
			}
		}
		for i, s := range subs {
			if !backendtest.Woken(s, 10*time.Second) {
				t.Errorf("CommitReleaseMany did not wake %s", keys[i])
			}
			s.Close()
		}
	}
	calls("Revoke", map[string]int{"Txn": 1}, func() error { return c.RevokeSet(ctx, "warm", []byte("w"), ttl) })

	// Four values of 700 KB: two fit in one request under etcd's default
	// 1.5 MiB limit, so four commits are two transactions.
	keys := []string{"big0", "big1", "big2", "big3"}
	got, err := c.TryClaimMany(ctx, keys, ttl)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 700<<10)
	commits := make([]claim.Commit, len(keys))
	for i, r := range got {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		commits[i] = claim.Commit{Lease: r.Lease, Value: big, TTL: ttl}
	}
	calls("CommitReleaseMany of 4 × 700 KB", map[string]int{"Txn": 2}, func() error {
		errs, err := c.CommitReleaseMany(ctx, commits)
		return errors.Join(append(errs, err)...)
	})
	vals, err := c.GetMany(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range vals {
		if !bytes.Equal(v, big) {
			t.Errorf("%s: %d bytes after CommitReleaseMany, want %d", keys[i], len(v), len(big))
		}
	}
}

// TestBatchSharedLease: the claims of one TryClaimMany share an etcd
// lease, and what one of them does never ends another's: Extend moves its
// key to a lease of its own (later Extends keep that one alive), Release
// and Revoke leave the shared lease to expire by its TTL.
func TestBatchSharedLease(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	c, other := backendtest.Open(t, withPrefix(t, srv, "sharedlease")), backendtest.Open(t, withPrefix(t, srv, "sharedlease"))
	ctx := context.Background()
	ttl := 30 * time.Second
	keys := []string{"a", "b", "c", "d"}
	got, err := c.TryClaimMany(ctx, keys, ttl)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range got {
		if r.Err != nil {
			t.Fatalf("%s: %v", keys[i], r.Err)
		}
	}
	shared := sharedLease(got[0].Lease)
	if shared == 0 || parseHandle(got[0].Lease) != 0 {
		t.Fatalf("handle %q: want a shared lease", got[0].Lease.Handle)
	}
	la, err := c.Extend(ctx, got[0].Lease, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if id := parseHandle(la); id == 0 || id == shared {
		t.Errorf("handle after Extend %q: want a lease of the key's own", la.Handle)
	}
	if la, err = c.Extend(ctx, la, ttl); err != nil || sharedLease(la) != 0 {
		t.Errorf("second Extend: %v, %v", la, err)
	}
	if err := c.Release(ctx, got[1].Lease); err != nil {
		t.Fatal(err)
	}
	if err := other.Revoke(ctx, keys[2]); err != nil {
		t.Fatal(err)
	}
	if err := c.Release(ctx, la); err != nil {
		t.Fatal(err)
	}
	// The released key's own lease is revoked in the background; the
	// shared one must still hold d.
	ttlResp, err := drv(c).cli.Load().TimeToLive(ctx, shared, clientv3.WithAttachedKeys())
	if err != nil {
		t.Fatal(err)
	}
	if ttlResp.TTL <= 0 || len(ttlResp.Keys) != 1 || string(ttlResp.Keys[0]) != drv(c).lockKey("d") {
		t.Errorf("shared lease: TTL %d, keys %q; want it live with d's lock key only", ttlResp.TTL, ttlResp.Keys)
	}
	if _, err := other.TryClaim(ctx, "d", ttl); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim of d, claimed in the batch: err = %v, want ErrHeld", err)
	}
	for _, k := range keys[:3] {
		l, err := other.TryClaim(ctx, k, ttl)
		if err != nil {
			t.Errorf("TryClaim of %s after its batch claim ended: %v", k, err)
			continue
		}
		_ = other.Release(ctx, l)
	}
	if err := c.Release(ctx, got[3].Lease); err != nil {
		t.Error(err)
	}
}
