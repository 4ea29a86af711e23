package conformance

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

func init() {
	register("FairOrder", checkFairOrder)
	register("FairFence", checkFairFence)
	register("FairSkipsDead", checkFairSkipsDead)
	register("FairTakeover", checkFairTakeover)
	register("FairDequeue", checkFairDequeue)
	register("FairClients", checkFairClients)
}

// grants records the grants one client's driver delivers for a key.
type grants struct {
	mu  sync.Mutex
	got []driver.Lease
	ch  chan struct{}
}

// queuer returns c's driver as a driver.Queuer, or ends the check as not
// applicable.
func queuer(t *T, c *claim.Client) driver.Queuer {
	q, ok := c.Driver().(driver.Queuer)
	if !ok {
		t.Skipf("the driver is not a driver.Queuer")
	}
	return q
}

// subscribeGrants subscribes c's driver to k's grants, dropped when the
// check ends with the client.
func subscribeGrants(t *T, c *claim.Client, k string) *grants {
	g := &grants{ch: make(chan struct{}, 64)}
	err := queuer(t, c).SubscribeGrants(t.Context(), k, func(l driver.Lease) {
		g.mu.Lock()
		g.got = append(g.got, l)
		g.mu.Unlock()
		select {
		case g.ch <- struct{}{}:
		default:
		}
	})
	if err != nil {
		t.Fatalf("SubscribeGrants: %v", err)
	}
	return g
}

// next waits for a grant to holder (resets and other holders' grants are
// skipped) and returns it with a Deadline from since.
func (g *grants) next(t *T, holder, what string, since time.Time) driver.Lease {
	deadline := time.After(wakeBound)
	for {
		g.mu.Lock()
		for i, l := range g.got {
			if l.Holder == holder {
				g.got = append(g.got[:i:i], g.got[i+1:]...)
				g.mu.Unlock()
				l.Deadline = since.Add(l.TTL)
				l.Fair = true
				return l
			}
		}
		g.mu.Unlock()
		select {
		case <-g.ch:
		case <-deadline:
			t.Fatalf("%s: no grant to %s delivered within %s", what, holder, wakeBound)
		case <-t.Context().Done():
			t.Fatalf("%s: check ended waiting for a grant", what)
		}
	}
}

// none reports an error if a grant to holder was delivered.
func (g *grants) none(t *T, holder, what string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, l := range g.got {
		if l.Holder == holder {
			t.Errorf("%s: a grant to %s (token %d) was delivered", what, holder, l.Token)
		}
	}
}

// enqueue puts holder in k's queue and expects it queued.
func enqueue(t *T, q driver.Queuer, k, holder string, ttl time.Duration) {
	_, err := q.Enqueue(t.Context(), k, holder, ttl)
	if !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("Enqueue(%s) of a held key: err = %v, want ErrHeld", holder, err)
	}
}

// holderID is a holder ID in the client's format (24 hex digits), unique
// to the check's run and n (checks run in parallel on one server).
func holderID(t *T, n int) string {
	h := fnv.New64a()
	h.Write([]byte(t.ns))
	return fmt.Sprintf("%016x%08x", h.Sum64(), n)
}

