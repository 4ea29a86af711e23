package nats

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// sub is one key's subscription, to wake-ups (wake) or to grants
// (grant): a KV watch of PREFIX.TOKEN.* (the record and the notify key),
// an ordered consumer on the bucket's stream.
type sub struct {
	key   string
	wake  func(value []byte)
	grant func(driver.Lease)

	mu      sync.Mutex
	stopped bool
	cancel  context.CancelFunc // ends the watch (nil before it is made)
	// What the watch saw last of the lease: holder and token ("" when
	// free).
	holder string
	token  uint64
}

// fire wakes the subscriber (with value v), or for a grant subscription
// delivers a zero Lease (the waiters enqueue again), unless the
// subscription has been stopped.
func (s *sub) fire(v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if s.grant != nil {
		s.grant(driver.Lease{})
	} else {
		s.wake(v)
	}
}

// deliverGrant delivers a lease granted, unless stopped.
func (s *sub) deliverGrant(l driver.Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.stopped {
		s.grant(l)
	}
}

// Subscribe implements driver.Notifier.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return b.SubscribeValue(ctx, key, func([]byte) { wake() })
}

// SubscribeValue implements driver.ValueNotifier: a watch of the key's
// record and notify key, live once its consumer exists and has delivered
// the key's current record (which it does not announce). Every later
// record that ends or replaces the lease seen last, or that a Release,
// CommitRelease or Revoke wrote, wakes the subscriber, with the value
// when a CommitRelease wrote it (and it has not expired); every write of
// the notify key (Notify) wakes it with nil. A watch that ends (its
// consumer lost for good) wakes the subscriber and is made again.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func(value []byte)) error {
	return b.subscribe(ctx, key, &sub{key: key, wake: wake}, b.subs)
}

// Unsubscribe implements driver.Notifier: the subscription stops calling
// wake at once; its consumer is deleted in the background.
func (b *backend) Unsubscribe(key string) { b.unsubscribe(key, b.subs) }

// subscribe starts s's watch and keeps s in m.
func (b *backend) subscribe(ctx context.Context, key string, s *sub, m map[string]*sub) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	kv, _, err := b.bucket(ctx)
	if err != nil {
		return err
	}
	if err := b.watch(ctx, kv, s); err != nil {
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.stopSub(s)
		return driver.ErrClosed
	}
	m[key] = s
	b.mu.Unlock()
	return nil
}

func (b *backend) unsubscribe(key string, m map[string]*sub) {
	b.mu.Lock()
	s := m[key]
	delete(m, key)
	b.mu.Unlock()
	if s != nil {
		b.stopSub(s)
	}
}

// watch starts s's watch and returns once the watch has delivered the
// key's current state. The watch's consumer lives until s.cancel (nats.go
// unsubscribes a JetStream subscription when the context it was made with
// ends): ctx, and a default bound if ctx has none, bound only its making.
func (b *backend) watch(ctx context.Context, kv jetstream.KeyValue, s *sub) (err error) {
	rctx, end, err := b.begin(ctx)
	if err != nil {
		return err
	}
	defer func() { err = end(err) }()
	wctx, wcancel := context.WithCancel(context.Background())
	var fired atomic.Bool
	abort := func() { fired.Store(true); wcancel() }
	detach := context.AfterFunc(rctx, abort)
	var timer *time.Timer
	if _, ok := ctx.Deadline(); !ok {
		timer = time.AfterFunc(DefaultDialTimeout, abort)
	}
	w, err := kv.Watch(wctx, b.watchKey(s.key))
	detach()
	if timer != nil {
		timer.Stop()
	}
	if err == nil && fired.Load() {
		err = cmp.Or(rctx.Err(), context.DeadlineExceeded)
	}
	if err != nil {
		wcancel()
		return b.classify(err)
	}
	ready := make(chan struct{})
	b.stopWG.Add(1)
	go b.watchLoop(s, w, ready)
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		wcancel()
		return driver.ErrClosed
	}
	prev := s.cancel
	s.cancel = wcancel
	s.mu.Unlock()
	if prev != nil {
		prev() // an ended watch's (watchLoop cancels it first; never leave one)
	}
	select {
	case <-ready:
		return nil
	case <-rctx.Done():
		wcancel()
		return rctx.Err()
	}
}

