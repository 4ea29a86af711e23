package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
)

// Subscribe implements claim.Notifier. The first subscriber of a key in
// this Backend sets an existence watch on the key's lock node (one round
// trip); later ones share it.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check("subscribe", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, b.wrap("subscribe", key, err)
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, b.wrap("subscribe", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier. If the key is free it creates and
// deletes its lock node in one multi-op; if it is held, it rewrites the
// lock node's data unchanged, guarded by the holder's owner node (so a
// newer claim's lock node is never touched). Either fires every watch on
// the lock node. If the claim changes under it, that change fired them.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check("notify", key); err != nil {
		return err
	}
	if err := b.prepare(ctx); err != nil {
		return b.wrap("notify", key, err)
	}
	lock := b.lockPath(key)
	_, failed, err := b.multi(ctx,
		&zk.CreateRequest{Path: lock, Acl: b.acl, Flags: zk.FlagEphemeral},
		&zk.DeleteRequest{Path: lock, Version: -1})
	if err == nil {
		return nil
	}
	if !errors.Is(err, zk.ErrNodeExists) || failed != 0 {
		return b.wrap("notify", key, err)
	}
	var data []byte
	err = b.do(ctx, func() (err error) {
		data, _, err = b.conn.Get(lock)
		return err
	})
	if err == nil {
		if !validHolder(string(data)) {
			return b.wrap("notify", key, fmt.Errorf("lock node %s was not written by this package", lock))
		}
		_, _, err = b.multi(ctx,
			&zk.CheckVersionRequest{Path: b.ownerPath(string(data)), Version: -1},
			&zk.SetDataRequest{Path: lock, Data: data, Version: -1})
	}
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return b.wrap("notify", key, err)
	}
	return nil
}

// substrate keeps one watch loop per subscribed key for the hub.
type substrate struct{ b *Backend }

func (s substrate) Subscribe(ctx context.Context, key string) error {
	b := s.b
	path := b.lockPath(key)
	var ch <-chan zk.Event
	err := b.do(ctx, func() (err error) {
		_, _, ch, err = b.conn.ExistsW(path)
		return err
	})
	if err != nil {
		return err
	}
	stop := make(chan struct{})
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return claim.ErrClosed
	}
	b.watches[key] = stop
	b.wg.Add(1)
	b.mu.Unlock()
	go b.watchLoop(key, path, ch, stop)
	return nil
}

func (s substrate) Unsubscribe(key string) {
	b := s.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if stop, ok := b.watches[key]; ok {
		close(stop)
		delete(b.watches, key)
	}
}

// watchLoop waits for the key's watch to fire, re-arms it, and only then
// wakes the local subscribers: whatever happens after they wake fires the
// new watch. A watch ended by session expiry (EventNotWatching) is handled
// the same way, so every subscriber re-checks after a gap.
func (b *Backend) watchLoop(key, path string, ch <-chan zk.Event, stop chan struct{}) {
	defer b.wg.Done()
	for {
		select {
		case <-ch:
		case <-stop:
			return
		case <-b.done:
			return
		}
		for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			_, _, next, err := b.conn.ExistsW(path)
			if err == nil {
				ch = next
				break
			}
			if !sleep(wait, stop, b.done) {
				return
			}
		}
		b.hub.Wake(key)
	}
}

// sleep waits for d; false if stop or done closed first.
func sleep(d time.Duration, stop, done <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	case <-done:
		return false
	}
}

// published is one of this Backend's messages, deleted after msgLife.
type published struct {
	path string
	at   time.Time
}

// topicDir returns topic's directory, creating it on first use.
func (b *Backend) topicDir(ctx context.Context, topic string) (string, error) {
	if err := b.prepare(ctx); err != nil {
		return "", err
	}
	dir := b.root + "/t/" + keys.Encode(topic)
	b.mu.Lock()
	known := b.dirs[dir]
	b.mu.Unlock()
	if known {
		return dir, nil
	}
	err := b.do(ctx, func() error {
		_, err := b.conn.Create(dir, nil, 0, b.acl)
		if errors.Is(err, zk.ErrNodeExists) {
			return nil
		}
		return err
	})
	if err != nil {
		return "", err
	}
	b.mu.Lock()
	b.dirs[dir] = true
	b.mu.Unlock()
	return dir, nil
}

