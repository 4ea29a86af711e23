package flight

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// HealthState says whether a Cache's backend calls succeed.
type HealthState uint8

const (
	// Healthy: the last backend call succeeded (an answer such as "not
	// found" or "held" is a success), or none failed yet.
	Healthy HealthState = iota
	// Degraded: the last backend call failed. On an outage
	// (claim.ErrUnavailable) the Cache fails open (loads without the
	// claim, once per key per process) or, with Options.FailClosed,
	// returns ErrBackend; on a configuration error (claim.ErrConfig) it
	// returns the error and loads nothing.
	Degraded
)

func (s HealthState) String() string {
	if s == Degraded {
		return "degraded"
	}
	return "healthy"
}

// Health is a Cache's view of its backend: Stats.Health, and what
// Options.OnHealthChange is given on each change. A Cache starts Healthy;
// the first backend call that fails makes it Degraded; the next one that
// succeeds makes it Healthy again. Calls that fail while it is Degraded
// update Err, Class and Failures, and change nothing else.
type Health struct {
	State HealthState
	// Since is when the Cache entered State (New, for the first Healthy).
	Since time.Time
	// Err is the last backend error while Degraded (nil when Healthy).
	Err error
	// Class is Err's class: claim.ErrConfig (waiting will not fix it) or
	// claim.ErrUnavailable (an outage, a timeout, a closed Client).
	Class error
	// Failures counts the backend calls that failed since Since, while
	// Degraded.
	Failures uint64
	// Lasted is, in a Healthy state that ended a Degraded one, how long
	// the Cache was Degraded; zero otherwise.
	Lasted time.Duration
}

func (h Health) String() string {
	if h.State == Healthy {
		if h.Lasted > 0 {
			return fmt.Sprintf("healthy since %s (degraded for %s before)", h.Since.Format(time.RFC3339), h.Lasted.Round(time.Millisecond))
		}
		return "healthy since " + h.Since.Format(time.RFC3339)
	}
	return fmt.Sprintf("degraded since %s (%s, %d failed calls): %v", h.Since.Format(time.RFC3339), className(h.Class), h.Failures, h.Err)
}

func className(class error) string {
	if class == claim.ErrConfig {
		return "config"
	}
	return "unavailable"
}

// health tracks a Cache's Health. The path of a call that succeeds
// while the Cache is healthy is one atomic load; every other observation
// takes mu. Transitions are logged under mu, so in order, and queued for
// the callback, which one goroutine at a time runs (started on demand,
// so a Cache without changes runs none).
type health struct {
	degraded atomic.Bool

	mu      sync.Mutex
	cur     Health
	closed  bool     // no more observations, no more callbacks queued
	queue   []Health // changes waiting for the callback
	running bool     // a goroutine runs the callback; idle is closed when it ends
	idle    chan struct{}
}

// outcomes are the backend's answers: a call that returns one succeeded.
var outcomes = [...]error{claim.ErrNotFound, claim.ErrHeld, claim.ErrLost, claim.ErrTooLarge, claim.ErrInvalidKey}

func isOutcome(err error) bool {
	for _, o := range outcomes {
		if errors.Is(err, o) {
			return true
		}
	}
	return false
}

// observe records how one backend call made under ctx ended: err nil or
// an answer of the backend is a success; any other error a failure,
// unless ctx ended (the caller left or the Cache closed: that says
// nothing of the backend).
func (c *Cache[V]) observe(ctx context.Context, err error) {
	h := &c.health
	if err == nil || isOutcome(err) {
		if h.degraded.Load() {
			c.recovered()
		}
		return
	}
	if ctx.Err() != nil {
		return
	}
	c.failed(err)
}

// failed records a failed backend call.
func (c *Cache[V]) failed(err error) {
	h := &c.health
	class := claim.ErrUnavailable
	if errors.Is(err, claim.ErrConfig) {
		class = claim.ErrConfig
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	if h.cur.State == Degraded {
		h.cur.Err, h.cur.Class = err, class
		h.cur.Failures++
		return
	}
	h.cur = Health{State: Degraded, Since: time.Now(), Err: err, Class: class, Failures: 1}
	h.degraded.Store(true)
	effect := "loading without the claim, once per key per process (fail open)"
	switch {
	case class == claim.ErrConfig:
		effect = "Get returns the error; nothing is loaded"
	case c.cfg.FailClosed:
		effect = "Get returns ErrBackend (fail closed)"
	}
	c.log.Error("flight: backend degraded", "class", className(class), "effect", effect, "err", err)
	c.changedLocked()
}

// recovered records a successful backend call while degraded.
func (c *Cache[V]) recovered() {
	h := &c.health
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.cur.State != Degraded {
		return
	}
	now := time.Now()
	was := h.cur
	h.cur = Health{State: Healthy, Since: now, Lasted: now.Sub(was.Since)}
	h.degraded.Store(false)
	c.log.Warn("flight: backend healthy again", "degraded_for", h.cur.Lasted.Round(time.Millisecond), "failed_calls", was.Failures, "last_err", was.Err)
	c.changedLocked()
}

// changedLocked queues the current Health for Options.OnHealthChange and
// starts the goroutine that calls it unless it runs. h.mu is held.
func (c *Cache[V]) changedLocked() {
	h := &c.health
	if c.cfg.OnHealthChange == nil {
		return
	}
	h.queue = append(h.queue, h.cur)
	if !h.running {
		h.running = true
		h.idle = make(chan struct{})
		go c.notifyHealth()
	}
}

// notifyHealth calls Options.OnHealthChange with every queued change, in
// order, and ends when the queue is empty.
func (c *Cache[V]) notifyHealth() {
	h := &c.health
	for {
		h.mu.Lock()
		if len(h.queue) == 0 {
			h.running = false
			close(h.idle)
			h.mu.Unlock()
			return
		}
		next := h.queue[0]
		h.queue[0] = Health{}
		h.queue = h.queue[1:]
		h.mu.Unlock()
		c.cfg.OnHealthChange(next)
	}
}

// snapshot returns the current Health.
func (h *health) snapshot() Health {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur
}

// close stops observing and waits for the callbacks already queued.
func (h *health) close() {
	h.mu.Lock()
	h.closed = true
	idle, running := h.idle, h.running
	h.mu.Unlock()
	if running {
		<-idle
	}
}
