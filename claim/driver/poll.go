package driver

// The poller is the Notifier of drivers whose substrate cannot push
// (DynamoDB, memcached). The client asks it for one subscription per key
// per process, however many waiters that process has, and the Poller runs
// one loop per such key that reads a cheap state (a NewBatchPoller sends
// the reads of loops due at about the same time together, one request
// for many keys),
// with jittered exponential backoff (a few milliseconds at first, capped)
// that never sleeps past the holder's known lease expiry, and wakes the
// key's subscribers on the first read that shows the key released,
// notified, expired or taken over.
//
// A PollState has two parts. Token must change for good (never come back to a
// value it had) on every Release and Notify: a counter both bump. A token
// that only says "held or free" is not enough: a claim and a release
// between two reads look like no change, and a waiter that checked in
// between (and saw the key held) would sleep through the release. Holder
// names the live claim seen, or is empty when the key is free or its lease
// ran out. A read wakes the subscribers if its Token differs from the
// previous read's, or if the previous read saw a holder and this one sees
// another or none (released, expired, taken over). A new claim on a key
// that was free (Holder from empty to set, Token unchanged) wakes nobody:
// waiters wait for the end of a claim, not for its start, and a waiter
// checks the key after its Subscribe returned, so it sees such a claim
// itself. Subscribe reads the first state before it returns, so any
// release or notification that lands after Subscribe returns changes the
// Token from every state read before it and is seen by a later read:
// "subscribe, check, wait" never loses a wake-up. A claim that expires
// (no release) and is taken over between two reads that saw the key free
// and then held is not seen: no release happened, and waiters bound their
// wait by the lease they saw (claim.Client.Acquire, flight). Wake-ups can
// still be spurious (a takeover, an expiry); receivers re-check.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// PollState is what one read of a key saw.
type PollState struct {
	// Token changes on every Release and Notify of the key and never
	// comes back to a value it had. A read whose Token differs from the
	// previous read's wakes the key's subscribers.
	Token string
	// Holder identifies the live claim seen ("" if the key is free or its
	// lease has run out). A read whose Holder differs from the previous
	// read's non-empty Holder wakes the key's subscribers; a Holder that
	// appears where there was none (a claim on a free key) does not.
	Holder string
	// Expires is when the state will change by itself (the holder's lease
	// expiry as far as the backend can tell), or zero if nothing is due.
	// The poller never sleeps past it.
	Expires time.Time
	// Value, when Valued, is the value stored by the CommitRelease that
	// set Token, read in the same request as the rest (by a
	// PollValueReader, for SubscribeWithValue): the wake-up it causes
	// carries it, so that a woken waiter answers without reading the key.
	Value  []byte
	Valued bool
}

// PollReader reads the state of key. It is called from Subscribe (with the
// subscriber's context) and from the key's loop.
type PollReader func(ctx context.Context, key string) (PollState, error)

// PollValueReader is a PollReader that can also read the value a
// CommitRelease stored (PollState.Value), for a driver that can tell, in
// the same request, that the state's Token was set by a CommitRelease.
// since is the Token the key's previous read saw: the value is wanted
// only when the Token differs from it (a wake-up), and not at all when
// since is "" (a subscription's first read). A reader may leave Valued
// false whenever it likes (a value over its size bound, say): waiters
// then read the key.
type PollValueReader func(ctx context.Context, key, since string) (PollState, error)

// PollManyReader reads the states of many keys in one request (a
// multi-get, a batch read), since[i] being keys[i]'s as for a
// PollValueReader: it returns one state per key, in keys' order, or an
// error for all of them. See NewBatchPoller.
type PollManyReader func(ctx context.Context, keys, since []string) ([]PollState, error)

// Defaults for PollOptions.
const (
	DefaultPollMin         = 2 * time.Millisecond
	DefaultPollMax         = 50 * time.Millisecond
	DefaultPollReadTimeout = 5 * time.Second
)

// PollOptions tune a Poller. nil, and every zero field, means the default.
type PollOptions struct {
	// Min is the first polling interval after a change (default 2 ms).
	Min time.Duration
	// Max caps the interval (default 50 ms): the longest a release goes
	// unnoticed, and the rate (1/Max per key per Backend) at which an idle
	// wait reads the substrate.
	Max time.Duration
	// ReadTimeout bounds each read of the loop (default 5 s).
	ReadTimeout time.Duration
	// Rand returns a uniform random number in [0, 1) for jitter; nil
	// means math/rand/v2.Float64.
	Rand func() float64
	// NoHoldEstimate, if true, reads on the backoff's schedule only. By
	// default a Poller learns how long the claims it sees are held and
	// moves a read to where the claim a loop waits on is likely to end
	// (as many reads, placed better: see holdTimes).
	NoHoldEstimate bool
}

