package dynamo

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"net/url"
	"slices"
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

// countedClient opens a Client on the shared dynalite whose requests cnt
// counts by operation.
func countedClient(t *testing.T, cnt *opCounter, opt Options) *claim.Client {
	t.Helper()
	u, err := url.Parse(server(t))
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	cnt.base, cnt.ops = tr, map[string]int{}
	dc := dynamodb.New(dynamodb.Options{
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(u.Query().Get("endpoint")),
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
		HTTPClient:       &http.Client{Transport: cnt},
		RetryMaxAttempts: 1,
	})
	opt.Table = u.Host
	c, err := New(dc, &opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestHandOverRequests: the hand-over costs the holder one GetItem and one
// UpdateItem (HandOff), and the waiter no request of its own beyond its
// grant polls (GetItem): the lease reaches it in a poll, it makes no
// claim. An uncontended AcquireFair is one UpdateItem (as TryClaim);
// queueing behind a holder is that claim failing, then one GetItem and
// one UpdateItem.
func TestHandOverRequests(t *testing.T) {
	var hc, wc opCounter
	holder := countedClient(t, &hc, Options{PollMin: time.Hour, PollMax: time.Hour}) // no grant polls
	waiter := countedClient(t, &wc, Options{PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "handover"
	const ttl = 30 * time.Second // no renewal of the waiter's entry during the test

	hc.arm(0)
	l, err := holder.AcquireFair(ctx, key, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hc.counts(), map[string]int{"UpdateItem": 1}; !maps.Equal(got, want) {
		t.Errorf("uncontended AcquireFair: requests %v, want %v", got, want)
	}

	wc.arm(0)
	type result struct {
		l   claim.Lease
		err error
	}
	res := make(chan result, 1)
	go func() {
		l, err := waiter.AcquireFair(ctx, key, ttl)
		res <- result{l, err}
	}()
	// Wait until the waiter is queued, read by the holder's driver (not
	// counted: the counter is re-armed below).
	for {
		s, err := drv(holder).readQueue(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.q) == 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if got := wc.counts(); got["UpdateItem"] != 2 {
		t.Errorf("queueing: requests %v, want 2 UpdateItems (the claim that fails, the queueing; and GetItems: the Enqueue's read and grant polls)", got)
	}

	hc.arm(0)
	wc.arm(0)
	if err := holder.Release(ctx, l); err != nil {
		t.Fatalf("Release (hand-off): %v", err)
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("waiter's AcquireFair: %v", r.err)
	}
	if got, want := hc.counts(), map[string]int{"GetItem": 1, "UpdateItem": 1}; !maps.Equal(got, want) {
		t.Errorf("HandOff: requests %v, want %v", got, want)
	}
	got := wc.counts()
	if got["UpdateItem"] != 0 || len(got) > 1 || got["GetItem"] < 1 {
		t.Errorf("the waiter during the hand-over: requests %v, want grant polls (GetItem) only, no claim", got)
	}
	if r.l.Token <= l.Token || !r.l.Fair {
		t.Errorf("granted lease %+v after token %d", r.l, l.Token)
	}
	if _, err := holder.TryClaim(ctx, key, ttl); err == nil {
		t.Error("TryClaim while the granted lease is held succeeded")
	}
	if err := waiter.Release(ctx, r.l); err != nil {
		t.Errorf("Release of the granted lease: %v", err)
	}
	noWaiters(t, holder, waiter)
}

// noWaiters fails t if a client's driver still records waiters of its
// own (served or gone: none should be left).
func noWaiters(t *testing.T, cs ...*claim.Client) {
	t.Helper()
	for i, c := range cs {
		d := drv(c)
		d.qmu.Lock()
		if n := len(d.waiters); n != 0 {
			t.Errorf("client %d: waiters recorded for %d keys after every AcquireFair returned: %v", i, n, d.waiters)
		}
		d.qmu.Unlock()
	}
}

// TestFairStress: waiters in several clients, renewing their entries
// often (a short TTL) while the key is handed over quickly, some giving
// up midway: never two holders at once, tokens increasing turn after
// turn, every turn served. Races between a queue operation's read and
// write (a renewal crossing a hand-over) are retried inside the driver.
func TestFairStress(t *testing.T) {
	url := server(t)
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "stress"
	const clients, perClient, rounds = 4, 3, 4
	ttl := 900 * time.Millisecond // entries renewed every 300 ms
	var (
		mu     sync.Mutex
		inside int
		tokens []uint64
		wg     sync.WaitGroup
		cs     []*claim.Client
	)
	for range clients {
		cs = append(cs, backendtest.Open(t, url))
	}
	for i, c := range cs {
		// A waiter that leaves while queued (after its Enqueue, mostly: a
		// request cut short by its context costs dynalite more).
		wg.Add(1)
		go func() {
			defer wg.Done()
			qctx, cancel := context.WithTimeout(ctx, time.Duration(150+100*i)*time.Millisecond)
			defer cancel()
			if l, err := c.AcquireFair(qctx, key, ttl); err == nil {
				_ = c.Release(ctx, l)
			}
		}()
		for w := range perClient {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for r := range rounds {
					l, err := c.AcquireFair(ctx, key, ttl)
					if err != nil {
						t.Errorf("client %d waiter %d round %d: %v", i, w, r, err)
						return
					}
					mu.Lock()
					inside++
					if inside != 1 {
						t.Errorf("%d holders at once", inside)
					}
					tokens = append(tokens, l.Token)
					mu.Unlock()
					time.Sleep(time.Duration(r) * time.Millisecond)
					mu.Lock()
					inside--
					mu.Unlock()
					if err := c.Release(ctx, l); err != nil {
						t.Errorf("client %d waiter %d: Release: %v", i, w, err)
					}
				}
			}()
		}
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(tokens) < clients*perClient*rounds {
		t.Errorf("%d turns, want at least %d", len(tokens), clients*perClient*rounds)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Errorf("turn %d: token %d <= %d", i, tokens[i], tokens[i-1])
		}
	}
	noWaiters(t, cs...)
	var races int64
	for _, c := range cs {
		races += drv(c).races.Load()
	}
	t.Logf("%d turns; %d queue writes lost a race and were retried", len(tokens), races)
}

// TestHandOverWakesOne: with waiters queued in several clients, each
// hand-over is the releaser's HandOff and the next waiter's poll: no
// client but the releaser writes (no claim, no re-queueing), so no waiter
// is woken out of turn.
func TestHandOverWakesOne(t *testing.T) {
	const n = 3
	cnts := make([]opCounter, n+1)
	cs := make([]*claim.Client, n+1)
	for i := range cs {
		cs[i] = countedClient(t, &cnts[i], Options{PollMin: 5 * time.Millisecond, PollMax: 20 * time.Millisecond})
	}
	ctx := backendtest.Context(t)
	key := securitytest.Unique(t) + "wakes-one"
	const ttl = 30 * time.Second // no renewal during the test
	l, err := cs[0].AcquireFair(ctx, key, ttl)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		i int
		l claim.Lease
	}
	done := make(chan got, n)
	for i := 1; i <= n; i++ {
		go func() {
			l, err := cs[i].AcquireFair(ctx, key, ttl)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
			}
			done <- got{i, l}
		}()
	}
	for {
		s, err := drv(cs[0]).readQueue(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.q) == n {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cur := got{0, l}
	for turn := range n {
		for i := range cnts {
			cnts[i].arm(0)
		}
		if err := cs[cur.i].Release(ctx, cur.l); err != nil {
			t.Fatalf("turn %d: Release: %v", turn, err)
		}
		next := <-done
		if next.l.Token <= cur.l.Token {
			t.Errorf("turn %d: token %d after %d", turn, next.l.Token, cur.l.Token)
		}
		for i := range cnts {
			if got := cnts[i].counts(); i != cur.i && got["UpdateItem"] != 0 {
				t.Errorf("turn %d: client %d (not the releaser) wrote during the hand-over: %v", turn, i, got)
			}
		}
		cur = next
	}
	if err := cs[cur.i].Release(ctx, cur.l); err != nil {
		t.Fatal(err)
	}
	noWaiters(t, cs...)
}

// TestGrantWakeRules: what a grant poll delivers. A live lease with a new
// fence is a grant; a lease gone without a successor and a failed read are
// "may have missed one" (the zero Lease); skipped fences are too, but only
// over a window as long as the shortest TTL of the process's own waiters
// (a grant missed went to a waiter that never learned of it, so it ran
// out between the reads).
func TestGrantWakeRules(t *testing.T) {
	b, err := newBackend(dynamodb.New(dynamodb.Options{Region: "us-east-1"}), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var got []claim.Lease
	g := &grantSub{b: b, grant: func(l claim.Lease) { got = append(got, l) }, seenSent: time.Now()}
	t0 := time.Now()
	step := func(what string, r grantRead, want ...string) {
		t.Helper()
		got = nil
		g.record(r)
		g.wake("k")
		var holders []string
		for _, l := range got {
			holders = append(holders, l.Holder)
		}
		if !slices.Equal(holders, want) {
			t.Errorf("%s: delivered %q, want %q", what, holders, want)
		}
	}
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	b.local("k", "w1", time.Second) // a waiter of this process, TTL 1 s

	step("first read, a lease live", grantRead{holder: "h0", f: 10, sent: at(1), reply: at(2)}, "h0")
	step("hand-over to the next", grantRead{holder: "h1", f: 11, sent: at(20), reply: at(22)}, "h1")
	step("two fences skipped within 40 ms", grantRead{holder: "h4", f: 14, sent: at(60), reply: at(62)}, "h4")
	step("a fence skipped over 2 s", grantRead{holder: "h6", f: 16, sent: at(2000), reply: at(2062)}, "h6", "")
	step("released, nobody granted", grantRead{f: 16, sent: at(2100), reply: at(2102)}, "")
	step("a failed read", grantRead{err: errors.New("down")}, "")
	b.unlocal("k", "w1")
	step("a fence skipped over 2 s, no waiter here", grantRead{holder: "h9", f: 19, sent: at(5000), reply: at(5002)}, "h9")
}
