package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// watcher is one substrate subscription (a key's existence watch, or a
// topic's child watch) and the Client's callback for it.
type watcher struct {
	ctx  context.Context // done once ended
	stop context.CancelFunc
	mu   sync.Mutex
	fn   func(msg []byte, reset bool)
}

// call calls the callback unless the watcher ended; false if it did.
func (w *watcher) call(msg []byte, reset bool) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ctx.Err() != nil {
		return false
	}
	w.fn(msg, reset)
	return true
}

// end stops the watcher: after it returns, the callback is not called.
func (w *watcher) end() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stop()
}

// subscribe arms a watch with arm (one round trip, bounded by ctx) and
// registers name's watcher in m, whose goroutine keeps the watch armed
// (see rearm) and calls fired each time it fired, until the watcher ends.
func (b *backend) subscribe(ctx context.Context, m map[string]*watcher, name string, fn func([]byte, bool),
	arm func() (<-chan zk.Event, error), fired func(*watcher, zk.Event, time.Time) bool) error {
	ch, err := call(ctx, b, arm)
	if err != nil {
		return err
	}
	w := &watcher{fn: fn}
	w.ctx, w.stop = context.WithCancel(context.Background())
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return driver.ErrClosed
	}
	if old := m[name]; old != nil {
		old.end() // the Client never subscribes twice; never leave a loop behind
	}
	m[name] = w
	b.wg.Add(1)
	go b.rearm(w, ch, arm, fired)
	return nil
}

// rearm waits for the watch to fire, re-arms it (retrying with backoff),
// and only then calls fired, so whatever happens after that fires the new
// watch; a watch ended by session expiry (EventNotWatching) too.
func (b *backend) rearm(w *watcher, ch <-chan zk.Event, arm func() (<-chan zk.Event, error), fired func(*watcher, zk.Event, time.Time) bool) {
	defer b.wg.Done()
	for {
		var ev zk.Event
		select {
		case ev = <-ch:
		case <-w.ctx.Done():
			return
		}
		at := time.Now()
		for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			next, err := arm()
			if err == nil {
				ch = next
				break
			}
			select {
			case <-time.After(wait):
			case <-w.ctx.Done():
				return
			}
		}
		if !fired(w, ev, at) {
			return
		}
	}
}

// unsubscribe ends the watcher registered under name in m, if any.
func (b *backend) unsubscribe(m map[string]*watcher, name string) {
	b.mu.Lock()
	w := m[name]
	delete(m, name)
	b.mu.Unlock()
	if w != nil {
		w.end()
	}
}

// Subscribe implements driver.Notifier: an existence watch on the key's
// lock node, kept armed (see rearm).
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	path := b.lockPath(key)
	arm := func() (<-chan zk.Event, error) {
		_, _, ch, err := b.conn.ExistsW(path)
		return ch, err
	}
	return b.subscribe(ctx, b.watches, key, func([]byte, bool) { wake() }, arm,
		func(w *watcher, _ zk.Event, _ time.Time) bool { return w.call(nil, false) })
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) { b.unsubscribe(b.watches, key) }

// Notify implements driver.Notifier (see the package doc). A claim
// changing under it fired the watches itself.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := b.prepare(ctx); err != nil {
		return err
	}
	lock := b.lockPath(key)
	_, failed, err := b.multi(ctx,
		&zk.CreateRequest{Path: lock, Acl: b.acl, Flags: zk.FlagEphemeral},
		&zk.DeleteRequest{Path: lock, Version: -1})
	if err == nil {
		return nil
	}
	if !errors.Is(err, zk.ErrNodeExists) || failed != 0 {
		return err
	}
	data, err := call(ctx, b, func() ([]byte, error) {
		data, _, err := b.conn.Get(lock)
		return data, err
	})
	if err == nil && !validHolder(string(data)) {
		return fmt.Errorf("lock node %s was not written by this package", lock)
	}
	if err == nil {
		_, _, err = b.multi(ctx,
			&zk.CheckVersionRequest{Path: b.ownerPath(string(data)), Version: -1},
			&zk.SetDataRequest{Path: lock, Data: data, Version: -1})
	}
	if errors.Is(err, zk.ErrNoNode) {
		return nil
	}
	return err
}

