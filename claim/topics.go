package claim

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// topicQueue is how many messages a topic handler may fall behind before
// it loses some and is told so with a reset.
const topicQueue = 1024

// Publish sends msg to every handler subscribed to topic, in every process,
// at most once each, best effort: a handler that was disconnected, or too
// slow to keep up, is called with reset instead. On a backend with a
// native bus (Features.Broadcast) it is one round trip. Otherwise the
// Client appends msg to a short log kept under a reserved key (a claim on
// it, a read, a fenced commit and a release: three or four round trips),
// and the release wakes the subscribers, who read the log; up to
// topicLogMax recent messages are kept, a subscriber that fell further
// behind gets a reset.
func (c *Client) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := c.check(ctx, "publish", topic); err != nil {
		return err
	}
	cl := c.begin(ctx, "publish")
	if err := c.end(ctx, cl, c.bc.Publish(cl.ctx, topic, msg)); err != nil {
		return opError("publish", topic, err)
	}
	return nil
}

// SubscribeTopic calls handle with every message published to topic after
// it returns, in order, on one goroutine of its own; after any gap in
// which messages may have been lost (a reconnect, a handler too slow to
// keep up), handle is called with nil and reset true, and should assume it
// missed messages. One substrate subscription per topic serves every
// handler of this Client. The returned function stops delivery and waits
// for the handler to return; the Client's Close does too.
func (c *Client) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (stop func(), err error) {
	if err := c.check(ctx, "subscribe-topic", topic); err != nil {
		return nil, err
	}
	if handle == nil {
		return nil, opError("subscribe-topic", topic, errors.New("nil handler"))
	}
	h := newTopicHandler(topic, handle, &c.handlers)
	cl := c.begin(ctx, "subscribe-topic")
	if err := c.end(ctx, cl, c.topics.join(cl.ctx, &h.m)); err != nil {
		h.stop()
		return nil, opError("subscribe-topic", topic, err)
	}
	return h.stop, nil
}

// topicHandler is one SubscribeTopic: its handler runs on its own
// goroutine, fed by a bounded queue.
type topicHandler struct {
	m        member
	handle   func([]byte, bool)
	queue    chan []byte // nil entry: reset
	overflow atomic.Bool // messages were dropped: reset after the queue
	stopped  chan struct{}
	done     chan struct{}
	once     sync.Once
}

func newTopicHandler(topic string, handle func([]byte, bool), wg *sync.WaitGroup) *topicHandler {
	t := &topicHandler{handle: handle, queue: make(chan []byte, topicQueue),
		stopped: make(chan struct{}), done: make(chan struct{})}
	t.m = member{name: topic, deliver: t.push, gone: t.halt}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t.run()
	}()
	return t
}

func (t *topicHandler) run() {
	defer close(t.done)
	for {
		select {
		case <-t.stopped:
			return
		case m := <-t.queue:
			t.handle(m, m == nil)
			if t.overflow.Swap(false) {
				t.handle(nil, true)
			}
		}
	}
}

// push queues msg (nil with reset) without blocking.
func (t *topicHandler) push(msg []byte, reset bool) {
	if reset {
		msg = nil
	} else if msg == nil {
		msg = []byte{}
	}
	select {
	case t.queue <- msg:
	default:
		t.overflow.Store(true)
	}
}

func (t *topicHandler) halt() { t.once.Do(func() { close(t.stopped) }) }

// stop leaves the topic and waits for the handler goroutine.
func (t *topicHandler) stop() {
	if t.m.f != nil {
		t.m.leave()
	}
	t.halt()
	<-t.done
}

