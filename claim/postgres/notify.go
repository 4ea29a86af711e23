package postgres

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/claim/driver"
)

// Payloads on the driver's one channel: "k" + encoded key (a wake-up),
// "v" + encoded key + " " + base64(value) (a CommitRelease's wake-up,
// with the value it stored; see wakePayload in schema.go), "t" +
// encoded topic + " " + base64(message) (a broadcast), or "g" + encoded
// key + " " + token + " " + TTL in µs + " " + holder (a fair grant, see
// queue.go; decimal numbers, the holder last and verbatim). Encoded keys
// never contain a space.
const (
	tagKey   = 'k'
	tagValue = 'v'
	tagTopic = 't'
	tagGrant = 'g'
	// maxPayload is pg_notify's limit (payloads must be shorter than 8000
	// bytes).
	maxPayload = 7999
)

// Reconnect backoff of the LISTEN connection.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

func keyPayload(enc string) string { return string(tagKey) + enc }

// maxMessage is the longest message Publish sends on the topic encoded as
// enc: the payload "t" + enc + " " + base64(message) must stay within
// maxPayload. It is also the longest value a CommitRelease of the key
// encoded as enc sends in its wake-up (the same layout, tag "v"; the
// statements compute the bound in SQL: wakePayload in schema.go).
func maxMessage(enc string) int { return (maxPayload - 2 - len(enc)) / 4 * 3 }

// listener is the state of a driver's one LISTEN connection, and the
// Client's subscriptions it serves.
type listener struct {
	start    sync.Once // starts listen
	mu       sync.Mutex
	live     bool
	failures int                           // dial attempts that failed, ever
	lastErr  error                         // the last dial error
	changed  chan struct{}                 // closed and replaced on every state change
	keys     map[string]func([]byte)       // encoded key -> the Client's wake (with the value carried, or nil)
	topics   map[string]func([]byte, bool) // encoded topic -> the Client's deliver
	grants   map[string]grantSub           // encoded key -> the Client's grant subscription (queue.go)
}

func (l *listener) init() {
	l.changed = make(chan struct{})
	l.keys = map[string]func([]byte){}
	l.topics = map[string]func([]byte, bool){}
	l.grants = map[string]grantSub{}
}

// update changes the listener's state with f, under its lock, and wakes
// everyone waiting for a state change.
func (l *listener) update(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
	close(l.changed)
	l.changed = make(chan struct{})
}

// waitLive starts the listener if needed and returns once its LISTEN is
// live, or with the dial error if an attempt that began after the call
// failed, or when ctx is done or the driver closed.
func (b *backend) waitLive(ctx context.Context) error {
	l := &b.l
	l.start.Do(func() { b.goBackground(b.listen) })
	l.mu.Lock()
	failures := l.failures
	for {
		if b.ctx.Err() != nil {
			l.mu.Unlock()
			return driver.ErrClosed
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
			return driver.ErrClosed
		}
		l.mu.Lock()
	}
}

