package dynamo

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
)

// opCounter is the HTTP transport of a test's DynamoDB client, in front
// of a real one: it counts requests by DynamoDB operation (X-Amz-Target),
// and, when armed, holds every UpdateItem before it is sent until a given
// number of them have arrived, which only requests in flight together can
// pass. A held request is never sent, so dynalite sees no aborted one.
type opCounter struct {
	base http.RoundTripper

	mu      sync.Mutex
	ops     map[string]int
	gate    int           // > 0: UpdateItems wait until gate have arrived
	arrived int           // UpdateItems since arm
	open    chan struct{} // closed when arrived reaches gate
}

// arm resets the counts, and holds UpdateItems until gate of them have
// arrived (gate 0: none held).
func (c *opCounter) arm(gate int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ops = map[string]int{}
	c.gate, c.arrived, c.open = gate, 0, make(chan struct{})
}

// counts returns the requests made since arm, by operation.
func (c *opCounter) counts() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.ops)
}

func (c *opCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	op := r.Header.Get("X-Amz-Target")
	op = op[strings.LastIndexByte(op, '.')+1:]
	c.mu.Lock()
	c.ops[op]++
	var wait chan struct{}
	if op == "UpdateItem" && c.gate > 0 {
		if c.arrived++; c.arrived == c.gate {
			close(c.open)
		}
		wait = c.open
	}
	c.mu.Unlock()
	if wait != nil {
		select {
		case <-wait:
		case <-r.Context().Done():
			if r.Body != nil {
				r.Body.Close()
			}
			return nil, fmt.Errorf("held UpdateItem: only some of the batch's writes were sent together: %w", r.Context().Err())
		}
	}
	return c.base.RoundTrip(r)
}

// TestBatchRequests: the Batcher's cost in requests does not grow with the
// batch. GetMany and SubscribeMany are one BatchGetItem each, for 2 keys as
// for MaxBatch (and the Client sends one per MaxBatch keys beyond);
// TryClaimMany and CommitReleaseMany are one UpdateItem per key, all in
// flight at once: the transport lets none through until every one of the
// batch has arrived, so writes sent one after another would fail at the
// operation timeout. Polls are an hour apart, so every request counted is
// the call's own.
func TestBatchRequests(t *testing.T) {
	u, err := url.Parse(server(t))
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	cnt := &opCounter{base: tr, ops: map[string]int{}}
	dc := dynamodb.New(dynamodb.Options{
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(u.Query().Get("endpoint")),
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		HTTPClient:       &http.Client{Transport: cnt},
		RetryMaxAttempts: 1,
	})
	c, err := New(dc, &Options{Table: u.Host, PollMin: time.Hour, PollMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := backendtest.Context(t)
	base := securitytest.Unique(t)
	check := func(call string, want map[string]int) {
		t.Helper()
		if got := cnt.counts(); !maps.Equal(got, want) {
			t.Errorf("%s: requests %v, want %v", call, got, want)
		}
	}
	for _, n := range []int{2, MaxBatch} {
		keys := make([]string, n)
		for i := range keys {
			keys[i] = fmt.Sprintf("%s%d-%d", base, n, i)
		}
		cnt.arm(0)
		if _, err := c.GetMany(ctx, keys); err != nil {
			t.Fatalf("GetMany of %d keys: %v", n, err)
		}
		check(fmt.Sprintf("GetMany of %d keys", n), map[string]int{"BatchGetItem": 1})

		cnt.arm(n)
		res, err := c.TryClaimMany(ctx, keys, time.Minute)
		if err != nil {
			t.Fatalf("TryClaimMany of %d keys: %v", n, err)
		}
		check(fmt.Sprintf("TryClaimMany of %d keys", n), map[string]int{"UpdateItem": n})
		commits := make([]claim.Commit, n)
		for i, r := range res {
			if r.Err != nil {
				t.Fatalf("TryClaimMany of %d keys: key %d: %v", n, i, r.Err)
			}
			commits[i] = claim.Commit{Lease: r.Lease, Value: []byte(keys[i]), TTL: time.Minute}
		}

		cnt.arm(n)
		errs, err := c.CommitReleaseMany(ctx, commits)
		if err != nil {
			t.Fatalf("CommitReleaseMany of %d commits: %v", n, err)
		}
		check(fmt.Sprintf("CommitReleaseMany of %d commits", n), map[string]int{"UpdateItem": n})
		for i, err := range errs {
			if err != nil {
				t.Fatalf("CommitReleaseMany of %d commits: commit %d: %v", n, i, err)
			}
		}

		cnt.arm(0)
		subs, err := c.SubscribeMany(ctx, keys)
		if err != nil {
			t.Fatalf("SubscribeMany of %d keys: %v", n, err)
		}
		check(fmt.Sprintf("SubscribeMany of %d keys", n), map[string]int{"BatchGetItem": 1})
		for _, s := range subs {
			s.Close()
		}

		vals, err := c.GetMany(ctx, keys)
		if err != nil {
			t.Fatalf("GetMany of %d keys: %v", n, err)
		}
		for i, v := range vals {
			if string(v) != keys[i] {
				t.Fatalf("GetMany after CommitReleaseMany: key %d = %q, want %q", i, v, keys[i])
			}
		}
	}

	// Beyond MaxBatch the Client splits: one BatchGetItem per MaxBatch keys.
	keys := make([]string, 2*MaxBatch+1)
	for i := range keys {
		keys[i] = fmt.Sprintf("%sbig-%d", base, i)
	}
	cnt.arm(0)
	if _, err := c.GetMany(ctx, keys); err != nil {
		t.Fatalf("GetMany of %d keys: %v", len(keys), err)
	}
	check(fmt.Sprintf("GetMany of %d keys", len(keys)), map[string]int{"BatchGetItem": 3})
}
