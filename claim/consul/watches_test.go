package consul_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// The whole suite with one blocking-query slot: every key after the first
// a Client watches goes through the poll loop, which must keep every
// promise of the push path (no lost wake-up, every waiter woken).
func TestConformancePolled(t *testing.T) {
	conformance.Run(t, harness(t, testserver.Shared(t, testserver.Consul), "maxwatches", "1"))
}

// connCounter counts the TCP connections a transport holds open.
type connCounter struct {
	mu         sync.Mutex
	open, peak int
}

func (c *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.open++
	c.peak = max(c.peak, c.open)
	c.mu.Unlock()
	return &countedConn{Conn: conn, c: c}, nil
}

func (c *connCounter) get() (open, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.peak
}

type countedConn struct {
	net.Conn
	c    *connCounter
	once sync.Once
}

func (cc *countedConn) Close() error {
	cc.once.Do(func() {
		cc.c.mu.Lock()
		cc.c.open--
		cc.c.mu.Unlock()
	})
	return cc.Conn.Close()
}

// A process waiting on many keys at once holds at most MaxWatches
// blocking queries (each an HTTP connection) and a couple more
// connections, not one per key: Consul refuses a client address more
// than http_max_conns_per_client (200 by default). Every key's waiter is
// still woken by its release.
func TestConnectionsBounded(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	const keys, maxWatches = 120, 4
	cc := &connCounter{}
	cfg := capi.DefaultConfig()
	cfg.Address = srv.Addr()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = cc.dial
	tr.MaxIdleConnsPerHost = 64
	cfg.Transport = tr
	c, err := capi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.CloseIdleConnections()
	prefix := "test/" + t.Name()
	w, err := consul.New(c, &consul.Options{Prefix: prefix, MaxWatches: maxWatches})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	holder := backendtest.Open(t, uniq(t, srv)) // same prefix as w: uniq uses test/<name>
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	leases := make([]claim.Lease, keys)
	subs := make([]*claim.Subscription, keys)
	for i := range keys {
		k := fmt.Sprintf("k%d", i)
		if leases[i], err = holder.TryClaim(ctx, k, time.Minute); err != nil {
			t.Fatalf("claim %s: %v", k, err)
		}
		if subs[i], err = w.Subscribe(ctx, k); err != nil {
			t.Fatalf("subscribe %s: %v", k, err)
		}
	}
	if _, err := w.TryClaim(ctx, "k0", time.Minute); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("the holder's key seen by the waiting client: TryClaim err = %v, want ErrHeld (not the same prefix?)", err)
	}
	blocking, polled := consul.WatchesForTest(w)
	if blocking != maxWatches || polled != keys-maxWatches {
		t.Errorf("%d keys watched, MaxWatches %d: %d blocking queries, %d polled; want %d and %d", keys, maxWatches, blocking, polled, maxWatches, keys-maxWatches)
	}
	// Every poll read is one request; give the loop a few rounds.
	time.Sleep(300 * time.Millisecond)
	for i, l := range leases {
		if err := holder.Release(ctx, l); err != nil {
			t.Fatalf("release %d: %v", i, err)
		}
	}
	for i, s := range subs {
		select {
		case <-s.C():
		case <-ctx.Done():
			t.Fatalf("key %d: its release never woke its subscriber", i)
		}
	}
	_, peak := cc.get()
	// At most maxWatches blocking queries, the poll loop's request and the
	// test's own calls (one at a time) are in flight at once: 6. Open
	// connections can exceed what is in flight a little: when a request
	// finds every connection busy, net/http dials one, and if another
	// connection frees first the request takes that one and the new one
	// joins the idle pool. Without the bound there would be one per key.
	if limit := maxWatches + 8; peak > limit {
		t.Errorf("%d keys watched with MaxWatches %d: peak %d open connections, want <= %d", keys, maxWatches, peak, limit)
	}
	t.Logf("%d keys watched, MaxWatches %d: peak %d open connections", keys, maxWatches, peak)
	for _, s := range subs {
		_ = s.Close()
	}
	if blocking, polled := consul.WatchesForTest(w); blocking != 0 || polled != 0 {
		t.Errorf("after every subscription closed: %d blocking, %d polled; want none", blocking, polled)
	}
}
