package zookeeper

import (
	"context"
	"encoding/binary"
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
// watch; a watch ended by session expiry (EventNotWatching) too. Its
// calls end when the watcher does (call).
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
			next, err := call(w.ctx, b, arm)
			if w.ctx.Err() != nil || errors.Is(err, driver.ErrClosed) {
				return
			}
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
// lock node, kept armed (see rearm). The first Subscribe of a Client on
// New's connection starts pollSession.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	path := b.lockPath(key)
	arm := func() (<-chan zk.Event, error) {
		_, _, ch, err := b.conn.ExistsW(path)
		return ch, err
	}
	err := b.subscribe(ctx, b.watches, key, func([]byte, bool) { wake() }, arm,
		func(w *watcher, _ zk.Event, _ time.Time) bool { return w.call(nil, false) })
	if err == nil {
		b.pollNewConn()
	}
	return err
}

// SubscribeValue implements driver.ValueNotifier: Subscribe, whose every
// re-arm also reads the key's value node, in the same round trip
// (pipelined), and wakes with the value if a CommitRelease wrote it since
// the value last seen (see releasedValue); with nil otherwise. There is
// no size bound: the read is the one a woken waiter would make. A claim
// (the watch fired on the lock node's creation, and the re-arm found it
// there) wakes claimWakeDelay later, unless a wake-up for a change after
// it (its release) comes first and takes its place.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	v := &valueWatch{b: b, lock: b.lockPath(key), path: b.valuePath(key)}
	err := b.subscribe(ctx, b.watches, key, func(val []byte, _ bool) { wake(val) }, v.arm, v.fired)
	if err == nil {
		b.pollNewConn()
	}
	return err
}

// claimWakeDelay is how long SubscribeValue holds back the wake-up of a
// claim. A claim needs no wake-up, but the re-arm after it cannot rule
// out a release in between (see "Why a claim still wakes" in
// docs/zookeeper.md); held back, it is usually replaced by the wake-up of
// the release that ends the claim (which carries a CommitRelease's
// value), instead of coming first with none.
const claimWakeDelay = time.Second

// valueWatch is the state of one key's value-carrying watch, used by its
// goroutine only (after the first arm, made by SubscribeValue).
type valueWatch struct {
	b          *backend
	lock, path string
	locked     bool        // the lock node existed at the last arm
	val        node        // the value node as the last arm read it (st nil: absent)
	seen       int64       // mzxid of the last value delivered, or seen at the first arm
	armed      bool        // the first arm is done
	claim      *time.Timer // a claim's wake-up, held back
}

// arm sets the existence watch on the lock node and reads the value node,
// concurrently (go-zk pipelines them: one round trip).
func (v *valueWatch) arm() (<-chan zk.Event, error) {
	var wg sync.WaitGroup
	var val node
	var verr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		val.d, val.st, verr = v.b.conn.Get(v.path)
	}()
	locked, _, ch, err := v.b.conn.ExistsW(v.lock)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if verr != nil {
		val = node{}
	}
	v.val, v.locked = val, locked
	if !v.armed && val.st != nil {
		v.seen = val.st.Mzxid // written before the subscription: not news
	}
	v.armed = true
	return ch, nil
}

// fired wakes with the value the re-arm read if it is released (a
// CommitRelease's, not seen before); holds a claim's wake-up back.
func (v *valueWatch) fired(w *watcher, ev zk.Event, _ time.Time) bool {
	if v.claim != nil {
		v.claim.Stop() // this wake-up takes its place
		v.claim = nil
	}
	val, ok := releasedValue(v.val, v.seen)
	if ok {
		v.seen = v.val.st.Mzxid
		return w.call(val, false)
	}
	if ev.Type == zk.EventNodeCreated && v.locked {
		v.claim = time.AfterFunc(claimWakeDelay, func() { w.call(nil, false) })
		return true
	}
	return w.call(nil, false)
}

// releasedValue returns the value of the value node n (read after a
// watch fired) if it was written by a CommitRelease after the version
// whose mzxid is seen, and has not expired. A CommitRelease creates and
// deletes a child of the value node in its multi-op, so the node's pzxid
// (the zxid of its last child change) equals its mzxid (of its last
// write) exactly when its last write was a CommitRelease's, and cversion
// is then positive (a node only created has pzxid = mzxid too, but
// cversion 0; Commit, Set and Revoke change neither pzxid nor cversion).
func releasedValue(n node, seen int64) ([]byte, bool) {
	st := n.st
	if st == nil || st.Mzxid <= seen || st.Pzxid != st.Mzxid || st.Cversion == 0 {
		return nil, false
	}
	if len(n.d) < valueHeader || n.d[0] != 1 {
		return nil, false
	}
	if ms := int64(binary.BigEndian.Uint64(n.d[1:valueHeader])); ms > 0 && time.Now().UnixMilli() >= st.Mtime+ms {
		return nil, false
	}
	return append([]byte{}, n.d[valueHeader:]...), true
}

