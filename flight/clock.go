package flight

import (
	"sync"
	"sync/atomic"
	"time"
)

// l1Clock is L1's clock (an otter.Clock). otter reads its clock on every
// lookup of a cache with per-entry expiry, and reading the system clock is
// a third of an L1 hit on a KVM guest (~20 ns of ~65). A coarse clock (a
// goroutine reads the time once per millisecond, a lookup loads it) saves
// that, but its goroutine wakes 1000 times a second, which costs an
// otherwise idle process ~4 % of a core here (BenchmarkCoarseClockIdle).
//
// So the clock is coarse only while the Cache is busy: it reads the
// system clock on every call (as otter's default clock does) until L1
// answers at least clockBusyRate hits per second; then a goroutine reads
// the time every clockResolution and a call returns its last reading. The
// goroutine stops once the rate falls below clockBusyRate over a
// clockWindow, and on Close. A stopped clock checks the rate at most once
// per clockWindow, at a call (an atomic load and a compare per call): no
// goroutine runs while the Cache is idle.
//
// While coarse, the time lags by up to clockResolution (more when the
// goroutine cannot run in time): an L1 entry may outlive its L1 TTL by
// that much. Readings count nanoseconds from the Unix epoch on the
// monotonic clock, as otter's default clock does.
type l1Clock struct {
	start     time.Time
	startNano int64
	hits      func() uint64 // L1 hits so far
	rate      uint64        // clockBusyRate (a test may raise it)

	now  atomic.Int64 // the goroutine's last reading; 0 when none runs
	next atomic.Int64 // a stopped clock checks the rate at a call at or after this reading

	mu        sync.Mutex
	running   bool
	closed    bool
	lastHits  uint64 // hits at lastCheck
	lastCheck int64
	stop      chan struct{}
	wg        sync.WaitGroup
	tickers   []*time.Ticker // Tick's, stopped by Close
}

const (
	clockResolution = time.Millisecond
	clockWindow     = 10 * time.Millisecond
	// clockBusyRate (hits per second) is where the coarse clock pays for
	// itself on this VM even in a process that does nothing but hits:
	// ~20 ns saved per hit against a tick of ~40 µs when the process would
	// otherwise sleep (BenchmarkClockAtRate measures both sides).
	clockBusyRate = 500_000
)

func newL1Clock(hits func() uint64) *l1Clock {
	now := time.Now()
	c := &l1Clock{start: now, startNano: now.UnixNano(), hits: hits, rate: clockBusyRate, stop: make(chan struct{})}
	c.lastCheck = c.startNano
	c.next.Store(c.startNano + int64(clockWindow))
	return c
}

func (c *l1Clock) precise() int64 { return c.startNano + int64(time.Since(c.start)) }

// NowNano returns the time in nanoseconds since the Unix epoch.
func (c *l1Clock) NowNano() int64 {
	if n := c.now.Load(); n != 0 {
		return n
	}
	n := c.precise()
	if n >= c.next.Load() {
		c.check(n)
	}
	return n
}

// Tick is otter's ticker for its periodic clean-up; Close stops it (so
// that it is not left running for the life of the process where
// unreferenced tickers are not collected: GODEBUG=asynctimerchan=1).
func (c *l1Clock) Tick(d time.Duration) <-chan time.Time {
	t := time.NewTicker(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		t.Stop()
	} else {
		c.tickers = append(c.tickers, t)
	}
	return t.C
}

// busy says whether hits in ns nanoseconds are at least c.rate per second.
func (c *l1Clock) busy(hits uint64, ns int64) bool {
	if ns <= 0 {
		return false
	}
	// hits/ns >= rate/1e9, in integers (hits < 2^64/1e9 in any window).
	return hits*uint64(time.Second) >= c.rate*uint64(ns)
}

// check, at reading n of a stopped clock, measures the hit rate since the
// last check and starts the goroutine if the Cache is busy. One caller
// checks at a time; the others go on with their precise reading.
func (c *l1Clock) check(n int64) {
	if !c.mu.TryLock() {
		return
	}
	defer c.mu.Unlock()
	if c.running || c.closed || n < c.next.Load() {
		return
	}
	h := c.hits()
	start := c.busy(h-c.lastHits, n-c.lastCheck)
	c.lastHits, c.lastCheck = h, n
	c.next.Store(n + int64(clockWindow))
	if start {
		c.running = true
		c.now.Store(c.precise())
		c.wg.Add(1)
		go c.run(h)
	}
}

// run is the goroutine of a coarse clock, started with h hits counted.
func (c *l1Clock) run(h uint64) {
	defer c.wg.Done()
	t := time.NewTicker(clockResolution)
	defer t.Stop()
	h0, n0 := h, c.now.Load()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		n := c.precise()
		c.now.Store(n)
		if n-n0 < int64(clockWindow) {
			continue
		}
		h := c.hits()
		if c.busy(h-h0, n-n0) {
			h0, n0 = h, n
			continue
		}
		c.mu.Lock()
		c.now.Store(0)
		c.running = false
		c.lastHits, c.lastCheck = h, n
		c.next.Store(n + int64(clockWindow))
		c.mu.Unlock()
		return
	}
}

// Close stops the goroutine, if it runs, and waits for it, and stops
// Tick's tickers; the clock reads the system clock on every call from
// then on.
func (c *l1Clock) Close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.stop)
		for _, t := range c.tickers {
			t.Stop()
		}
		c.tickers = nil
	}
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	c.running = false
	c.now.Store(0)
	c.mu.Unlock()
}