func (o *PollOptions) withDefaults() PollOptions {
	var r PollOptions
	if o != nil {
		r = *o
	}
	if r.Min <= 0 {
		r.Min = DefaultPollMin
	}
	if r.Max <= 0 {
		r.Max = DefaultPollMax
	}
	if r.Max < r.Min {
		r.Max = r.Min
	}
	if r.ReadTimeout <= 0 {
		r.ReadTimeout = DefaultPollReadTimeout
	}
	if r.Rand == nil {
		r.Rand = rand.Float64
	}
	return r
}

// Backoff computes polling intervals: Min after Reset, doubling up to Max,
// each scaled by a random factor in [1/2, 1], and cut short at a known
// expiry. The zero value is not usable; set Min, Max and Rand.
type Backoff struct {
	Min, Max time.Duration
	Rand     func() float64
	cur      time.Duration
}

// Reset makes the next interval start again from Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Next returns how long to sleep before the next read, and whether the
// sleep was cut short to end at expires. The interval (before jitter) is
// Min after Reset and doubles at every call up to Max; the sleep is a
// random fraction in [1/2, 1] of it, so it lies in [Min/2, Max]. If
// expires is after now, the sleep never ends later than expires.
func (b *Backoff) Next(now, expires time.Time) (time.Duration, bool) {
	if b.cur <= 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	f := b.Rand()
	if f < 0 || f >= 1 {
		f = 0
	}
	d := b.cur/2 + time.Duration(f*float64(b.cur-b.cur/2))
	if !expires.IsZero() {
		if left := expires.Sub(now); left > 0 && left <= d {
			return left, true
		}
	}
	return d, false
}

// Wakes reports whether a read that saw next, after one that saw prev,
// wakes the key's subscribers: the Token changed (a release or a
// notification), or the claim prev saw is gone or replaced. A claim on a
// key prev saw free does not wake.
func Wakes(prev, next PollState) bool {
	return next.Token != prev.Token || (prev.Holder != "" && next.Holder != prev.Holder)
}

// Poller implements Notifier's Subscribe and Unsubscribe by polling. It is
// safe for concurrent use.
type Poller struct {
	read  PollValueReader
	opt   PollOptions
	batch *pollBatcher // nil: each loop reads its key alone

	// Reads in flight are not cut short by Unsubscribe (a request
	// aborted mid-way costs the server more than finishing it, and
	// crashes some emulators); Close cancels them after closeGrace.
	readCtx     context.Context
	cancelReads context.CancelFunc

	mu     sync.Mutex
	keys   map[string]*pollLoop
	closed bool
	wg     sync.WaitGroup
	nloops int // loops started, for tests

	holds holdTimes     // how long the claims this Poller's loops saw were held
	reads atomic.Uint64 // reads made, for Reads
}

// Options returns the Poller's options, defaults filled in.
func (p *Poller) Options() PollOptions { return p.opt }

// Reads returns how many reads the Poller has made (Subscribe's and its
// loops'), for metrics and benchmarks: requests to the backend, a batch
// of keys read together (NewBatchPoller) counting as one.
func (p *Poller) Reads() uint64 { return p.reads.Load() }

// PollCounter is optional, for a driver that polls: PollReads returns how
// many reads its Pollers have made so far. Benchmarks (conformance.Bench)
// report it per second of waiting.
type PollCounter interface {
	PollReads() uint64
}

// closeGrace is how long Close lets reads in flight finish.
const closeGrace = time.Second

// NewPoller returns a Poller that reads with read and calls a key's wake
// when its state changed, or when a read failed (so that waiters re-check
// and see the error themselves).
func NewPoller(read PollReader, opt *PollOptions) *Poller {
	return NewValuePoller(func(ctx context.Context, key, _ string) (PollState, error) { return read(ctx, key) }, opt)
}

// NewValuePoller is NewPoller with a reader that can carry a
// CommitRelease's value: SubscribeWithValue's wake-ups then carry it.
func NewValuePoller(read PollValueReader, opt *PollOptions) *Poller {
	reads, cancel := context.WithCancel(context.Background())
	return &Poller{read: read, opt: opt.withDefaults(), keys: map[string]*pollLoop{}, readCtx: reads, cancelReads: cancel}
}

