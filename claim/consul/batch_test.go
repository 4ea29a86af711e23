package consul_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/internal/testserver"
)

// callName marks the context of one call, so that requestCounter counts
// the requests made for it, and not the blocking queries' and the poll
// loop's, which run under the driver's own context.
type callName struct{}

// openVia returns a function that opens Clients on srv with opt, under a
// prefix of this test run's own (the shared agent keeps what earlier runs
// stored), whose Consul API client sends every request through rt.
func openVia(t *testing.T, srv *testserver.Server, rt http.RoundTripper, opt consul.Options) func() *claim.Client {
	opt.Prefix = fmt.Sprintf("%s-%d", prefix(t), time.Now().UnixNano())
	return func() *claim.Client {
		cfg := capi.DefaultConfig()
		cfg.Address = srv.Addr()
		cfg.HttpClient = &http.Client{Transport: rt}
		c, err := capi.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		o := opt
		cl, err := consul.New(c, &o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cl.Close() })
		return cl
	}
}

// requestCounter counts, by call name, the requests to Consul's
// transaction endpoint and the others.
type requestCounter struct {
	base http.RoundTripper
	mu   sync.Mutex
	txns map[string]int
	rest map[string]int
}

func (rc *requestCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	if name, ok := req.Context().Value(callName{}).(string); ok {
		rc.mu.Lock()
		if req.URL.Path == "/v1/txn" {
			rc.txns[name]++
		} else {
			rc.rest[name]++
		}
		rc.mu.Unlock()
	}
	return rc.base.RoundTrip(req)
}

// check fails t unless the call named name made want transactions and no
// other request.
func (rc *requestCounter) check(t *testing.T, name string, want int) {
	t.Helper()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if got, rest := rc.txns[name], rc.rest[name]; got != want || rest != 0 {
		t.Errorf("%s: %d transactions and %d other requests, want %d and none", name, got, rest, want)
	}
}

// txnsFor is how many transactions a batch of n keys takes at opsPerKey
// operations each: the Client splits it into calls of MaxBatch keys, and
// the driver each call into transactions of at most 64 operations, each
// key's all in one.
func txnsFor(n, maxBatch, opsPerKey int) int {
	perTxn := 64 / opsPerKey
	total := 0
	for lo := 0; lo < n; lo += maxBatch {
		total += (min(n-lo, maxBatch) + perTxn - 1) / perTxn
	}
	return total
}