// checkFairOrder: a release hands the key to the waiters in the order they
// enqueued (renewing an entry keeps its place), each grant delivered in
// its waiter's process with a token above the last, and no waiter woken
// out of turn; the last hand-off, with nobody queued, is a release.
func checkFairOrder(t *T) {
	ctx := t.Context()
	c0 := t.Client()
	queuer(t, c0)
	k := t.Key("k")
	ttl := t.LongTTL()
	l0, err := c0.AcquireFair(ctx, k, ttl)
	if err != nil {
		t.Fatalf("AcquireFair of a free key: %v", err)
	}
	const n = 3
	cs := make([]*claim.Client, n)
	gs := make([]*grants, n)
	ids := make([]string, n)
	for i := range n {
		cs[i] = t.Client()
		gs[i] = subscribeGrants(t, cs[i], k)
		ids[i] = holderID(t, i)
		enqueue(t, queuer(t, cs[i]), k, ids[i], ttl)
	}
	enqueue(t, queuer(t, cs[0]), k, ids[0], ttl) // renewed: keeps its place
	prev := l0
	start := time.Now()
	if err := c0.Release(ctx, l0); err != nil {
		t.Fatalf("Release (hand-off) of the fair lease: %v", err)
	}
	for i := range n {
		g := gs[i].next(t, ids[i], fmt.Sprintf("hand-off %d", i+1), start)
		if g.Token <= prev.Token {
			t.Errorf("grant %d: token %d <= the previous holder's %d", i+1, g.Token, prev.Token)
		}
		if g.Key != k {
			t.Errorf("grant %d: key %q, want %q", i+1, g.Key, k)
		}
		for j := i + 1; j < n; j++ {
			gs[j].none(t, ids[j], fmt.Sprintf("after hand-off %d", i+1))
		}
		if _, err := cs[i].TryClaim(ctx, k, ttl); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("TryClaim while waiter %d holds the granted lease: %v, want ErrHeld", i+1, err)
		}
		ext, err := cs[i].Extend(ctx, g, ttl)
		if err != nil {
			t.Fatalf("Extend of the lease granted to waiter %d: %v", i+1, err)
		}
		prev, start = ext, time.Now()
		if err := cs[i].Release(ctx, ext); err != nil {
			t.Fatalf("Release (hand-off) by waiter %d: %v", i+1, err)
		}
	}
	// Nobody queued: the key is free.
	l, err := c0.TryClaim(ctx, k, ttl)
	if err != nil {
		t.Fatalf("TryClaim after the last hand-off, nobody queued: %v", err)
	}
	if l.Token <= prev.Token {
		t.Errorf("token after the queue emptied %d <= %d", l.Token, prev.Token)
	}
}

// checkFairFence: the hand-over ends the old lease (a stale holder's
// Extend, Commit and HandOff are ErrLost and grant nothing), and the
// granted lease commits; a waiter's Enqueue while it holds returns its
// lease.
func checkFairFence(t *T) {
	ctx := t.Context()
	c0, c1, c2 := t.Client(), t.Client(), t.Client()
	queuer(t, c0)
	k := t.Key("k")
	ttl := t.LongTTL()
	l0, err := c0.AcquireFair(ctx, k, ttl)
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	g1s, g2s := subscribeGrants(t, c1, k), subscribeGrants(t, c2, k)
	h1, h2 := holderID(t, 1), holderID(t, 2)
	enqueue(t, queuer(t, c1), k, h1, ttl)
	enqueue(t, queuer(t, c2), k, h2, ttl)
	start := time.Now()
	next, err := queuer(t, c0).HandOff(ctx, l0)
	if err != nil {
		t.Fatalf("HandOff: %v", err)
	}
	if next.Holder != h1 {
		t.Errorf("HandOff returned the grant to %q, want %q", next.Holder, h1)
	}
	g1 := g1s.next(t, h1, "HandOff", start)
	if next.Token != g1.Token {
		t.Errorf("HandOff returned token %d, the grant delivered %d", next.Token, g1.Token)
	}
	if _, err := c0.Extend(ctx, l0, ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend of the handed-over lease: %v, want ErrLost", err)
	}
	if err := c0.Commit(ctx, l0, []byte("stale"), ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit of the handed-over lease: %v, want ErrLost", err)
	}
	if _, err := queuer(t, c0).HandOff(ctx, l0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("HandOff of the handed-over lease again: %v, want ErrLost", err)
	}
	g2s.none(t, h2, "a stale HandOff")
	again, err := queuer(t, c1).Enqueue(ctx, k, h1, ttl)
	if err != nil {
		t.Errorf("Enqueue by the holder of the granted lease: %v, want its lease", err)
	} else if again.Token != g1.Token || again.Holder != h1 {
		t.Errorf("Enqueue by the granted holder: lease %v, want token %d", again, g1.Token)
	}
	if err := c1.Commit(ctx, g1, []byte("granted"), ttl); err != nil {
		t.Errorf("Commit with the granted lease: %v", err)
	}
	if v, err := c2.Get(ctx, k); err != nil || string(v) != "granted" {
		t.Errorf("Get after the granted holder's commit: %q, %v", v, err)
	}
	if err := c1.Release(ctx, g1); err != nil {
		t.Fatalf("Release of the granted lease: %v", err)
	}
	g2 := g2s.next(t, h2, "the granted holder's release", time.Now())
	if g2.Token <= g1.Token {
		t.Errorf("second grant's token %d <= the first's %d", g2.Token, g1.Token)
	}
	_ = c2.Release(ctx, g2)
}