// NewBatchPoller is NewValuePoller for a driver that can read many keys'
// states in one request (readMany, at most maxKeys keys a request; less
// than 1 means 1). Subscribe's first read is read's; the loops' reads go
// together: a loop whose read falls due while pollSenders requests are
// in flight queues it, and the next request carries every queued read
// (up to maxKeys), so a process waiting on many keys at once (a batch herd:
// hundreds of keys, each with its loop) sends a few requests per round of
// polling instead of one per key, while a lone loop's read goes out at
// once, and alone (read, not readMany), as with NewValuePoller. A read waits at most for the requests
// ahead of it, each bounded by ReadTimeout.
func NewBatchPoller(read PollValueReader, readMany PollManyReader, maxKeys int, opt *PollOptions) *Poller {
	p := NewValuePoller(read, opt)
	p.batch = &pollBatcher{read: readMany, max: max(maxKeys, 1)}
	return p
}

// pollSenders is how many batched reads a Poller has in flight at most.
const pollSenders = 2

// pollBatcher groups the loops' reads of a NewBatchPoller. A loop whose
// read is due sends it, with whatever reads are queued, if fewer than
// pollSenders requests are in flight (busy); else it queues its read and
// waits. A sender that finds reads queued once its request is answered
// hands the lead to the first of them (busy unchanged), whose loop sends
// the next request: no goroutine of its own, and no loop sends for
// others for longer than one request.
type pollBatcher struct {
	read PollManyReader
	max  int

	mu    sync.Mutex
	queue []*pollReq
	busy  int
}

// pollReq is one loop's read: its result, or lead (this loop sends the
// next request), is set before done is closed.
type pollReq struct {
	key, since string
	st         PollState
	err        error
	lead       bool
	done       chan struct{}
}

// readBatched is a loop's read of key through p.batch.
func (p *Poller) readBatched(key, since string) (PollState, error) {
	b := p.batch
	r := &pollReq{key: key, since: since}
	b.mu.Lock()
	if b.busy >= pollSenders {
		r.done = make(chan struct{})
		b.queue = append(b.queue, r)
		b.mu.Unlock()
		<-r.done
		if !r.lead {
			return r.st, r.err
		}
	} else {
		b.busy++
		b.mu.Unlock()
	}
	p.sendBatch(r)
	return r.st, r.err
}

// sendBatch sends own's read and up to max-1 queued ones in one request,
// answers them, and hands the lead on (or gives up its place in busy).
func (p *Poller) sendBatch(own *pollReq) {
	b := p.batch
	b.mu.Lock()
	n := min(len(b.queue), b.max-1)
	reqs := make([]*pollReq, 0, n+1)
	reqs = append(append(reqs, own), b.queue[:n]...)
	b.queue = b.queue[:copy(b.queue, b.queue[n:])]
	clear(b.queue[len(b.queue):cap(b.queue)])
	b.mu.Unlock()

	rctx, cancel := context.WithTimeout(p.readCtx, p.opt.ReadTimeout)
	p.reads.Add(1)
	var sts []PollState
	var err error
	if len(reqs) == 1 {
		// Alone: the single-key read, as NewValuePoller's loops make it.
		var st PollState
		st, err = p.read(rctx, own.key, own.since)
		sts = []PollState{st}
	} else {
		keys, since := make([]string, len(reqs)), make([]string, len(reqs))
		for i, r := range reqs {
			keys[i], since[i] = r.key, r.since
		}
		sts, err = b.read(rctx, keys, since)
	}
	cancel()
	if err == nil && len(sts) != len(reqs) {
		err = fmt.Errorf("driver: a poll read returned %d states for %d keys", len(sts), len(reqs))
	}
	for i, r := range reqs {
		if err != nil {
			r.err = err
		} else {
			r.st = sts[i]
		}
	}

	b.mu.Lock()
	var next *pollReq
	if len(b.queue) > 0 {
		next = b.queue[0]
		next.lead = true
		b.queue = b.queue[:copy(b.queue, b.queue[1:])]
		clear(b.queue[len(b.queue):cap(b.queue)])
	} else {
		b.busy--
	}
	b.mu.Unlock()
	for _, r := range reqs[1:] {
		close(r.done)
	}
	if next != nil {
		close(next.done)
	}
}

// pollLoop is one key's loop. Its wake is called under mu, and never once
// stopped is set: after Unsubscribe returns, the key's wake is not called.
type pollLoop struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	wake   func(value []byte)
	off    bool
}

func (l *pollLoop) fire(value []byte) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.off {
		l.wake(value)
	}
}

func (l *pollLoop) stop() {
	l.cancel()
	l.mu.Lock()
	l.off = true
	l.mu.Unlock()
}

