// Package hub fans one substrate subscription per key out to any number of
// local subscribers. Every backend uses it for claim.Notifier: the first
// subscriber of a key makes the substrate subscription (and waits for it to
// be confirmed), later ones join it, and the last one to leave drops it.
package hub

import (
	"context"
	"sync"

	"github.com/stampede-go/stampede/claim"
)

// Substrate is what a backend plugs in.
type Substrate interface {
	// Subscribe makes the substrate subscription for key and returns once
	// it is live (events after it returns are delivered through Wake).
	Subscribe(ctx context.Context, key string) error
	// Unsubscribe drops it. Called once per successful Subscribe, never
	// concurrently with a Subscribe of the same key.
	Unsubscribe(key string)
}

type entry struct {
	subs    map[*Sub]struct{}
	ready   chan struct{} // closed once the substrate subscription is live or failed
	err     error
	closing chan struct{} // non-nil while the last subscriber's Unsubscribe runs
}

// Hub is safe for concurrent use.
type Hub struct {
	s      Substrate
	mu     sync.Mutex
	keys   map[string]*entry
	closed bool
}

// New returns a Hub over s.
func New(s Substrate) *Hub { return &Hub{s: s, keys: map[string]*entry{}} }

// Sub is one local subscriber; it implements claim.Subscription.
type Sub struct {
	h    *Hub
	key  string
	e    *entry
	ch   chan struct{}
	once sync.Once
}

// C implements claim.Subscription.
func (s *Sub) C() <-chan struct{} { return s.ch }

// Close implements claim.Subscription.
func (s *Sub) Close() error {
	s.once.Do(func() { s.h.leave(s) })
	return nil
}

// Subscribe joins (or makes) the substrate subscription for key. It
// returns when the subscription is live.
func (h *Hub) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	for {
		h.mu.Lock()
		if h.closed {
			h.mu.Unlock()
			return nil, claim.ErrClosed
		}
		e := h.keys[key]
		if e != nil && e.closing != nil {
			c := e.closing
			h.mu.Unlock()
			select {
			case <-c:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		s := &Sub{h: h, key: key, ch: make(chan struct{}, 1)}
		if e != nil {
			e.subs[s] = struct{}{}
			s.e = e
			h.mu.Unlock()
			select {
			case <-e.ready:
			case <-ctx.Done():
				s.Close()
				return nil, ctx.Err()
			}
			if e.err != nil {
				s.Close()
				return nil, e.err
			}
			return s, nil
		}
		e = &entry{subs: map[*Sub]struct{}{s: {}}, ready: make(chan struct{})}
		s.e = e
		h.keys[key] = e
		h.mu.Unlock()
		err := h.s.Subscribe(ctx, key)
		h.mu.Lock()
		e.err = err
		close(e.ready)
		if err != nil {
			// Nobody may join a failed entry any more.
			if h.keys[key] == e {
				delete(h.keys, key)
			}
			for o := range e.subs {
				delete(e.subs, o)
				close(o.ch)
			}
			h.mu.Unlock()
			return nil, err
		}
		h.mu.Unlock()
		return s, nil
	}
}

func (h *Hub) leave(s *Sub) {
	h.mu.Lock()
	e := s.e
	if _, ok := e.subs[s]; !ok {
		h.mu.Unlock()
		return
	}
	delete(e.subs, s)
	close(s.ch)
	if len(e.subs) > 0 || h.keys[s.key] != e {
		h.mu.Unlock()
		return
	}
	select {
	case <-e.ready:
	default:
		// The first subscriber is still subscribing; it will see an
		// empty entry. Leave the substrate subscription to be dropped
		// when it completes: mark nothing, the entry stays until then.
		h.mu.Unlock()
		go func() {
			<-e.ready
			h.mu.Lock()
			if len(e.subs) == 0 && h.keys[s.key] == e && e.err == nil && e.closing == nil {
				h.dropLocked(s.key, e)
				return
			}
			h.mu.Unlock()
		}()
		return
	}
	if e.err != nil {
		h.mu.Unlock()
		return
	}
	h.dropLocked(s.key, e)
}

// dropLocked unsubscribes e; called with h.mu held, returns with it released.
func (h *Hub) dropLocked(key string, e *entry) {
	e.closing = make(chan struct{})
	closed := h.closed
	h.mu.Unlock()
	if !closed {
		h.s.Unsubscribe(key)
	}
	h.mu.Lock()
	if h.keys[key] == e {
		delete(h.keys, key)
	}
	close(e.closing)
	h.mu.Unlock()
}

// Wake wakes every local subscriber of key.
func (h *Hub) Wake(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.keys[key]; e != nil {
		for s := range e.subs {
			select {
			case s.ch <- struct{}{}:
			default:
			}
		}
	}
}

// WakeAll wakes every local subscriber of every key: after a reconnect or
// any gap in which events may have been missed, everyone re-checks.
func (h *Hub) WakeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.keys {
		for s := range e.subs {
			select {
			case s.ch <- struct{}{}:
			default:
			}
		}
	}
}

// Keys returns the keys with live substrate subscriptions (for
// re-subscribing after a reconnect).
func (h *Hub) Keys() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.keys))
	for k, e := range h.keys {
		if e.closing == nil {
			out = append(out, k)
		}
	}
	return out
}

// Len returns the number of keys with a substrate subscription.
func (h *Hub) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.keys)
}

// Close closes every subscriber's channel; later Subscribe calls fail with
// claim.ErrClosed. It does not call Unsubscribe: the backend tears down its
// substrate connection itself.
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	h.closed = true
	for k, e := range h.keys {
		for s := range e.subs {
			delete(e.subs, s)
			close(s.ch)
		}
		delete(h.keys, k)
	}
}
