package postgres

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim"
)

// Payloads on the Backend's one channel: "k" + encoded key (a wake-up),
// or "t" + encoded topic + " " + base64(message) (a broadcast). Encoded
// keys never contain a space.
const (
	tagKey   = 'k'
	tagTopic = 't'
	// maxPayload is pg_notify's limit (payloads must be shorter than 8000
	// bytes).
	maxPayload = 7999
)

// Reconnect backoff of the LISTEN connection.
const (
	minBackoff  = 50 * time.Millisecond
	maxBackoff  = 5 * time.Second
	dialTimeout = 10 * time.Second
)

func keyPayload(enc string) string { return string(tagKey) + enc }

// listener is the state of a Backend's one LISTEN connection.
type listener struct {
	mu       sync.Mutex
	started  bool
	live     bool
	pid      uint32        // backend pid of the live connection
	failures int           // dial attempts that failed, ever
	lastErr  error         // the last dial error
	changed  chan struct{} // closed and replaced on every state change
	topics   map[string]map[*topicSub]struct{}
}

func (l *listener) init() {
	l.changed = make(chan struct{})
	l.topics = map[string]map[*topicSub]struct{}{}
}

// signalLocked wakes everyone waiting for a state change.
func (l *listener) signalLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitLive starts the listener if needed and returns once its LISTEN is
// live, or with the dial error if an attempt that began after the call
// failed, or when ctx is done or the Backend closed.
func (b *Backend) waitLive(ctx context.Context) error {
	l := &b.l
	l.mu.Lock()
	if !l.started {
		if !b.goBackground(b.listen) {
			l.mu.Unlock()
			return claim.ErrClosed
		}
		l.started = true
	}
	failures := l.failures
	for {
		if b.closed.Load() {
			l.mu.Unlock()
			return claim.ErrClosed
		}
		if l.live {
			l.mu.Unlock()
			return nil
		}
		if l.failures > failures {
			err := l.lastErr
			l.mu.Unlock()
			return fmt.Errorf("LISTEN connection: %w", err)
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-b.ctx.Done():
			return claim.ErrClosed
		}
		l.mu.Lock()
	}
}

// listen runs the LISTEN connection until Close: connect, LISTEN, serve
// notifications; on loss reconnect with jittered backoff, LISTEN again and
// wake every subscriber to re-check.
func (b *Backend) listen() {
	backoff := minBackoff
	first := true
	for b.ctx.Err() == nil {
		conn, err := b.dial()
		if err != nil {
			if b.ctx.Err() != nil {
				return
			}
			b.l.mu.Lock()
			b.l.failures++
			b.l.lastErr = err
			b.l.signalLocked()
			b.l.mu.Unlock()
			t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
			select {
			case <-t.C:
			case <-b.ctx.Done():
				t.Stop()
				return
			}
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		backoff = minBackoff
		b.l.mu.Lock()
		b.l.live = true
		b.l.pid = conn.PgConn().PID()
		b.l.signalLocked()
		b.l.mu.Unlock()
		if !first {
			// Events between the loss and the new LISTEN are gone:
			// everyone re-checks.
			b.hub.WakeAll()
			b.resetTopics()
		}
		first = false
		b.serve(conn)
		b.l.mu.Lock()
		b.l.live = false
		b.l.pid = 0
		b.l.signalLocked()
		b.l.mu.Unlock()
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}
}

// dial makes the LISTEN connection from the pool's configuration (with
// its BeforeConnect hook, if any), outside the pool.
func (b *Backend) dial() (*pgx.Conn, error) {
	if b.testHookDial != nil {
		b.testHookDial()
	}
	ctx, cancel := context.WithTimeout(b.ctx, dialTimeout)
	defer cancel()
	pc := b.pool.Config()
	cfg := pc.ConnConfig
	if b.opt.ListenConfig != nil {
		cfg = b.opt.ListenConfig
	}
	cfg = cfg.Copy()
	if _, ok := cfg.RuntimeParams["application_name"]; !ok {
		cfg.RuntimeParams["application_name"] = "stampede-listen"
	}
	if pc.BeforeConnect != nil {
		if err := pc.BeforeConnect(ctx, cfg); err != nil {
			return nil, err
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{b.channel}.Sanitize()); err != nil {
		_ = conn.Close(context.Background())
		return nil, err
	}
	return conn, nil
}

// serve dispatches notifications until the connection fails or the
// Backend closes. A connection silent for HealthInterval is pinged.
func (b *Backend) serve(conn *pgx.Conn) {
	for {
		ctx, cancel := context.WithTimeout(b.ctx, b.opt.HealthInterval)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if b.ctx.Err() != nil {
			return
		}
		if err != nil {
			if !errors.Is(err, context.DeadlineExceeded) || conn.IsClosed() {
				return
			}
			pctx, cancel := context.WithTimeout(b.ctx, b.opt.HealthInterval)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return
			}
			continue
		}
		if n != nil {
			b.dispatch(n.Payload)
		}
	}
}

func (b *Backend) dispatch(p string) {
	if p == "" {
		return
	}
	switch p[0] {
	case tagKey:
		if b.testHookWake != nil {
			b.testHookWake(p[1:])
		}
		b.hub.Wake(p[1:])
	case tagTopic:
		topic, enc, ok := strings.Cut(p[1:], " ")
		if !ok {
			return
		}
		msg, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return
		}
		b.l.mu.Lock()
		for t := range b.l.topics[topic] {
			t.push(msg, false)
		}
		b.l.mu.Unlock()
	}
}

