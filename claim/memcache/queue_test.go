package memcache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// queued waits until key's lock holds n queue entries, reading it with
// c's driver.
func queued(t *testing.T, c *claim.Client, key string, n int) {
	t.Helper()
	ctx := backendtest.Context(t)
	for {
		it, err := drv(c).readLock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if it != nil && len(parseState(it.Value).queue) == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("key %q never had %d queue entries", key, n)
		case <-time.After(time.Millisecond):
		}
	}
}

// TestFairHandOffCostsWaiterNothing: a waiter in another process gets
// the key handed over without a claim of its own: from the holder's
// release to its AcquireFair returning, its client sends nothing but the
// grant poll's gets (no add, cas or incr), and the lease it returns is
// the one the lock records.
func TestFairHandOffCostsWaiterNothing(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := backendtest.Context(t)
	w := &wire{verbs: map[string]int{}}
	mc := gomemcache.New(srv.Addr())
	mc.DialContext = w.dial
	defer mc.Close()
	waiter, err := New(mc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	holder := backendtest.Open(t, srv.URL())
	key := securitytest.Unique(t) + "fair-cost"
	l0, err := holder.AcquireFair(ctx, key, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := waiter.AcquireFair(ctx, key, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	queued(t, holder, key, 1)
	w.reset()
	if err := holder.Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	l := <-got
	for _, verb := range []string{"add", "cas", "incr", "set", "delete"} {
		if n := w.count(verb); n != 0 {
			t.Errorf("the waiter's client sent %d %s commands during the hand-over, want none", n, verb)
		}
	}
	if w.count("gets") == 0 {
		t.Errorf("the waiter's client sent no gets: how did the grant reach it?")
	}
	if l.Token <= l0.Token || !l.Fair {
		t.Errorf("granted lease: token %d (previous %d), fair %v", l.Token, l0.Token, l.Fair)
	}
	it, err := drv(holder).readLock(ctx, key)
	if err != nil || it == nil {
		t.Fatalf("lock after the hand-over: %v, %v", it, err)
	}
	if st := parseState(it.Value); st.holder != l.Holder || st.token != l.Token || len(st.queue) != 0 {
		t.Errorf("lock after the hand-over: holder %q token %d queue %v, want %q %d none", st.holder, st.token, st.queue, l.Holder, l.Token)
	}
	if err := waiter.Release(ctx, l); err != nil {
		t.Errorf("release of the granted lease: %v", err)
	}
	// Uncontended: the subscription's read, then gets, incr, add (the
	// fence counter made by a claim before).
	free := key + "-free"
	if err := holder.Release(ctx, backendtest.Claim(t, holder, free, time.Second)); err != nil {
		t.Fatal(err)
	}
	w.reset()
	l, err = waiter.AcquireFair(ctx, free, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if g, i, a, c := w.count("gets"), w.count("incr"), w.count("add"), w.count("cas"); g < 2 || i != 1 || a != 1 || c != 0 {
		t.Errorf("uncontended AcquireFair: %d gets, %d incr, %d add, %d cas; want 2 (and polls), 1, 1, 0", g, i, a, c)
	}
	_ = waiter.Release(ctx, l)
}

// TestFairHandOffSameProcess: a waiter in the holder's own process gets
// the lease HandOff returns, not a poll's: its poll loop never polls
// (poll_min and poll_max an hour), and it holds the key all the same.
func TestFairHandOffSameProcess(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "poll_min", "1h", "poll_max", "1h"))
	key := securitytest.Unique(t) + "fair-local"
	l0, err := c.AcquireFair(ctx, key, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := c.AcquireFair(ctx, key, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	queued(t, c, key, 1)
	if err := c.Release(ctx, l0); err != nil {
		t.Fatal(err)
	}
	select {
	case l := <-got:
		if l.Token <= l0.Token {
			t.Errorf("token %d <= %d", l.Token, l0.Token)
		}
		_ = c.Release(ctx, l)
	case <-ctx.Done():
		t.Fatal("the local waiter never got the lease HandOff returned")
	}
}

// TestFairConflicts: waiters renewing their entries every 5 ms (four
// waiters: 800 renewals a second, as many as 270 waiters with a 1 s TTL
// make) while the holder hands off: every cas that lost to a renewal is
// read again, so each HandOff succeeds, and the key goes to the waiters
// in the order they queued, with increasing tokens; a waiter's renewal
// after its grant returns its lease (step 2); the holder's Extend keeps
// the queue and never takes a conflict for a loss. (At a renewal every 0.5 ms
// each, a HandOff fails now and then after handOffTries conflicts.)
func TestFairConflicts(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := backendtest.Context(t)
	c := backendtest.Open(t, srv.URL())
	q := drv(c)
	// The hand-offs on a client of their own, whose reads are counted: a
	// read beyond one per HandOff is a cas that lost to a renewal.
	w := &wire{verbs: map[string]int{}}
	mc := gomemcache.New(srv.Addr())
	mc.DialContext = w.dial
	defer mc.Close()
	hc, err := New(mc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	key := securitytest.Unique(t) + "fair-conflicts"
	const ttl = 30 * time.Second
	prev, err := q.Enqueue(ctx, key, "holder", ttl)
	if err != nil {
		t.Fatal(err)
	}
	const n = 4
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("w%d", i)
		if _, err := q.Enqueue(ctx, key, ids[i], ttl); !errors.Is(err, driver.ErrHeld) {
			t.Fatalf("Enqueue %s: %v, want ErrHeld", ids[i], err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := map[string]uint64{}
	found := make(chan string, n)
	renewals := 0
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				l, err := q.Enqueue(ctx, key, id, ttl)
				mu.Lock()
				renewals++
				mu.Unlock()
				if err == nil {
					mu.Lock()
					granted[id] = l.Token
					mu.Unlock()
					found <- id
					return
				}
				if !errors.Is(err, driver.ErrHeld) {
					t.Errorf("renewal of %s: %v", id, err)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	// The holder's renewals race them too: a conflict is not a loss.
	for i := range 3 {
		if _, err := drv(hc).Extend(ctx, prev, ttl); err != nil {
			t.Fatalf("Extend %d under renewals: %v", i, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.reset()
	for i := range n {
		next, err := drv(hc).HandOff(ctx, prev)
		if err != nil {
			t.Fatalf("HandOff %d under renewals: %v", i, err)
		}
		if next.Holder != ids[i] || next.Token <= prev.Token {
			t.Fatalf("HandOff %d granted %s token %d (previous %d), want %s", i, next.Holder, next.Token, prev.Token, ids[i])
		}
		prev = next
		// The granted waiter finds its lease by renewing before it is
		// handed on; the others' renewals race the next hand-off.
		if id := <-found; id != next.Holder {
			t.Fatalf("%s found a grant; %s was granted", id, next.Holder)
		}
	}
	wg.Wait()
	t.Logf("%d renewals raced %d hand-offs, which read the lock %d times (%d cas lost to renewals)", renewals, n, w.count("gets"), w.count("gets")-n)
	if last, err := q.HandOff(ctx, prev); err != nil || last.Holder != "" {
		t.Errorf("last HandOff, nobody queued: %v, %v", last, err)
	}
	for _, id := range ids {
		if _, ok := granted[id]; !ok {
			t.Errorf("waiter %s never found its grant by renewing", id)
		}
	}
}

// TestFairLockFormat: the fair fields round-trip, and a lock holding them
// reads, to the plain format's parser (parseLock, and that of versions
// without a queue), as its holder and its end: the queue and token ride
// in the holder field, before the first space.
func TestFairLockFormat(t *testing.T) {
	now := time.UnixMilli(1_800_000_000_123)
	st := lockState{holder: "aa", latest: now.Add(12 * time.Second), fair: true, token: 42, sec: 10, sighted: true,
		queue: []fairEntry{{"bb", 3, now.Add(3 * time.Second), true}, {"cc", 60, now.Add(time.Minute), false}}}
	v := st.encode()
	got := parseState(v)
	if got.holder != st.holder || !got.latest.Equal(st.latest) || !got.fair || got.token != 42 || got.sec != 10 || !got.sighted ||
		!slices.EqualFunc(got.queue, st.queue, func(a, b fairEntry) bool {
			return a.holder == b.holder && a.sec == b.sec && a.end.Equal(b.end) && a.sighted == b.sighted
		}) {
		t.Errorf("round trip of %q: %+v", v, got)
	}
	// The sighted mark is a leading 0, which earlier versions' parsers
	// (strconv.ParseInt) read as the same number.
	if f := strings.Split(strings.Fields(string(v))[0], ";"); len(f) < 5 || f[2] != "010" || !strings.HasPrefix(f[3], "bb,03,") || !strings.HasPrefix(f[4], "cc,60,") {
		t.Errorf("fields of %q: want TTLSEC 010, entries bb,03,… and cc,60,…", v)
	} else if n, err := strconv.ParseInt(f[2], 10, 64); err != nil || n != 10 {
		t.Errorf("ParseInt(%q) = %d, %v: earlier versions would misread it", f[2], n, err)
	}
	if h, latest := parseLock(v); h != "aa" || !latest.Equal(st.latest) {
		t.Errorf("parseLock(%q) = %q, %v", v, h, latest)
	}
	if exp, err := got.expiration(now); err != nil || exp != 60+lockKeep {
		t.Errorf("expiration = %d, %v; want the last entry's end plus lockKeep (%d)", exp, err, 60+lockKeep)
	}
	plain := parseState([]byte("aa 1800000000123"))
	if plain.fair || plain.holder != "aa" || plain.latest.UnixMilli() != 1_800_000_000_123 {
		t.Errorf("plain lock parsed as %+v", plain)
	}
}

// FuzzParseState: no lock value panics the parser, and what it parses
// encodes to a value that parses the same.
func FuzzParseState(f *testing.F) {
	f.Add([]byte("aa;42;10;bb,3,1800000003123;cc,60,1800000060123 1800000012123"))
	f.Add([]byte("aa 1800000012123"))
	f.Add([]byte("~1f:aa 1"))
	f.Add([]byte(";;;,,;"))
	f.Fuzz(func(t *testing.T, v []byte) {
		st := parseState(v)
		st.fair = true
		again := parseState(st.encode())
		if again.holder != st.holder || again.token != st.token || len(again.queue) != len(st.queue) {
			t.Errorf("%q: %+v, then %+v", v, st, again)
		}
	})
}

// BenchmarkFairHandoff is BenchmarkPollHandoff for AcquireFair: a holder
// holds the key for hold, then releases it (HandOff) while a waiter
// blocks in AcquireFair; from the start of Release to AcquireFair
// returning, reported as handoff-p50-µs. The waiter is in another client
// (process=other: the grant reaches it by its grant poll, with
// STAMPEDE_POLL_MIN and STAMPEDE_POLL_MAX's cadence) or in the holder's
// own (process=same: HandOff's return hands it the lease).
func BenchmarkFairHandoff(b *testing.B) {
	for _, same := range []bool{false, true} {
		for _, hold := range []time.Duration{20 * time.Millisecond, 300 * time.Millisecond} {
			name := fmt.Sprintf("process=other/hold=%s", hold)
			if same {
				name = fmt.Sprintf("process=same/hold=%s", hold)
			}
			b.Run(name, func(b *testing.B) {
				ctx := context.Background()
				url := testserver.Shared(b, testserver.Memcache).URL()
				if o := backendtest.PollOptions(); o.Min > 0 || o.Max > 0 {
					url = backendtest.WithQuery(b, url, "poll_min", o.Min.String(), "poll_max", o.Max.String())
				}
				holder := backendtest.Open(b, url)
				waiter := holder
				if !same {
					waiter = backendtest.Open(b, url)
				}
				key := fmt.Sprintf("fair-handoff-%s-%v-%d", hold, same, time.Now().UnixNano())
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					l, err := holder.AcquireFair(ctx, key, 30*time.Second)
					if err != nil {
						b.Fatal(err)
					}
					type result struct {
						at  time.Time
						err error
					}
					res := make(chan result, 1)
					go func() {
						wl, err := waiter.AcquireFair(ctx, key, 30*time.Second)
						at := time.Now()
						if err == nil {
							err = waiter.Release(ctx, wl)
						}
						res <- result{at, err}
					}()
					time.Sleep(hold)
					start := time.Now()
					if err := holder.Release(ctx, l); err != nil {
						b.Fatal(err)
					}
					r := <-res
					if r.err != nil {
						b.Fatal(r.err)
					}
					lat = append(lat, r.at.Sub(start))
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "handoff-p50-µs")
			})
		}
	}
}

// TestFairCommitReleaseMany: a fair lease in a batch is handed over, not
// released: the queued waiter (another client) is granted the key (its
// client sends no add, cas or incr meanwhile: it did not claim it after
// a release), and reads the value committed.
func TestFairCommitReleaseMany(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := backendtest.Context(t)
	w := &wire{verbs: map[string]int{}}
	mc := gomemcache.New(srv.Addr())
	mc.DialContext = w.dial
	defer mc.Close()
	waiter, err := New(mc, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	holder := backendtest.Open(t, srv.URL())
	key := securitytest.Unique(t) + "fair-batch"
	l0, err := holder.AcquireFair(ctx, key, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan claim.Lease, 1)
	go func() {
		l, err := waiter.AcquireFair(ctx, key, 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	queued(t, holder, key, 1)
	w.reset()
	errs, err := holder.CommitReleaseMany(ctx, []claim.Commit{{Lease: l0, Value: []byte("v"), TTL: time.Minute}})
	if err != nil || errs[0] != nil {
		t.Fatalf("CommitReleaseMany: %v, %v", err, errs)
	}
	l := <-got
	if l.Token <= l0.Token {
		t.Errorf("token %d <= %d", l.Token, l0.Token)
	}
	for _, verb := range []string{"add", "cas", "incr"} {
		if n := w.count(verb); n != 0 {
			t.Errorf("the waiter's client sent %d %s commands: it claimed the key instead of being handed it", n, verb)
		}
	}
	if v, err := waiter.Get(ctx, key); err != nil || string(v) != "v" {
		t.Errorf("Get after the batch: %q, %v", v, err)
	}
	_ = waiter.Release(ctx, l)
}