// The topic log: how a Client without a native bus (driver.Broadcaster)
// carries topics, on the Claimer, the Store and the Notifier alone.
//
// A topic's log is one value under the reserved key "\x00stampede:topic:"
// + topic:
//
//	offset  size      field
//	0       1         version (1)
//	1       8         epoch: random, new whenever the log is created anew
//	9       uvarint   seq of the first message
//	...     uvarint   number of messages n
//	...     n ×       uvarint length, then the message's bytes
//
// Publish holds the key's lease while it reads the log, appends the
// message (seq one more than the last), drops the oldest messages beyond
// topicLogMax (or the value limit), commits and releases; the release
// wakes every subscriber of the key in every process, and each process's
// one follower re-reads the log and hands on the messages after the last
// seq it saw. A gap (messages dropped before it read them, a log gone or
// recreated with another epoch, a read that failed) is a reset.
const (
	topicLogVersion = 1
	topicLogMax     = 64
	topicLogBytes   = 64 << 10
	topicLeaseTTL   = 5 * time.Second
)

type logTopics struct {
	c    *Client
	mu   sync.Mutex
	subs map[string]*topicFollower
	wg   sync.WaitGroup
}

func topicKey(topic string) string { return reservedPrefix + "topic:" + topic }

type topicLog struct {
	epoch uint64
	first uint64 // seq of msgs[0]
	msgs  [][]byte
}

func (l *topicLog) last() uint64 { return l.first + uint64(len(l.msgs)) - 1 }

func decodeTopicLog(b []byte) (*topicLog, error) {
	if len(b) < 9 || b[0] != topicLogVersion {
		return nil, errors.New("not a topic log")
	}
	l := &topicLog{epoch: binary.BigEndian.Uint64(b[1:9])}
	b = b[9:]
	first, n1 := binary.Uvarint(b)
	if n1 <= 0 {
		return nil, errors.New("topic log: bad seq")
	}
	count, n2 := binary.Uvarint(b[n1:])
	if n2 <= 0 || count > uint64(len(b)) {
		return nil, errors.New("topic log: bad count")
	}
	b = b[n1+n2:]
	l.first = first
	for i := uint64(0); i < count; i++ {
		size, n := binary.Uvarint(b)
		if n <= 0 || size > uint64(len(b)-n) {
			return nil, errors.New("topic log: bad message")
		}
		l.msgs = append(l.msgs, b[n:n+int(size)])
		b = b[n+int(size):]
	}
	return l, nil
}

func (l *topicLog) encode() []byte {
	b := make([]byte, 9, 9+2*binary.MaxVarintLen64+l.size())
	b[0] = topicLogVersion
	binary.BigEndian.PutUint64(b[1:9], l.epoch)
	b = binary.AppendUvarint(b, l.first)
	b = binary.AppendUvarint(b, uint64(len(l.msgs)))
	for _, m := range l.msgs {
		b = binary.AppendUvarint(b, uint64(len(m)))
		b = append(b, m...)
	}
	return b
}

func (l *topicLog) size() int {
	n := 0
	for _, m := range l.msgs {
		n += binary.MaxVarintLen64 + len(m)
	}
	return n
}

// limit is the encoded size a topic log may take.
func (lt *logTopics) limit() int {
	n := topicLogBytes
	if m := lt.c.feat.MaxValueLen; m > 0 && m < n {
		n = m
	}
	return n
}

func randomEpoch() uint64 {
	var b [8]byte
	for b == [8]byte{} {
		_, _ = rand.Read(b[:])
	}
	return binary.BigEndian.Uint64(b[:])
}