// listenerPID returns the backend pid of the live LISTEN connection, or 0.
func (b *Backend) listenerPID() uint32 {
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	return b.l.pid
}

// substrate plugs the LISTEN connection into the hub. The hub is keyed by
// encoded key; one LISTEN covers every key, so subscribing a key is only
// waiting until that LISTEN is live.
type substrate struct{ b *Backend }

func (s substrate) Subscribe(ctx context.Context, _ string) error { return s.b.waitLive(ctx) }
func (s substrate) Unsubscribe(string)                            {}

// Subscribe implements claim.Notifier. The first subscription of a Backend
// opens its LISTEN connection; Subscribe returns once it is live.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	enc, err := b.check(ctx, "subscribe", key)
	if err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, enc)
	if err != nil {
		return nil, fmt.Errorf("postgres: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier (one pg_notify).
func (b *Backend) Notify(ctx context.Context, key string) error {
	enc, err := b.check(ctx, "notify", key)
	if err != nil {
		return err
	}
	if _, err := b.pool.Exec(ctx, b.q.notify, b.channel, keyPayload(enc)); err != nil {
		return fmt.Errorf("postgres: notify %q: %w", key, err)
	}
	return nil
}

// Publish implements claim.Broadcaster over the same channel. msg is sent
// base64-encoded; the whole payload must stay under PostgreSQL's 8000
// bytes (ErrTooLarge otherwise, before any I/O): with a topic of up to
// 255 printable ASCII bytes, messages up to 5,800 bytes always fit.
func (b *Backend) Publish(ctx context.Context, topic string, msg []byte) error {
	enc, err := b.check(ctx, "publish", topic)
	if err != nil {
		return err
	}
	p := string(tagTopic) + enc + " " + base64.StdEncoding.EncodeToString(msg)
	if len(p) > maxPayload {
		return fmt.Errorf("postgres: publish %q: %w", topic, &claim.TooLargeError{What: "payload", Size: len(p), Limit: maxPayload})
	}
	if _, err := b.pool.Exec(ctx, b.q.notify, b.channel, p); err != nil {
		return fmt.Errorf("postgres: publish %q: %w", topic, err)
	}
	return nil
}

// topicSub is one SubscribeTopic subscription: a bounded queue drained
// by one goroutine that runs the handler in order.
type topicSub struct {
	handle func([]byte, bool)
	mu     sync.Mutex
	queue  [][]byte // nil entry: reset
	wake   chan struct{}
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
}

const topicQueueLen = 1024

// push queues msg (or a reset); a subscriber that falls topicQueueLen
// messages behind loses them and gets a reset instead.
func (t *topicSub) push(msg []byte, reset bool) {
	t.mu.Lock()
	if reset || len(t.queue) >= topicQueueLen {
		t.queue = append(t.queue[:0], nil)
	} else {
		if msg == nil {
			msg = []byte{}
		}
		t.queue = append(t.queue, msg)
	}
	t.mu.Unlock()
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

func (t *topicSub) run() {
	defer close(t.done)
	for {
		select {
		case <-t.stop:
			return
		case <-t.wake:
		}
		for {
			t.mu.Lock()
			if len(t.queue) == 0 {
				t.mu.Unlock()
				break
			}
			m := t.queue[0]
			t.queue = t.queue[1:]
			t.mu.Unlock()
			select {
			case <-t.stop:
				return
			default:
			}
			t.handle(m, m == nil)
		}
	}
}

// SubscribeTopic implements claim.Broadcaster. It returns once the LISTEN
// connection is live; after a reconnect the handler gets a reset.
func (b *Backend) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (func(), error) {
	enc, err := b.check(ctx, "subscribe-topic", topic)
	if err != nil {
		return nil, err
	}
	t := &topicSub{handle: handle, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	b.l.mu.Lock()
	m := b.l.topics[enc]
	if m == nil {
		m = map[*topicSub]struct{}{}
		b.l.topics[enc] = m
	}
	m[t] = struct{}{}
	b.l.mu.Unlock()
	go t.run()
	stop := func() { b.stopTopic(enc, t) }
	if err := b.waitLive(ctx); err != nil {
		stop()
		return nil, fmt.Errorf("postgres: subscribe-topic %q: %w", topic, err)
	}
	return stop, nil
}

// stopTopic ends one topic subscription and waits for its handler.
func (b *Backend) stopTopic(enc string, t *topicSub) {
	b.l.mu.Lock()
	if m := b.l.topics[enc]; m != nil {
		delete(m, t)
		if len(m) == 0 {
			delete(b.l.topics, enc)
		}
	}
	b.l.mu.Unlock()
	t.once.Do(func() { close(t.stop) })
	<-t.done
}

// resetTopics tells every topic subscriber it may have missed messages.
func (b *Backend) resetTopics() {
	b.l.mu.Lock()
	defer b.l.mu.Unlock()
	for _, m := range b.l.topics {
		for t := range m {
			t.push(nil, true)
		}
	}
}

// stopTopics ends every topic subscription (on Close).
func (b *Backend) stopTopics() {
	b.l.mu.Lock()
	var all []*topicSub
	var encs []string
	for enc, m := range b.l.topics {
		for t := range m {
			all = append(all, t)
			encs = append(encs, enc)
		}
	}
	b.l.mu.Unlock()
	for i, t := range all {
		b.stopTopic(encs[i], t)
	}
}