// checkFairSkipsDead: a waiter whose entry expired (it stopped renewing)
// is skipped; the next live waiter gets the key.
func checkFairSkipsDead(t *T) {
	ctx := t.Context()
	c0, c1, c2 := t.Client(), t.Client(), t.Client()
	queuer(t, c0)
	k := t.Key("k")
	l0, err := c0.AcquireFair(ctx, k, t.LongTTL())
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	dead, live := holderID(t, 1), holderID(t, 2)
	deadGrants, liveGrants := subscribeGrants(t, c1, k), subscribeGrants(t, c2, k)
	short := t.ShortTTL()
	enqueue(t, queuer(t, c1), k, dead, short)
	enqueue(t, queuer(t, c2), k, live, t.LongTTL())
	time.Sleep(short + 2*t.feat.TTLGranularity + 100*time.Millisecond)
	start := time.Now()
	if err := c0.Release(ctx, l0); err != nil {
		t.Fatalf("Release (hand-off): %v", err)
	}
	g := liveGrants.next(t, live, "hand-off past a dead waiter", start)
	deadGrants.none(t, dead, "hand-off past a dead waiter")
	if g.Token <= l0.Token {
		t.Errorf("token %d <= the previous holder's %d", g.Token, l0.Token)
	}
	_ = c2.Release(ctx, g)
}

// checkFairTakeover: a holder that dies (never releases) is followed by
// the first waiter once its lease runs out: any waiter's Enqueue after
// the expiry grants the key to the first in line.
func checkFairTakeover(t *T) {
	ctx := t.Context()
	c0, c1, c2 := t.Client(), t.Client(), t.Client()
	queuer(t, c0)
	k := t.Key("k")
	short := t.ShortTTL()
	l0, err := c0.AcquireFair(ctx, k, short)
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	first, second := holderID(t, 1), holderID(t, 2)
	firstGrants := subscribeGrants(t, c1, k)
	enqueue(t, queuer(t, c1), k, first, t.LongTTL())
	enqueue(t, queuer(t, c2), k, second, t.LongTTL())
	time.Sleep(short + 2*t.feat.TTLGranularity + 100*time.Millisecond)
	start := time.Now()
	// The second waiter renews after the holder's death: the first gets it.
	if _, err := queuer(t, c2).Enqueue(ctx, k, second, t.LongTTL()); !errors.Is(err, claim.ErrHeld) {
		t.Fatalf("Enqueue by the second waiter after the holder died: %v, want ErrHeld (the first waiter's turn)", err)
	}
	g := firstGrants.next(t, first, "takeover by the second waiter's Enqueue", start)
	if g.Token <= l0.Token {
		t.Errorf("takeover token %d <= the dead holder's %d", g.Token, l0.Token)
	}
	if err := c0.Release(ctx, l0); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release by the dead holder after the takeover: %v, want ErrLost", err)
	}
	if _, err := c1.Extend(ctx, g, t.LongTTL()); err != nil {
		t.Errorf("Extend of the lease taken over: %v", err)
	}

	// And through the Client: a waiter in AcquireFair takes over by itself.
	k2 := t.Key("k2")
	l0, err = c0.AcquireFair(ctx, k2, short)
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	l, err := c1.AcquireFair(ctx, k2, t.LongTTL())
	if err != nil {
		t.Fatalf("AcquireFair of a key whose holder died: %v", err)
	}
	if l.Token <= l0.Token {
		t.Errorf("AcquireFair takeover token %d <= %d", l.Token, l0.Token)
	}
}