// pollNewConn starts pollSession, once, on New's connection: a watch was
// just set, so the session is up.
func (b *backend) pollNewConn() {
	if b.own != nil {
		return
	}
	b.polling.Do(func() {
		b.sessionEvent(zk.Event{Type: zk.EventSession, State: zk.StateHasSession})
		b.goOwn(b.pollSession)
	})
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) { b.unsubscribe(b.watches, key) }

// Notify implements driver.Notifier (see the package doc). A claim
// changing under it fired the watches itself.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := b.setup(ctx); err != nil {
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
	h, _, ok := parseLock(data)
	if err == nil && !ok {
		return fmt.Errorf("lock node %s was not written by this package", lock)
	}
	if err == nil {
		_, _, err = b.multi(ctx,
			&zk.CheckVersionRequest{Path: b.ownerPath(key, h), Version: -1},
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
	if err := b.setup(ctx); err != nil {
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
				// Best effort: the session's end deletes it too.
				if err := b.do(context.Background(), func() error { return b.conn.Delete(p.path, -1) }); errors.Is(err, driver.ErrClosed) {
					return
				}
			}
		}()
	}
	return nil
}

// SubscribeTopic implements driver.Broadcaster: a child watch on the
// topic's directory, kept armed (see rearm and topicWatch).
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	if err := b.setup(ctx); err != nil {
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
		data, err := call(w.ctx, t.b, func() ([]byte, error) {
			data, _, err := t.b.conn.Get(t.dir + "/" + n)
			return data, err
		})
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

// sessionState is what the driver knows of its connection's session, to
// wake key subscribers when it is lost and not back at once: watches
// survive a reconnection within the session timeout, but nothing fires
// while the connection is down, and waiters would wait for a wake-up that
// cannot come (their lease bound aside).
type sessionState int

const (
	sessionNone     sessionState = iota // none yet
	sessionUp                           // established
	sessionLost                         // lost, no attempt to reconnect seen yet
	sessionTrying                       // an attempt to reconnect began at once
	sessionReported                     // not back at once: subscribers were woken
)

// sessionEvent is the event callback of a connection opened from a URL
// (it must not block): when the session's connection is lost and cannot
// be re-established at once (go-zk pauses a second before its next
// attempt, as it does at once with a single server, or its immediate
// attempt on another server ends without a session), every key subscriber
// is woken once, so waiters re-check (and see the error, or take over). A session found expired
// needs nothing more: every watch fires (EventNotWatching) once re-armed
// on the new session, topics included.
func (b *backend) sessionEvent(ev zk.Event) {
	if ev.Type != zk.EventSession {
		return
	}
	b.sessMu.Lock()
	prev, next := b.sess, b.sess
	switch ev.State {
	case zk.StateHasSession:
		next = sessionUp
	case zk.StateConnecting:
		// go-zk picked the server (hostList.Next) before it said so.
		pausing := b.own != nil && b.own.hosts.pausing.Load()
		switch {
		case prev == sessionTrying, prev == sessionLost && pausing:
			next = sessionReported
		case prev == sessionLost:
			next = sessionTrying
		}
	case zk.StateExpired:
		// Every watch fires by itself (EventNotWatching) once re-armed
		// on the next session.
		next = sessionNone
	case zk.StateConnected:
	default: // disconnected, authentication failed
		switch prev {
		case sessionUp:
			next = sessionLost
		case sessionTrying:
			next = sessionReported
		}
	}
	b.sess = next
	b.sessMu.Unlock()
	if next == sessionReported && prev != sessionReported {
		b.wakeKeys()
	}
}

// sessionPoll is how often pollSession looks at New's connection.
const sessionPoll = 250 * time.Millisecond

// pollSession does sessionEvent's work for a connection of the caller's,
// whose events the driver cannot receive: it looks at its state every
// sessionPoll until Close, and takes a look without a session, after one
// with, as the loss, and the next as a failed attempt to reconnect.
func (b *backend) pollSession() {
	t := time.NewTicker(sessionPoll)
	defer t.Stop()
	for {
		select {
		case <-b.done:
			return
		case <-t.C:
		}
		if st := b.conn.State(); st == zk.StateHasSession {
			b.sessionEvent(zk.Event{Type: zk.EventSession, State: st})
			continue
		}
		b.sessionEvent(zk.Event{Type: zk.EventSession, State: zk.StateConnecting})
		b.sessionEvent(zk.Event{Type: zk.EventSession, State: zk.StateDisconnected})
	}
}

// wakeKeys wakes every key subscriber, and tells every grant subscriber
// that a grant may have been missed.
func (b *backend) wakeKeys() {
	b.mu.Lock()
	ws := make([]*watcher, 0, len(b.watches))
	for _, w := range b.watches {
		ws = append(ws, w)
	}
	gs := make([]*watcher, 0, len(b.grants))
	for _, w := range b.grants {
		gs = append(gs, w)
	}
	b.mu.Unlock()
	for _, w := range ws {
		w.call(nil, false)
	}
	for _, w := range gs {
		w.call(nil, true)
	}
}

// goOwn runs f on a goroutine that Close waits for, unless the driver is
// closed.
func (b *backend) goOwn(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}
