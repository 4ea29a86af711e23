package dynamo

import (
	"bytes"
	"context"
	"errors"
	"io"
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

// lateWire is a test transport that, when armed, keeps the next UpdateItem
// "on the wire": the caller gets its context's error, and the request is
// sent later, when the test delivers it (PITFALLS: a write that outlives
// the client's own timeout can still land). Nothing is aborted mid-request.
type lateWire struct {
	base http.RoundTripper

	mu    sync.Mutex
	armed bool
	held  *http.Request
	body  []byte
}

func (w *lateWire) RoundTrip(r *http.Request) (*http.Response, error) {
	w.mu.Lock()
	hold := w.armed && strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".UpdateItem")
	if hold {
		w.armed = false
		w.body, _ = io.ReadAll(r.Body)
		r.Body.Close()
		w.held = r
	}
	w.mu.Unlock()
	if !hold {
		return w.base.RoundTrip(r)
	}
	<-r.Context().Done()
	return nil, r.Context().Err()
}

// deliver sends the held request now, as the network finally does.
func (w *lateWire) deliver(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	r, body := w.held, w.body
	w.mu.Unlock()
	if r == nil {
		t.Fatal("no request held")
	}
	late := r.Clone(context.Background())
	late.Body = io.NopCloser(bytes.NewReader(body))
	late.ContentLength = int64(len(body))
	resp, err := w.base.RoundTrip(late)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("the late Extend's answer: %s %s", resp.Status, out)
}

// TestLateExtendRefused: an Extend whose call timed out, and which lands
// after a later Extend of the same lease succeeded, passed Extend's
// condition (same holder and token, #le > its own :now) and wrote back its
// earlier le. The holder's Deadline is the later Extend's; other clients
// judge expiry (clock rule: le + ClockSkew) by the earlier le, and took
// the key over while the holder's Deadline was still ahead: two holders
// (335 ms early, before the fix; found by review). Now an Extend never
// moves the recorded end earlier. (One process, one clock: no clock skew
// involved.)
func TestLateExtendRefused(t *testing.T) {
	raw := server(t)
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	wire := &lateWire{base: tr}
	dc := dynamodb.New(dynamodb.Options{
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(u.Query().Get("endpoint")),
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		HTTPClient:       &http.Client{Transport: wire},
		RetryMaxAttempts: 1,
	})
	a, err := New(dc, &Options{Table: u.Host})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b := backendtest.Open(t, raw) // default clock_skew: 100ms
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "late-extend"
	const ttl = time.Second

	l0, err := a.TryClaim(ctx, key, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// E1: times out at the client, stays on the wire.
	wire.mu.Lock()
	wire.armed = true
	wire.mu.Unlock()
	e1ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = a.Extend(e1ctx, l0, ttl)
	cancel()
	if err == nil {
		t.Fatal("E1 was not held")
	}
	// E2, 400 ms later: the renewal that succeeds; the holder's Deadline.
	time.Sleep(400 * time.Millisecond)
	l2, err := a.Extend(ctx, l0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// E1 lands now.
	wire.deliver(t)

	// Another client claims as soon as the driver lets it.
	var l3 claim.Lease
	for {
		l3, err = b.TryClaim(ctx, key, ttl)
		if !errors.Is(err, claim.ErrHeld) || time.Now().After(l2.Deadline.Add(500*time.Millisecond)) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := time.Now()
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	defer b.Release(context.Background(), l3)
	if got.Before(l2.Deadline) {
		cerr := a.Commit(ctx, l2, []byte("x"), 0)
		t.Errorf("key taken over (token %d) %s before the holder's Deadline (token %d, renewed by a successful Extend); the holder's Commit then: %v",
			l3.Token, l2.Deadline.Sub(got).Round(time.Millisecond), l2.Token, cerr)
	}
}

// TestExtendShorterKeepsEnd: an Extend that would move the recorded end
// earlier (here a shorter TTL; also a grant written on a clock ahead of
// the holder's) renews the lease with the later end kept, as a lease write
// of its own (a new lw.n, which waiters' sightings count from), and the
// lease stays the holder's.
func TestExtendShorterKeepsEnd(t *testing.T) {
	c := backendtest.Open(t, server(t))
	b := c.Driver().(*backend)
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "shorter"
	l, err := c.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	read := func() leaseSeen {
		t.Helper()
		item, err := b.getItem(ctx, key, "h", "f", "le", "lw")
		if err != nil {
			t.Fatal(err)
		}
		s, ok := seenLease(item)
		if !ok || s.n == 0 {
			t.Fatalf("no lease write recorded: %v", item)
		}
		return s
	}
	before := read()
	l2, err := c.Extend(ctx, l, 2*time.Second)
	if err != nil {
		t.Fatalf("Extend with a shorter TTL: %v", err)
	}
	after := read()
	if after.le != before.le {
		t.Errorf("recorded end moved from %d to %d, want it kept", before.le, after.le)
	}
	if after.n == before.n {
		t.Errorf("the Extend wrote no lease write of its own (lw.n %d unchanged)", after.n)
	}
	if after.ttl != 2*time.Second {
		t.Errorf("lw records TTL %s, want the Extend's 2s", after.ttl)
	}
	if l2.TTL != 2*time.Second {
		t.Errorf("lease TTL %s, want 2s", l2.TTL)
	}
	if err := c.CommitRelease(ctx, l2, []byte("v"), time.Minute); err != nil {
		t.Fatalf("CommitRelease after the shorter Extend: %v", err)
	}
}