// Subscribe reads key's state and starts its loop, which calls wake. The
// read is done before Subscribe returns: a change after it is always seen.
// A failed read is returned and starts nothing. It fails with ErrClosed
// after Close.
func (p *Poller) Subscribe(ctx context.Context, key string, wake func()) error {
	return p.SubscribeWithValue(ctx, key, func([]byte) { wake() })
}

// SubscribeWithValue is Subscribe for a driver's SubscribeValue
// (driver.ValueNotifier): a wake-up caused by a read whose state carries
// a value (a NewValuePoller's reader's PollState.Value) passes it to
// wake, every other wake-up nil. (Not named SubscribeValue, so that a
// driver embedding a Poller does not become a ValueNotifier by it.)
func (p *Poller) SubscribeWithValue(ctx context.Context, key string, wake func(value []byte)) error {
	if p.isClosed() {
		return ErrClosed
	}
	p.reads.Add(1)
	st, err := p.read(ctx, key, "")
	if err != nil {
		return err
	}
	at := time.Now()
	lctx, cancel := context.WithCancel(context.Background())
	l := &pollLoop{cancel: cancel, wake: wake}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		cancel()
		return ErrClosed
	}
	if old := p.keys[key]; old != nil {
		old.stop() // the client never subscribes twice; never leave a loop behind
	}
	p.keys[key] = l
	p.nloops++
	p.wg.Add(1)
	p.mu.Unlock()
	go p.loop(lctx, l, key, st, at)
	return nil
}

// Unsubscribe stops key's loop. It neither waits for nor aborts a read in
// flight: the loop ends when it completes, without waking anyone.
func (p *Poller) Unsubscribe(key string) {
	p.mu.Lock()
	l := p.keys[key]
	delete(p.keys, key)
	p.mu.Unlock()
	if l != nil {
		l.stop()
	}
}

// Close stops every loop and waits for them to return: reads in flight
// get a second to finish, then are cancelled. Later Subscribe calls fail
// with ErrClosed. Idempotent.
func (p *Poller) Close() {
	p.mu.Lock()
	p.closed = true
	for k, l := range p.keys {
		l.stop()
		delete(p.keys, k)
	}
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		p.wg.Wait()
		close(done)
	}()
	grace := time.NewTimer(closeGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		p.cancelReads()
		<-done
	}
	p.cancelReads()
}

// Len returns the number of keys being polled.
func (p *Poller) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.keys)
}

func (p *Poller) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

func (p *Poller) loop(ctx context.Context, l *pollLoop, key string, st PollState, at time.Time) {
	defer p.wg.Done()
	bo := Backoff{Min: p.opt.Min, Max: p.opt.Max, Rand: p.opt.Rand}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	failing := false
	// When this loop first and last saw the claim it sees (st.Holder).
	var seen, held time.Time
	if st.Holder != "" {
		seen, held = at, at
	}
	probed := false    // a read of the window around the claim's likely end was made
	searching := false // the window passed with the claim still there
	for {
		now := time.Now()
		cur := bo.cur
		est, learned := time.Duration(0), false
		if !p.opt.NoHoldEstimate && st.Holder != "" {
			est, learned = p.holds.estimate()
		}
		if !p.opt.NoHoldEstimate {
			// While a claim is expected to last E, the backoff starts
			// at E/2 (at most Max) rather than Min: the reads saved
			// early on pay for those of the window at its likely end.
			bo.Min = p.opt.Min
			if learned && !searching {
				bo.Min = min(max(bo.Min, est/2), p.opt.Max)
			}
		}
		d, atExpiry := bo.Next(now, st.Expires)
		if learned {
			// The reads of the window around the claim's likely end
			// (holdTimes), the first in place of the backoff's next read
			// if that would come before it but the one after it would
			// not (never past a known expiry, nor more than Max after
			// this read).
			pd, first, ok := probe(now, seen, est, p.opt.Min)
			switch {
			case ok && (pd < d || first && !atExpiry && pd < 2*d && pd <= p.opt.Max):
				// In place of the backoff's read, which stays due: the
				// backoff does not grow for it.
				d, atExpiry, bo.cur = pd, false, cur
				probed = true
			case !ok && probed:
				// The window passed with the claim still there: it ends
				// later than usual. Look again soon, backing off from
				// Min, so that its end is seen (and learned) closely.
				probed, searching = false, true
				bo.Min = p.opt.Min
				bo.Reset()
				d, atExpiry = bo.Next(now, st.Expires)
			}
		}
		timer.Reset(d)
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		ns, err := p.loopRead(key, st.Token)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			// Wake once per failing streak: waiters re-check and meet
			// the error themselves. The last good state stays the
			// reference, so a change hidden by the failures wakes too.
			if !failing && !errors.Is(err, ErrClosed) {
				l.fire(nil)
			}
			failing = true
			continue
		}
		failing = false
		got := time.Now()
		if ns.Holder != st.Holder || ns.Token != st.Token {
			if st.Holder != "" && !atExpiry {
				// The claim seen ended (released, handed on, taken
				// over) between the last read that saw it and this
				// one: in the middle, as far as this loop can tell.
				p.holds.add(held.Sub(seen) + got.Sub(held)/2)
			}
			seen, held, probed, searching = got, got, false, false
			if ns.Holder == "" {
				seen, held = time.Time{}, time.Time{}
			}
		} else if ns.Holder != "" {
			held = got
		}
		if Wakes(st, ns) {
			var v []byte
			if ns.Valued && ns.Token != st.Token {
				v = ns.Value
				if v == nil {
					v = []byte{}
				}
			}
			l.fire(v)
			bo.Reset()
		} else if atExpiry {
			// Due to change and did not yet (server-side expiry lags
			// the holder's clock): look again soon.
			bo.Reset()
		}
		st = ns
	}
}