// watchLoop reads w's entries until it ends. Entries before the first nil
// (the key's state when the watch started) only set what was seen last.
// Every record that holds a lease is a sighting of its write (heldUntil):
// a waiter that watches the key then counts a renewed lease from the
// renewal, not from its own next read.
func (b *backend) watchLoop(s *sub, w jetstream.KeyWatcher, ready chan struct{}) {
	defer b.stopWG.Done()
	initial := true
	for e := range w.Updates() {
		if e == nil {
			if initial {
				initial = false
				close(ready)
			}
			continue
		}
		at := clock.Now()
		if r, ok := s.see(s.key, e, initial); ok && r.held() {
			b.sight(s.key, r, at)
		}
	}
	if initial {
		// Ended before it was live: the Subscribe that waits for it has
		// given up (its ctx ended), or the connection closed.
		return
	}
	// The watch ended: stopped (Unsubscribe, Close), or its consumer lost
	// for good. Then tell the subscriber and watch again.
	// Its context ends too: nats.go keeps a goroutine per JetStream
	// subscription until the context it was made with ends (found as a
	// leaked goroutine after the fault tests restarted the server).
	s.mu.Lock()
	stopped := s.stopped
	cancel := s.cancel
	if !stopped {
		s.cancel = nil
	}
	s.mu.Unlock()
	if stopped {
		return
	}
	if cancel != nil {
		cancel()
	}
	s.fire(nil)
	b.stopWG.Add(1)
	go b.rewatch(s)
}

// rewatch makes s's watch again, backing off, until it is live, s is
// stopped or the driver closes, and then tells the subscriber (it may
// have missed a change).
func (b *backend) rewatch(s *sub) {
	defer b.stopWG.Done()
	delay := 50 * time.Millisecond
	for {
		s.mu.Lock()
		stopped := s.stopped
		s.mu.Unlock()
		if stopped {
			return
		}
		ctx, cancel := context.WithTimeout(b.closing, DefaultDialTimeout)
		kv, _, err := b.bucket(ctx)
		if err == nil {
			err = b.watch(ctx, kv, s)
		}
		cancel()
		if err == nil {
			s.fire(nil)
			return
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-b.closing.Done():
			t.Stop()
			return
		}
		delay = min(2*delay, 2*time.Second)
	}
}

// see takes in one entry of the watch and delivers what it means to the
// subscriber. Entries of the initial state only set what was seen last.
// It returns the record the entry holds, if it is one (a record's put).
func (s *sub) see(key string, e jetstream.KeyValueEntry, initial bool) (record, bool) {
	if strings.HasSuffix(e.Key(), ".n") {
		if !initial {
			s.fire(nil)
		}
		return record{}, false
	}
	var r record
	if e.Operation() == jetstream.KeyValuePut {
		var ok bool
		if r, ok = decodeRecord(e.Value(), e.Revision()); !ok {
			if !initial {
				s.fire(nil)
			}
			return record{}, false
		}
	}
	s.mu.Lock()
	prevHolder, prevToken := s.holder, s.token
	s.holder, s.token = r.holder, r.token
	s.mu.Unlock()
	if initial {
		return r, true
	}
	changed := prevHolder != "" && (prevHolder != r.holder || prevToken != r.token)
	if s.grant != nil {
		switch {
		case r.op == opGrant && r.held():
			s.deliverGrant(leaseOf(key, r))
		case r.held() && (r.holder != prevHolder || r.token != prevToken):
			// A new lease in a record that a later write made (an
			// Enqueue) before the watch delivered the grant: the stream
			// keeps one entry per key, so the grant's entry was gone. The
			// waiters enqueue again, and the one granted finds its lease.
			s.fire(nil)
		case r.op == opRevoke, changed && !r.held(), e.Operation() != jetstream.KeyValuePut:
			s.fire(nil)
		}
		return r, true
	}
	switch {
	case r.op == opCommitRelease:
		v, _ := r.liveValue(time.Now())
		s.fire(v)
	case r.op == opRelease, r.op == opRevoke, changed, e.Operation() != jetstream.KeyValuePut:
		s.fire(nil)
	}
	return r, true
}