// listen runs the LISTEN connection until Close: connect, LISTEN, serve
// notifications; on loss reconnect at once, then with jittered backoff,
// LISTEN again and wake every subscriber to re-check. Events between the
// loss and the new LISTEN are gone, so if the first attempt to reconnect
// fails, every subscriber is woken then too: a waiter re-checks (and
// finds the server unreachable, or the key free) instead of waiting for a
// wake-up that cannot come.
func (b *backend) listen() {
	l := &b.l
	backoff := minBackoff
	lost := false // a live LISTEN was lost: its subscribers may have missed events
	told := false // they were woken since the loss
	for b.ctx.Err() == nil {
		conn, err := b.dial()
		if err != nil {
			if b.ctx.Err() != nil {
				return
			}
			l.update(func() {
				l.failures++
				l.lastErr = err
				if lost && !told {
					l.wakeAll()
				}
			})
			told = told || lost
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
		l.update(func() {
			l.live = true
			if lost {
				l.wakeAll()
			}
		})
		lost, told = false, false
		b.serve(conn)
		l.update(func() { l.live = false })
		lost = true
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}
}

// wakeAll wakes every subscribed key, resets every subscribed topic and
// tells every grant subscription it may have missed a grant (a zero
// Lease): they may have missed events. Called under l.mu.
func (l *listener) wakeAll() {
	for _, wake := range l.keys {
		wake(nil)
	}
	for _, g := range l.grants {
		g.grant(driver.Lease{})
	}
	for _, deliver := range l.topics {
		deliver(nil, true)
	}
}

// dial makes the LISTEN connection from the pool's configuration (with
// its BeforeConnect hook, if any), outside the pool, within the
// configuration's connect_timeout (DefaultConnectTimeout if it has none).
// A server of another kind fails it with errNotPostgres (sniffing).
func (b *backend) dial() (*pgx.Conn, error) {
	pc := b.pool.Config()
	cfg := pc.ConnConfig
	if b.opt.ListenConfig != nil {
		cfg = b.opt.ListenConfig
	}
	cfg = cfg.Copy()
	ctx, cancel := context.WithTimeout(b.ctx, cmp.Or(cfg.ConnectTimeout, DefaultConnectTimeout))
	defer cancel()
	cfg.DialFunc = sniffing(cfg.DialFunc)
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
// driver closes. A connection silent for HealthInterval is pinged.
func (b *backend) serve(conn *pgx.Conn) {
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

// dispatch hands a notification to the subscription it names. The wake
// and deliver functions are called under the listener's lock, so none is
// called after Unsubscribe or UnsubscribeTopic returned; they never
// block. A value payload whose value does not decode, or any value
// payload with Options.NoValueWake, still wakes its key, without a value
// (the waiter reads it).
func (b *backend) dispatch(p string) {
	if p == "" {
		return
	}
	switch p[0] {
	case tagKey:
		b.wake(p[1:], nil)
	case tagValue:
		key, enc, ok := strings.Cut(p[1:], " ")
		if !ok {
			return
		}
		var val []byte
		if !b.opt.NoValueWake {
			v, err := base64.StdEncoding.DecodeString(enc)
			if err == nil {
				val = v
			}
		}
		b.wake(key, val)
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
		if deliver := b.l.topics[topic]; deliver != nil {
			deliver(msg, false)
		}
		b.l.mu.Unlock()
	case tagGrant:
		b.dispatchGrant(p[1:])
	}
}

// wake calls the wake function of the key encoded as enc, if subscribed,
// with val (nil: none carried).
func (b *backend) wake(enc string, val []byte) {
	b.l.mu.Lock()
	if wake := b.l.keys[enc]; wake != nil {
		wake(val)
	}
	b.l.mu.Unlock()
}

// join adds fs[i] under names[i] to one of the listener's tables, then
// waits until the LISTEN is live; on failure it takes them out again. They
// are in the table first, so a reconnect that happens before join returns
// still reaches them.
func join[F any](ctx context.Context, b *backend, table map[string]F, names []string, fs []F) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.l.mu.Lock()
	for i, name := range names {
		table[name] = fs[i]
	}
	b.l.mu.Unlock()
	if err := b.waitLive(ctx); err != nil {
		leave(b, table, names...)
		return err
	}
	return nil
}

func leave[F any](b *backend, table map[string]F, names ...string) {
	b.l.mu.Lock()
	for _, name := range names {
		delete(table, name)
	}
	b.l.mu.Unlock()
}

// Subscribe implements driver.Notifier on the one LISTEN connection, which
// the first subscription opens (see join).
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return b.SubscribeValue(ctx, key, func([]byte) { wake() })
}

// SubscribeValue implements driver.ValueNotifier: Subscribe, whose wake
// gets the value a CommitRelease or CommitReleaseMany stored when it fits
// in the NOTIFY payload with the key (maxMessage: at least 5,805 bytes,
// for the longest encoded key; 5,997 for a key of one byte), nil for
// every other wake-up (Release, Revoke, Notify, a larger value, a
// reconnect; every wake-up with Options.NoValueWake). The server encodes
// the value (base64) in the statement that stores it, so a CommitRelease
// stays one statement; the listener decodes it once per notification,
// whoever subscribed.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	return b.classify(join(ctx, b, b.l.keys, []string{b.keys.Encode(key)}, []func([]byte){wake}))
}

// Unsubscribe implements driver.Notifier. The LISTEN connection stays.
func (b *backend) Unsubscribe(key string) { leave(b, b.l.keys, b.keys.Encode(key)) }

// Notify implements driver.Notifier (one pg_notify).
func (b *backend) Notify(ctx context.Context, key string) error {
	_, err := b.pool.Exec(ctx, b.q.notify, b.channel, keyPayload(b.keys.Encode(key)))
	return b.classify(err)
}

// Publish implements driver.Broadcaster over the same channel. msg is sent
// base64-encoded; the whole payload must stay under PostgreSQL's 8000
// bytes (a *driver.TooLargeError otherwise, before any I/O): with a topic
// of up to 255 printable ASCII bytes, messages up to 5,800 bytes always
// fit.
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	enc := b.keys.Encode(topic)
	if n := maxMessage(enc); len(msg) > n {
		return &driver.TooLargeError{What: "message", Size: len(msg), Limit: n}
	}
	_, err := b.pool.Exec(ctx, b.q.notify, b.channel, string(tagTopic)+enc+" "+base64.StdEncoding.EncodeToString(msg))
	return b.classify(err)
}

// SubscribeTopic implements driver.Broadcaster on the same LISTEN
// connection as Subscribe. After a reconnect, deliver gets a reset.
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	return b.classify(join(ctx, b, b.l.topics, []string{b.keys.Encode(topic)}, []func([]byte, bool){deliver}))
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) { leave(b, b.l.topics, b.keys.Encode(topic)) }