// Publish implements claim.Broadcaster: one ephemeral sequential znode per
// message under the topic's directory, which this Backend deletes once it
// is older than MessageLife (or ZooKeeper does when the session ends).
func (b *Backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := b.check("publish", topic); err != nil {
		return err
	}
	if err := claim.CheckValue(msg, b.maxVal); err != nil {
		return fmt.Errorf("zookeeper: publish %q: %w", topic, err)
	}
	dir, err := b.topicDir(ctx, topic)
	if err != nil {
		return b.wrap("publish", topic, err)
	}
	var path string
	err = b.do(ctx, func() (err error) {
		path, err = b.conn.Create(dir+"/m-", msg, zk.FlagEphemeral|zk.FlagSequence, b.acl)
		return err
	})
	if err != nil {
		if errors.Is(err, zk.ErrNoNode) { // directory deleted: re-create next time
			b.mu.Lock()
			delete(b.dirs, dir)
			b.mu.Unlock()
		}
		return b.wrap("publish", topic, err)
	}
	now := time.Now()
	b.mu.Lock()
	b.pub = append(b.pub, published{path, now})
	var old []string
	for len(b.pub) > 0 && now.Sub(b.pub[0].at) > b.msgLife {
		old = append(old, b.pub[0].path)
		b.pub = b.pub[1:]
	}
	if len(old) > 0 && !b.closed {
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			for _, p := range old {
				_ = b.conn.Delete(p, -1) // best effort: the session's end deletes it too
			}
		}()
	}
	b.mu.Unlock()
	return nil
}

// topicSub is one SubscribeTopic: a watcher goroutine that lists new
// messages and queues them, and a handler goroutine that runs the handler
// in order (so a slow handler never delays the watch).
type topicSub struct {
	stop  chan struct{}
	done  chan struct{} // both goroutines ended
	queue chan []byte   // nil entry: reset
}

// SubscribeTopic implements claim.Broadcaster. It lists the topic with a
// child watch (one round trip) and delivers messages created after that.
// reset is delivered when the watch was lost (session expiry), when a
// listed message was already deleted, when listing took more than half of
// MessageLife after the watch fired (messages may have come and gone
// unseen), or when the handler falls more than 1024 messages behind.
func (b *Backend) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (func(), error) {
	if err := b.check("subscribe-topic", topic); err != nil {
		return nil, err
	}
	dir, err := b.topicDir(ctx, topic)
	if err != nil {
		return nil, b.wrap("subscribe-topic", topic, err)
	}
	var names []string
	var ch <-chan zk.Event
	err = b.do(ctx, func() (err error) {
		names, _, ch, err = b.conn.ChildrenW(dir)
		return err
	})
	if err != nil {
		return nil, b.wrap("subscribe-topic", topic, err)
	}
	t := &topicSub{stop: make(chan struct{}), done: make(chan struct{}), queue: make(chan []byte, 1024)}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, fmt.Errorf("zookeeper: subscribe-topic %q: %w", topic, claim.ErrClosed)
	}
	b.topics[t] = struct{}{}
	b.mu.Unlock()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		b.topicLoop(dir, names, ch, t)
	}()
	go func() {
		defer close(t.done)
		for {
			select {
			case m := <-t.queue:
				handle(m, m == nil)
			case <-t.stop:
				<-watched
				return
			}
		}
	}()
	return func() { b.stopTopic(t) }, nil
}

func (b *Backend) stopTopic(t *topicSub) {
	b.mu.Lock()
	_, mine := b.topics[t]
	delete(b.topics, t)
	b.mu.Unlock()
	if mine {
		close(t.stop)
	}
	<-t.done
}

func (t *topicSub) deliver(m []byte) bool {
	select {
	case t.queue <- m:
	case <-t.stop:
		return false
	default:
		select { // too slow: tell it it missed messages
		case t.queue <- nil:
		default:
		}
	}
	return true
}

// topicLoop re-lists the topic each time its child watch fires and queues
// the messages it has not seen, oldest first.
func (b *Backend) topicLoop(dir string, names []string, ch <-chan zk.Event, t *topicSub) {
	seen := map[string]bool{}
	for _, n := range names {
		seen[n] = true
	}
	for {
		var ev zk.Event
		select {
		case ev = <-ch:
		case <-t.stop:
			return
		}
		fired := time.Now()
		reset := ev.Type == zk.EventNotWatching
		for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			var err error
			names, _, ch, err = b.conn.ChildrenW(dir)
			if err == nil {
				break
			}
			if errors.Is(err, zk.ErrNoNode) {
				_, _ = b.conn.Create(dir, nil, 0, b.acl)
			}
			if !sleep(wait, t.stop, nil) {
				return
			}
		}
		if time.Since(fired) > b.msgLife/2 {
			reset = true
		}
		slices.SortFunc(names, func(x, y string) int { return strings.Compare(seq(x), seq(y)) })
		next := make(map[string]bool, len(names))
		var msgs [][]byte
		for _, n := range names {
			next[n] = true
			if seen[n] {
				continue
			}
			data, _, err := b.conn.Get(dir + "/" + n)
			if err != nil {
				reset = true // deleted before we read it, or unreadable
				continue
			}
			msgs = append(msgs, data)
		}
		seen = next
		if reset && !t.deliver(nil) {
			return
		}
		for _, m := range msgs {
			if m == nil {
				m = []byte{}
			}
			if !t.deliver(m) {
				return
			}
		}
	}
}

// seq returns the sequence suffix of a message node's name, which orders
// messages (10 digits, zero-padded).
func seq(name string) string { return name[strings.LastIndexByte(name, '-')+1:] }