// stopSub marks s stopped (no wake from now on) and ends its watch:
// nats.go unsubscribes it and deletes its consumer in the background.
func (b *backend) stopSub(s *sub) {
	s.mu.Lock()
	s.stopped = true
	cancel := s.cancel
	s.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// Notify implements driver.Notifier: one write of the key's notify key,
// which every watch of the key sees.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := b.publish(ctx, b.notifyKey(key), []byte(strconv.FormatInt(time.Now().UnixMilli(), 10)))
	return err
}

// topic is one topic's core NATS subscription.
type topic struct {
	mu      sync.Mutex // serialises deliver
	stopped bool
	deliver func(msg []byte, reset bool)
	ns      *natsgo.Subscription
}

func (t *topic) call(msg []byte, reset bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.stopped {
		t.deliver(msg, reset)
	}
}

func (t *topic) reset() { t.call(nil, true) }

func (t *topic) stop() {
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
	_ = t.ns.Unsubscribe()
}

// topicSubject is topic's core NATS subject.
func (b *backend) topicSubject(topic string) string { return b.topicPre + b.encode(topic) }

// Publish implements driver.Broadcaster: a core NATS publish, flushed to
// the server (one round trip). Core NATS delivers it at most once to each
// subscription live on the server.
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msg) > b.o.MaxValueLen {
		return &driver.TooLargeError{What: "message", Size: len(msg), Limit: b.o.MaxValueLen}
	}
	nc, err := b.conn(ctx)
	if err != nil {
		return err
	}
	if err := b.down(); err != nil {
		return err // not buffered for a reconnection: reported as failed, never sent
	}
	if err := nc.Publish(b.topicSubject(topic), msg); err != nil {
		return b.classify(err)
	}
	return b.flush(ctx, nc)
}

// flush waits for the server's answer to a PING sent after everything
// before it, bounded by ctx (or the default operation timeout).
func (b *backend) flush(ctx context.Context, nc *natsgo.Conn) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	rctx, end, err := b.begin(ctx)
	if err != nil {
		return err
	}
	if err := end(nc.FlushWithContext(rctx)); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("flush: %w", ctx.Err())
		}
		return b.classify(err)
	}
	return nil
}

// SubscribeTopic implements driver.Broadcaster: a core NATS subscription
// of the topic's subject, live once the server has answered the PING sent
// after it. After a reconnection, deliver is called with reset.
func (b *backend) SubscribeTopic(ctx context.Context, name string, deliver func(msg []byte, reset bool)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	nc, err := b.conn(ctx)
	if err != nil {
		return err
	}
	t := &topic{deliver: deliver}
	ns, err := nc.Subscribe(b.topicSubject(name), func(m *natsgo.Msg) { t.call(m.Data, false) })
	if err != nil {
		return b.classify(err)
	}
	t.ns = ns
	if err := b.flush(ctx, nc); err != nil {
		t.stop()
		return err
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		t.stop()
		return driver.ErrClosed
	}
	b.topics[name] = t
	b.mu.Unlock()
	return nil
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(name string) {
	b.mu.Lock()
	t := b.topics[name]
	delete(b.topics, name)
	b.mu.Unlock()
	if t != nil {
		t.stop()
	}
}