// loopRead is a loop's read of key, whose last read saw the Token since:
// alone, or batched with other loops' (NewBatchPoller).
func (p *Poller) loopRead(key, since string) (PollState, error) {
	if p.batch != nil {
		return p.readBatched(key, since)
	}
	rctx, cancel := context.WithTimeout(p.readCtx, p.opt.ReadTimeout)
	defer cancel()
	p.reads.Add(1)
	return p.read(rctx, key, since)
}

// holdTimes learns how long claims are held, as one Poller's loops see
// them, so that a loop reads when the claim it sees is likely to end
// rather than only when its backoff says (issue 15: a poll sees a release
// half a backoff interval late on average, 25 ms at the 50 ms cap). Each
// sample is the time from the first read that saw a claim to the middle
// of the gap between the last read that saw it and the first that saw it
// end (released, handed over, taken over, or notified: not an expiry the
// loop was waiting for). The estimate E is the median of the last
// holdSamples samples (none before holdMinSamples).
//
// A loop whose claim it first saw at S, with an estimate E:
//   - backs off from E/2 (at most Max) rather than Min: fewer reads
//     early in the wait, where the claim is not expected to end, and no
//     gap longer than Max, as without the estimate;
//   - reads at S+E-Min/2 and S+E+Min/2, the first in place of the
//     backoff's next read if that would come before it but the one after
//     it would not (never more than Max after the last read, nor past a
//     known expiry);
//   - if the claim is still there after that window, backs off from Min
//     again, so that a claim held longer than usual is seen ending soon
//     after it does, and its sample is close.
//
// When claims are held about as long as usual (a cache's loads of
// similar cost), their ends are seen within about Min/2, and the gap
// around each end is Min, so the samples are close and the estimate
// settles within a few waits; a claim held for less or more is seen by
// the backoff's reads, and its sample moves the estimate. The reads per
// wait, and per second of waiting, stay at or below the backoff's alone:
// TestPollerHoldEstimate measures both, with claims held alike and with
// holds spread over 200–400 ms.
// PollOptions.NoHoldEstimate turns it off.
type holdTimes struct {
	mu      sync.Mutex
	samples [holdSamples]time.Duration
	n       int // samples taken, all time
	est     time.Duration
	ok      bool
}

const (
	holdSamples    = 8
	holdMinSamples = 4
)

func (h *holdTimes) add(d time.Duration) {
	if d < 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.samples[h.n%holdSamples] = d
	h.n++
	k := min(h.n, holdSamples)
	if k < holdMinSamples {
		return
	}
	s := make([]time.Duration, k)
	copy(s, h.samples[:k])
	slices.Sort(s)
	h.est, h.ok = s[k/2], true
}

// probe returns how long from now until the next read of the window
// around the likely end (est, reads step apart) of a claim first seen at
// seen, if one is still to come, and whether it is the window's first.
func probe(now, seen time.Time, est, step time.Duration) (time.Duration, bool, bool) {
	if seen.IsZero() {
		return 0, false, false
	}
	for i, t := range [...]time.Time{seen.Add(est - step/2), seen.Add(est + step/2)} {
		if t.After(now) {
			return t.Sub(now), i == 0, true
		}
	}
	return 0, false, false
}

// estimate returns the estimate, if there is one.
func (h *holdTimes) estimate() (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.est, h.ok
}