// checkFairDequeue: a waiter that leaves is not granted; a grant that
// crossed a waiter's departure is handed on by its Dequeue.
func checkFairDequeue(t *T) {
	ctx := t.Context()
	c0, c1, c2, c3 := t.Client(), t.Client(), t.Client(), t.Client()
	queuer(t, c0)
	k := t.Key("k")
	ttl := t.LongTTL()
	l0, err := c0.AcquireFair(ctx, k, ttl)
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	h1, h2, h3 := holderID(t, 1), holderID(t, 2), holderID(t, 3)
	g1s, g2s, g3s := subscribeGrants(t, c1, k), subscribeGrants(t, c2, k), subscribeGrants(t, c3, k)
	enqueue(t, queuer(t, c1), k, h1, ttl)
	enqueue(t, queuer(t, c2), k, h2, ttl)
	enqueue(t, queuer(t, c3), k, h3, ttl)
	if err := queuer(t, c1).Dequeue(ctx, k, h1); err != nil {
		t.Fatalf("Dequeue: %v", err)
	}
	start := time.Now()
	if err := c0.Release(ctx, l0); err != nil {
		t.Fatalf("Release (hand-off): %v", err)
	}
	g2 := g2s.next(t, h2, "hand-off after the first waiter left", start)
	g1s.none(t, h1, "hand-off after the first waiter left")
	// h2 leaves as its grant arrives: Dequeue hands the lease on.
	start = time.Now()
	if err := queuer(t, c2).Dequeue(ctx, k, h2); err != nil {
		t.Fatalf("Dequeue of a waiter holding a grant: %v", err)
	}
	g3 := g3s.next(t, h3, "Dequeue of a granted waiter", start)
	if g3.Token <= g2.Token {
		t.Errorf("token %d <= the departed waiter's %d", g3.Token, g2.Token)
	}
	if _, err := c2.Extend(ctx, g2, ttl); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend of the lease handed on by Dequeue: %v, want ErrLost", err)
	}
	if err := queuer(t, c1).Dequeue(ctx, k, holderID(t, 99)); err != nil {
		t.Errorf("Dequeue of a holder never queued: %v", err)
	}
	_ = c3.Release(ctx, g3)
}

// checkFairClients: through the Client, waiters in several processes take
// turns: never two holders at once, tokens increasing in the order of
// the turns, every waiter served; a waiter whose context ends leaves the
// queue without stranding the others (their entries outlive the check,
// so a grant lost to the departed waiter would hang it).
func checkFairClients(t *T) {
	ctx := t.Context()
	k := t.Key("k")
	const procs, rounds = 5, 3
	ttl := t.LongTTL()
	var inside atomic.Int32
	var mu sync.Mutex
	var tokens []uint64
	holder := t.Client()
	queuer(t, holder)
	l0, err := holder.AcquireFair(ctx, k, ttl)
	if err != nil {
		t.Fatalf("AcquireFair: %v", err)
	}
	// A waiter that gives up while queued.
	quitter := t.Client()
	qctx, cancel := context.WithCancel(ctx)
	qdone := make(chan error, 1)
	go func() {
		_, err := quitter.AcquireFair(qctx, k, ttl)
		qdone <- err
	}()
	var wg sync.WaitGroup
	for p := range procs {
		c := t.Client()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				l, err := c.AcquireFair(ctx, k, ttl)
				if err != nil {
					t.Errorf("process %d round %d: AcquireFair: %v", p, r, err)
					return
				}
				if n := inside.Add(1); n != 1 {
					t.Errorf("%d holders at once", n)
				}
				mu.Lock()
				tokens = append(tokens, l.Token)
				mu.Unlock()
				time.Sleep(time.Millisecond)
				inside.Add(-1)
				if err := c.Release(ctx, l); err != nil {
					t.Errorf("process %d: Release: %v", p, err)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // let them queue behind the holder
	cancel()
	if err := <-qdone; !errors.Is(err, context.Canceled) {
		t.Errorf("AcquireFair whose context was cancelled: %v, want context.Canceled", err)
	}
	if err := holder.Release(ctx, l0); err != nil {
		t.Fatalf("Release (hand-off): %v", err)
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(tokens) != procs*rounds {
		t.Errorf("%d turns, want %d", len(tokens), procs*rounds)
	}
	last := l0.Token
	for i, tok := range tokens {
		if tok <= last {
			t.Errorf("turn %d: token %d <= the previous turn's %d", i, tok, last)
		}
		last = tok
	}
}
