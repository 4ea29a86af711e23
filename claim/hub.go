package claim

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// fanout keeps one substrate subscription per name (a key, or a topic) for
// any number of local members: the first member of a name makes the
// substrate subscription (and waits for it to be confirmed), later ones
// join it, even while it is still pending, and the last one to leave drops
// it. It is the one place that enforces "one substrate subscription per key
// per process" for every driver; the Client has one for keys (wake-ups)
// and one for topics (messages).
type fanout struct {
	// subscribe makes the substrate subscription for name; fire delivers
	// its events to the members. unsubscribe drops it: called once per
	// successful subscribe, never concurrently with a subscribe of the
	// same name.
	subscribe   func(ctx context.Context, name string, fire func(msg []byte, reset bool)) error
	unsubscribe func(name string)
	// subscribeMany, if set, makes the substrate subscriptions of several
	// names in one call (joinMany); on an error it may have made some,
	// which joinMany drops with unsubscribe.
	subscribeMany func(ctx context.Context, names []string, fires []func(msg []byte, reset bool)) error

	// timeout bounds a subscription made again after its creator left
	// (join); 0: DefaultOpTimeout.
	timeout time.Duration

	mu     sync.Mutex
	names  map[string]*entry
	closed bool
}

type entry struct {
	members map[*member]struct{}
	ready   chan struct{} // closed once the substrate subscription is live or failed
	err     error
	closing chan struct{} // non-nil while the last member's unsubscribe runs
}

// member is one local subscriber. deliver is called under the fanout's
// lock and must not block; gone is called once when the member is removed
// (left, failed, or closed with the fanout), under the lock too.
type member struct {
	f       *fanout
	name    string
	e       *entry
	deliver func(msg []byte, reset bool)
	gone    func()
	once    sync.Once
}

func newFanout(sub func(context.Context, string, func([]byte, bool)) error, unsub func(string)) *fanout {
	return &fanout{subscribe: sub, unsubscribe: unsub, names: map[string]*entry{}}
}

// leave removes m; idempotent.
func (m *member) leave() { m.once.Do(func() { m.f.leave(m) }) }

// join adds m to name's subscription, making it if needed, and returns when
// the subscription is live.
func (f *fanout) join(ctx context.Context, m *member) error {
	m.f = f
	for {
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			return ErrClosed
		}
		e := f.names[m.name]
		if e != nil && e.closing != nil {
			c := e.closing
			f.mu.Unlock()
			select {
			case <-c:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if e != nil {
			e.members[m] = struct{}{}
			m.e = e
			f.mu.Unlock()
			select {
			case <-e.ready:
			case <-ctx.Done():
				m.leave()
				return ctx.Err()
			}
			if e.err != nil {
				m.leave()
				return e.err
			}
			return nil
		}
		e = &entry{members: map[*member]struct{}{m: {}}, ready: make(chan struct{})}
		m.e = e
		f.names[m.name] = e
		f.mu.Unlock()
		name := m.name
		fire := func(msg []byte, reset bool) { f.fire(name, msg, reset) }
		err := f.subscribe(ctx, name, fire)
		if err != nil && ctx.Err() != nil {
			// The creator's own context ended: that is its error, not
			// the others'. If members joined meanwhile, the subscription
			// is made again for them, bounded by the fanout's timeout
			// but not by the creator's context (the pitfall of a shared
			// call failing with its first caller's cancellation).
			f.mu.Lock()
			delete(e.members, m)
			m.e = nil
			others := len(e.members) > 0
			f.mu.Unlock()
			if others {
				f.unsubscribe(name) // the abandoned call may have landed
				go func() {
					rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), f.retryTimeout())
					defer cancel()
					f.finish(name, e, f.subscribe(rctx, name, fire))
				}()
				return err
			}
			f.finish(name, e, err)
			return err
		}
		f.finish(name, e, err)
		return err
	}
}

// retryTimeout bounds a subscription made again for the members of a
// creator that left.
func (f *fanout) retryTimeout() time.Duration {
	if f.timeout > 0 {
		return f.timeout
	}
	return DefaultOpTimeout
}

// finish settles e, name's pending entry, with the outcome of its
// substrate subscription: live, or failed (then every member is removed
// and nobody may join it any more).
func (f *fanout) finish(name string, e *entry, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.err = err
	close(e.ready)
	if err == nil {
		return
	}
	if f.names[name] == e {
		delete(f.names, name)
	}
	for o := range e.members {
		delete(e.members, o)
		o.gone()
	}
}