// published is one of this driver's messages, deleted after msgLife.
type published struct {
	path string
	at   time.Time
}

func (b *backend) topicDir(topic string) string { return b.root + "/t/" + keys.Encode(topic) }

// inTopic runs f, a call on the topic directory dir; if dir is missing
// (ErrNoNode), it creates dir and runs f again.
func (b *backend) inTopic(dir string, f func() error) error {
	err := f()
	if errors.Is(err, zk.ErrNoNode) {
		if _, err = b.conn.Create(dir, nil, 0, b.acl); err == nil || errors.Is(err, zk.ErrNodeExists) {
			err = f()
		}
	}
	return err
}

// Publish implements driver.Broadcaster. The publisher deletes its
// messages once older than MessageLife (or ZooKeeper at the session's end).
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if len(msg) > b.maxVal {
		return &driver.TooLargeError{What: "message", Size: len(msg), Limit: b.maxVal}
	}
	if err := b.prepare(ctx); err != nil {
		return err
	}
	dir := b.topicDir(topic)
	path, err := call(ctx, b, func() (path string, err error) {
		err = b.inTopic(dir, func() (err error) {
			path, err = b.conn.Create(dir+"/m-", msg, zk.FlagEphemeral|zk.FlagSequence, b.acl)
			return err
		})
		return path, err
	})
	if err != nil {
		return err
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pub = append(b.pub, published{path, now})
	i := slices.IndexFunc(b.pub, func(p published) bool { return now.Sub(p.at) <= b.msgLife })
	old := b.pub[:i] // never written again: b.pub only grows at its end
	b.pub = b.pub[i:]
	if len(old) > 0 && !b.closed {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for _, p := range old {
				_ = b.conn.Delete(p.path, -1) // best effort: the session's end deletes it too
			}
		}()
	}
	return nil
}

// SubscribeTopic implements driver.Broadcaster: a child watch on the
// topic's directory, kept armed (see rearm and topicWatch).
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	if err := b.prepare(ctx); err != nil {
		return err
	}
	t := &topicWatch{b: b, dir: b.topicDir(topic)}
	return b.subscribe(ctx, b.topics, topic, deliver, t.arm, t.fired)
}

// topicWatch is the state of one subscribed topic's child watch, used by
// its goroutine only (after the first arm, made by SubscribeTopic).
type topicWatch struct {
	b     *backend
	dir   string
	names []string        // the last listing
	seen  map[string]bool // the messages of the listing before; nil until the first
}

// arm lists the topic and sets the child watch. The messages of the first
// listing were published before SubscribeTopic returned: not delivered.
func (t *topicWatch) arm() (ch <-chan zk.Event, err error) {
	err = t.b.inTopic(t.dir, func() (err error) {
		t.names, _, ch, err = t.b.conn.ChildrenW(t.dir)
		return err
	})
	if err == nil && t.seen == nil {
		t.seen = make(map[string]bool, len(t.names))
		for _, n := range t.names {
			t.seen[n] = true
		}
	}
	return ch, err
}

// fired reads and delivers the messages of the new listing, with a reset
// first when the watch was lost (session expiry), when a listed message
// was already deleted, or when re-listing took more than half of
// MessageLife after the watch fired (messages may have come and gone
// unseen).
func (t *topicWatch) fired(w *watcher, ev zk.Event, at time.Time) bool {
	reset := ev.Type == zk.EventNotWatching || time.Since(at) > t.b.msgLife/2
	slices.Sort(t.names) // m-SEQUENCE, 10 digits zero-padded: in publishing order
	next := make(map[string]bool, len(t.names))
	var msgs [][]byte
	for _, n := range t.names {
		next[n] = true
		if t.seen[n] {
			continue
		}
		data, _, err := t.b.conn.Get(t.dir + "/" + n)
		if err != nil {
			reset = true // deleted before we read it, or unreadable
			continue
		}
		msgs = append(msgs, data)
	}
	t.seen = next
	if reset && !w.call(nil, true) {
		return false
	}
	for _, m := range msgs {
		if !w.call(m, false) {
			return false
		}
	}
	return true
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) { b.unsubscribe(b.topics, topic) }