// Each batch call costs a fixed number of transactions (one per 64
// operations, sent concurrently: at most four for a full batch), not one
// per key, and nothing else: counted on the wire, per call, against the
// real agent. A round that meets held keys, a stale Handle or expired
// leases costs one more transaction each, whatever the number of keys.
func TestBatchRequests(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	rc := &requestCounter{base: http.DefaultTransport.(*http.Transport).Clone(), txns: map[string]int{}, rest: map[string]int{}}
	defer rc.base.(*http.Transport).CloseIdleConnections()
	open := openVia(t, srv, rc, consul.Options{ClockSkew: -1})
	c1, c2 := open(), open()
	maxBatch := c1.Driver().Features().MaxBatch
	if maxBatch != 64 {
		t.Fatalf("Features.MaxBatch = %d, want 64 (Consul's operations per transaction)", maxBatch)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	call := func(name string) context.Context { return context.WithValue(ctx, callName{}, name) }
	ttl := time.Minute

	for _, n := range []int{1, 64, 200} {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("n%d-k%d", n, i)
		}
		name := func(op string) string { return fmt.Sprintf("%s of %d keys", op, n) }

		subs, err := c2.SubscribeMany(call(name("SubscribeMany")), keys)
		if err != nil {
			t.Fatalf("SubscribeMany: %v", err)
		}
		rc.check(t, name("SubscribeMany"), txnsFor(n, maxBatch, 2))

		res, err := c1.TryClaimMany(call(name("TryClaimMany (free)")), keys, ttl)
		if err != nil {
			t.Fatalf("TryClaimMany: %v", err)
		}
		rc.check(t, name("TryClaimMany (free)"), txnsFor(n, maxBatch, 2))
		commits := make([]claim.Commit, n)
		for i, r := range res {
			if r.Err != nil || r.Found {
				t.Fatalf("TryClaimMany of free keys: key %d: %+v", i, r)
			}
			commits[i] = claim.Commit{Lease: r.Lease, Value: []byte(keys[i]), TTL: ttl}
		}

		// The second client finds every key held: one round of claims
		// that roll back, one read of the records.
		held, err := c2.TryClaimMany(call(name("TryClaimMany (held)")), keys, ttl)
		if err != nil {
			t.Fatalf("TryClaimMany: %v", err)
		}
		rc.check(t, name("TryClaimMany (held)"), txnsFor(n, maxBatch, 2)+txnsFor(n, maxBatch, 1))
		for i, r := range held {
			var he *claim.HeldError
			if !errors.As(r.Err, &he) || he.Remaining <= 0 {
				t.Fatalf("TryClaimMany of held keys: key %d: err = %v, want a HeldError with the time left", i, r.Err)
			}
		}

		errs, err := c1.CommitReleaseMany(call(name("CommitReleaseMany")), commits)
		if err != nil {
			t.Fatalf("CommitReleaseMany: %v", err)
		}
		rc.check(t, name("CommitReleaseMany"), txnsFor(n, maxBatch, 4))
		for i, e := range errs {
			if e != nil {
				t.Fatalf("CommitReleaseMany: key %d: %v", i, e)
			}
		}
		for i, s := range subs {
			select {
			case <-s.C():
			case <-ctx.Done():
				t.Fatalf("key %d: CommitReleaseMany never woke its subscriber", i)
			}
			_ = s.Close()
		}

		vals, err := c2.GetMany(call(name("GetMany")), keys)
		if err != nil {
			t.Fatalf("GetMany: %v", err)
		}
		rc.check(t, name("GetMany"), txnsFor(n, maxBatch, 1))
		for i, v := range vals {
			if string(v) != keys[i] {
				t.Fatalf("GetMany: key %d = %q, want %q", i, v, keys[i])
			}
		}
	}

	keys := make([]string, 40)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i)
	}
	// Leases whose Handle is out of date (Extend wrote the record again):
	// one round rolls back, one reads the records, one commits.
	res, err := c1.TryClaimMany(ctx, keys, ttl)
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	commits := make([]claim.Commit, len(keys))
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("TryClaimMany: key %d: %v", i, r.Err)
		}
		if _, err := c1.Extend(ctx, r.Lease, ttl); err != nil {
			t.Fatalf("Extend: %v", err)
		}
		commits[i] = claim.Commit{Lease: r.Lease, Value: []byte("v"), TTL: ttl}
	}
	errs, err := c1.CommitReleaseMany(call("CommitReleaseMany (stale handles)"), commits)
	if err != nil {
		t.Fatalf("CommitReleaseMany: %v", err)
	}
	rc.check(t, "CommitReleaseMany (stale handles)", 2*txnsFor(len(keys), maxBatch, 4)+txnsFor(len(keys), maxBatch, 1))
	for i, e := range errs {
		if e != nil {
			t.Errorf("CommitReleaseMany with leases extended since: key %d: %v", i, e)
		}
	}

	// Expired leases (no clock-skew margin here), free keys and live
	// leases in one batch: claims that roll back, then the free keys'
	// claims with the reads of the others' records, then the takeovers.
	expired := make([]claim.Lease, len(keys)/2)
	for i := range expired {
		if expired[i], err = c2.TryClaim(ctx, keys[i], 20*time.Millisecond); err != nil {
			t.Fatalf("TryClaim: %v", err)
		}
	}
	live, err := c2.TryClaim(ctx, keys[len(expired)], ttl)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	time.Sleep(time.Until(expired[len(expired)-1].Deadline) + 50*time.Millisecond)
	res, err = c1.TryClaimMany(call("TryClaimMany (mixed)"), keys, ttl)
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	// Round 1: keys 0-31 in one transaction, which rolls back (0-20
	// held), keys 32-39 in another, which commits; round 2: the claims of
	// keys 21-31 and the read of the records of 0-20; round 3: the
	// takeovers of 0-19.
	rc.check(t, "TryClaimMany (mixed)", 2+2+1)
	for i, r := range res {
		switch {
		case i < len(expired):
			if r.Err != nil || r.Lease.Token <= expired[i].Token || !r.Found || !bytes.Equal(r.Value, []byte("v")) {
				t.Errorf("key %d, its lease expired: %+v, want a lease with a greater token than %d and Found v", i, r, expired[i].Token)
			}
		case i == len(expired):
			if !errors.Is(r.Err, claim.ErrHeld) {
				t.Errorf("key %d, its lease live: err = %v, want ErrHeld", i, r.Err)
			}
		default:
			if r.Err != nil || !r.Found {
				t.Errorf("key %d, free: %+v, want a lease and Found", i, r)
			}
		}
		if r.Err == nil {
			_ = c1.Release(ctx, r.Lease)
		}
	}
	_ = c2.Release(ctx, live)

	// Large values: each commit alone in its transaction, under Consul's
	// 512 KiB per request.
	big := bytes.Repeat([]byte("x"), 300<<10)
	res, err = c1.TryClaimMany(ctx, keys[:3], ttl)
	if err != nil {
		t.Fatalf("TryClaimMany: %v", err)
	}
	commits = commits[:0]
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("TryClaimMany: key %d: %v", i, r.Err)
		}
		commits = append(commits, claim.Commit{Lease: r.Lease, Value: big, TTL: ttl})
	}
	errs, err = c1.CommitReleaseMany(call("CommitReleaseMany (large values)"), commits)
	if err != nil {
		t.Fatalf("CommitReleaseMany of 3 values of 300 KiB: %v", err)
	}
	rc.check(t, "CommitReleaseMany (large values)", 3)
	for i, e := range errs {
		if e != nil {
			t.Errorf("CommitReleaseMany of a 300 KiB value: key %d: %v", i, e)
		}
	}

	if err := c2.RevokeSet(call("RevokeSet"), keys[0], []byte("r"), ttl); err != nil {
		t.Fatalf("RevokeSet: %v", err)
	}
	rc.check(t, "RevokeSet", 1)
}