// Publish appends msg to topic's log under the log key's lease.
func (lt *logTopics) Publish(ctx context.Context, topic string, msg []byte) error {
	c := lt.c
	room := lt.limit() - 9 - 3*binary.MaxVarintLen64
	if len(msg) > room {
		return &TooLargeError{What: "message", Size: len(msg), Limit: room}
	}
	key := topicKey(topic)
	l, err := c.acquire(ctx, key, max(topicLeaseTTL, c.feat.MinTTL))
	if err != nil {
		return err
	}
	released := false
	defer func() {
		if !released {
			c.cleanupRelease(ctx, l)
		}
	}()
	log := &topicLog{epoch: randomEpoch(), first: 1}
	if v, err := c.get(ctx, key); err == nil {
		if old, err := decodeTopicLog(v); err == nil {
			log = old
		}
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	if len(log.msgs) == 0 && log.first == 0 {
		log.first = 1
	}
	log.msgs = append(log.msgs, msg)
	for len(log.msgs) > topicLogMax || (len(log.msgs) > 1 && 9+2*binary.MaxVarintLen64+log.size() > lt.limit()) {
		log.msgs = log.msgs[1:]
		log.first++
	}
	if err := c.commitRelease(ctx, l, log.encode(), 0); err != nil {
		return err
	}
	released = true
	return nil
}

// topicFollower is one process's reader of one topic's log.
type topicFollower struct {
	sub     *Subscription
	deliver func([]byte, bool)
	epoch   uint64
	last    uint64 // seq of the last message handed on (0: none yet)
	known   bool   // epoch and last are from a log read
	stop    chan struct{}
	done    chan struct{}
}

// SubscribeTopic subscribes to the log key, then reads the log once, so a
// message published after it returns is seen by a later read.
func (lt *logTopics) SubscribeTopic(ctx context.Context, topic string, deliver func([]byte, bool)) error {
	c := lt.c
	key := topicKey(topic)
	sub, err := c.subscribe(ctx, key)
	if err != nil {
		return err
	}
	f := &topicFollower{sub: sub, deliver: deliver, stop: make(chan struct{}), done: make(chan struct{})}
	if err := f.read(ctx, c, key, true); err != nil {
		sub.Close()
		return err
	}
	lt.mu.Lock()
	lt.subs[topic] = f
	lt.wg.Add(1)
	lt.mu.Unlock()
	go lt.follow(f, key)
	return nil
}

func (lt *logTopics) follow(f *topicFollower, key string) {
	defer lt.wg.Done()
	defer close(f.done)
	for {
		select {
		case <-f.stop:
			return
		case _, ok := <-f.sub.C():
			if !ok {
				return
			}
		}
		// Each read is bounded by the Client's operation timeout.
		err := f.read(context.Background(), lt.c, key, false)
		if err != nil {
			lt.c.log.Warn("claim: topic log unreadable; subscribers reset", "topic", key[len(reservedPrefix)+len("topic:"):], "err", err)
			f.known = false
			f.deliver(nil, true)
		}
	}
}

// read reads the log and hands on what is new. The first read (initial)
// only notes where the log stands.
func (f *topicFollower) read(ctx context.Context, c *Client, key string, initial bool) error {
	v, err := c.get(ctx, key)
	if errors.Is(err, ErrNotFound) {
		if f.known && f.last > 0 {
			f.deliver(nil, true) // the log is gone (evicted, deleted)
		}
		f.epoch, f.last, f.known = 0, 0, true
		return nil
	}
	if err != nil {
		return err
	}
	log, err := decodeTopicLog(v)
	if err != nil {
		return err
	}
	last := log.last()
	switch {
	case initial || !f.known:
		// Only note where the log stands (after a failed read, the
		// reset was handed on then).
	case f.epoch == 0:
		// The log did not exist at the last read: everything in it is
		// new, unless it lost messages already.
		if log.first != 1 {
			f.deliver(nil, true)
		}
		for _, m := range log.msgs {
			f.deliver(m, false)
		}
	case log.epoch != f.epoch:
		f.deliver(nil, true) // recreated: anything may have been missed
	case last > f.last:
		if log.first > f.last+1 {
			f.deliver(nil, true)
		}
		for i, m := range log.msgs {
			if log.first+uint64(i) > f.last {
				f.deliver(m, false)
			}
		}
	}
	f.epoch, f.last, f.known = log.epoch, last, true
	return nil
}

func (lt *logTopics) UnsubscribeTopic(topic string) {
	lt.mu.Lock()
	f := lt.subs[topic]
	delete(lt.subs, topic)
	lt.mu.Unlock()
	if f != nil {
		close(f.stop)
		<-f.done
		f.sub.Close()
	}
}

// close stops every follower (the Client is closing).
func (lt *logTopics) close() {
	lt.mu.Lock()
	fs := lt.subs
	lt.subs = map[string]*topicFollower{}
	lt.mu.Unlock()
	for _, f := range fs {
		close(f.stop)
		f.sub.Close()
	}
	lt.wg.Wait()
}