// joinMany joins every member of ms (distinct names), as join does, and
// returns when all their subscriptions are live. The names without a
// subscription yet are subscribed together (subscribeMany), or one by one
// concurrently without it. On an error no member of ms is left joined.
func (f *fanout) joinMany(ctx context.Context, ms []*member) error {
	if len(ms) == 1 || f.subscribeMany == nil {
		errs := make([]error, len(ms))
		driver.Each(len(ms), batchConcurrency, func(i int) { errs[i] = f.join(ctx, ms[i]) })
		if err := errors.Join(errs...); err != nil {
			for _, m := range ms {
				m.leave()
			}
			return err
		}
		return nil
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	var fresh, joined, slow []*member
	for _, m := range ms {
		m.f = f
		e := f.names[m.name]
		switch {
		case e != nil && e.closing != nil:
			slow = append(slow, m) // its last unsubscribe is running: join waits for it
		case e != nil:
			e.members[m] = struct{}{}
			m.e = e
			joined = append(joined, m)
		default:
			e = &entry{members: map[*member]struct{}{m: {}}, ready: make(chan struct{})}
			m.e = e
			f.names[m.name] = e
			fresh = append(fresh, m)
		}
	}
	f.mu.Unlock()
	fail := func(err error) error {
		for _, m := range ms {
			m.leave()
		}
		return err
	}
	if len(fresh) > 0 {
		names := make([]string, len(fresh))
		fires := make([]func([]byte, bool), len(fresh))
		for i, m := range fresh {
			name := m.name
			names[i] = name
			fires[i] = func(msg []byte, reset bool) { f.fire(name, msg, reset) }
		}
		err := f.subscribeMany(ctx, names, fires)
		if err != nil {
			// Dropped while the entries still stand, so no other join
			// subscribes a name concurrently with its unsubscribe.
			for _, n := range names {
				f.unsubscribe(n)
			}
		}
		f.mu.Lock()
		for _, m := range fresh {
			e := m.e
			e.err = err
			close(e.ready)
			if err != nil {
				if f.names[m.name] == e {
					delete(f.names, m.name)
				}
				for o := range e.members {
					delete(e.members, o)
					o.gone()
				}
			}
		}
		f.mu.Unlock()
		if err != nil {
			return fail(err)
		}
	}
	for _, m := range slow {
		if err := f.join(ctx, m); err != nil {
			return fail(err)
		}
	}
	for _, m := range joined {
		select {
		case <-m.e.ready:
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		if m.e.err != nil {
			return fail(m.e.err)
		}
	}
	return nil
}

func (f *fanout) leave(m *member) {
	f.mu.Lock()
	e := m.e
	if e == nil {
		f.mu.Unlock()
		return
	}
	if _, ok := e.members[m]; !ok {
		f.mu.Unlock()
		return
	}
	delete(e.members, m)
	m.gone()
	if len(e.members) > 0 || f.names[m.name] != e {
		f.mu.Unlock()
		return
	}
	select {
	case <-e.ready:
	default:
		// The first member is still subscribing; it will see an empty
		// entry. The substrate subscription is dropped when it completes.
		f.mu.Unlock()
		go func() {
			<-e.ready
			f.mu.Lock()
			if len(e.members) == 0 && f.names[m.name] == e && e.err == nil && e.closing == nil {
				f.dropLocked(m.name, e)
				return
			}
			f.mu.Unlock()
		}()
		return
	}
	if e.err != nil {
		f.mu.Unlock()
		return
	}
	f.dropLocked(m.name, e)
}

// dropLocked unsubscribes e; called with f.mu held, returns with it released.
func (f *fanout) dropLocked(name string, e *entry) {
	e.closing = make(chan struct{})
	closed := f.closed
	f.mu.Unlock()
	if !closed {
		f.unsubscribe(name)
	}
	f.mu.Lock()
	if f.names[name] == e {
		delete(f.names, name)
	}
	close(e.closing)
	f.mu.Unlock()
}

// fire delivers an event of name to every member.
func (f *fanout) fire(name string, msg []byte, reset bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if e := f.names[name]; e != nil {
		for m := range e.members {
			m.deliver(msg, reset)
		}
	}
}

// len returns the number of names with a substrate subscription.
func (f *fanout) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.names)
}

// close removes every member; later joins fail with ErrClosed. It does not
// unsubscribe: the driver ends its subscriptions when it is closed.
func (f *fanout) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	for k, e := range f.names {
		for m := range e.members {
			delete(e.members, m)
			m.gone()
		}
		delete(f.names, k)
	}
}

// Subscription is one subscriber's view of the wake-ups for one key (see
// Client.Subscribe). Wake-ups are coalesced: the channel holds at most one
// pending wake-up, so a subscriber that is slow to receive still sees one
// wake-up after the last event, never a lost one.
type Subscription struct {
	m  member
	ch chan struct{}
	// value is what the latest wake-up carried (driver.ValueNotifier):
	// the value a CommitRelease stored; nil if it carried none.
	value atomic.Pointer[[]byte]
}

// takeValue returns a copy of the value the latest wake-up carried, and
// forgets it (nil: none, or taken already). The driver's slice is shared
// by every subscriber of the key in this process.
func (s *Subscription) takeValue() []byte {
	if p := s.value.Swap(nil); p != nil {
		return bytes.Clone(*p)
	}
	return nil
}

// C returns the wake-up channel. A wake-up means "the key was released or
// notified, or the backend could not rule out that it was (after a
// reconnect, a compacted watch, or a poll that saw a change)": the receiver
// must re-check state. C is closed when the subscription or its Client is
// closed.
func (s *Subscription) C() <-chan struct{} { return s.ch }

// Close ends the subscription. It is idempotent and never blocks on the
// network for long; the last subscription of a key in a Client drops the
// substrate subscription.
func (s *Subscription) Close() error {
	s.m.leave()
	return nil
}

func newSubscription(key string) *Subscription {
	s := &Subscription{ch: make(chan struct{}, 1)}
	s.m = member{name: key, gone: func() { close(s.ch) }, deliver: func(msg []byte, _ bool) {
		if msg != nil {
			s.value.Store(&msg)
		} else {
			s.value.Store(nil)
		}
		select {
		case s.ch <- struct{}{}:
		default:
		}
	}}
	return s
}
