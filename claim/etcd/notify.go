package etcd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

// notifyTTL bounds how long a notify key stays on the server (it is put
// with the shared lease of this TTL class, so it is deleted eventually).
const notifyTTL = time.Minute

// Subscribe implements driver.Notifier: a watch of the key's lock and
// notify keys; a delete of the one (release, lease expiry, takeover) or a
// put of the other (Notify) wakes, a put of the lock key (a claim, an
// Extend) is remembered for takeoverAfter, and so does a connection to etcd lost and not
// re-established at once (see monitor) or a broken watch (see watch). An
// error the server answers the watch with (no permission to read the
// key, an expired token) is returned, classified (ErrConfig).
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return b.SubscribeValue(ctx, key, func([]byte) { wake() })
}

// maxWakeValue is the largest value a CommitRelease's wake-up carries
// (driver.ValueNotifier): the value is then written twice (the value key
// and the notify key) and sent to every watcher of the key.
const maxWakeValue = 8 << 10

// carryValue is the put of the notify key that makes a CommitRelease's
// wake-up carry value: 'v' and the value, in the same transaction as the
// release, so its watchers see both at one revision. Notify and Revoke put
// the notify key empty.
func carryValue(lk string, value []byte, gc clientv3.LeaseID) clientv3.Op {
	return clientv3.OpPut(lk+notifySuffix, "v"+string(value), clientv3.WithLease(gc))
}

// SubscribeValue implements driver.ValueNotifier: Subscribe, whose wake
// gets the value a CommitRelease (or CommitReleaseMany) carried in the
// notify key it put at the revision of its release (values up to
// maxWakeValue); every other wake-up carries nil. If one watch response
// holds several revisions, the wake-up carries the value only if the last
// revision that wakes is such a release.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	lk := b.lockKey(key)
	nk := lk + notifySuffix
	return b.watch(ctx, lk, lk+"\x01", func() { wake(nil) }, func(evs []*clientv3.Event) {
		var woke, carried int64 // revisions of the last wake-up, of the last value carried
		var val []byte
		for _, ev := range evs {
			k := string(ev.Kv.Key)
			switch {
			case k == lk && ev.Type == mvccpb.PUT:
				// A claim or Extend: the time it is learned is what a
				// takeover is judged by (takeoverAfter).
				b.saw(lk, ev.Kv.ModRevision, ev.Kv.Lease, time.Now())
			case k == lk:
				b.forget(lk)
				woke = ev.Kv.ModRevision
			case k == nk && ev.Type == mvccpb.PUT:
				woke = ev.Kv.ModRevision
				if v, ok := bytes.CutPrefix(ev.Kv.Value, []byte("v")); ok {
					carried, val = woke, v
				}
			}
		}
		switch {
		case woke == 0:
		case woke == carried:
			wake(val)
		default:
			wake(nil)
		}
	}, func(bool) { wake(nil) })
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) { b.unwatch(b.lockKey(key)) }

// Notify implements driver.Notifier: a put of the key's notify key, which
// every watch of the key sees.
func (b *backend) Notify(ctx context.Context, key string) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	gc, err := b.gcLease(ctx, cli, time.Now(), notifyTTL)
	if err != nil {
		return b.fail(ctx, err)
	}
	_, err = cli.Put(ctx, b.lockKey(key)+notifySuffix, "", clientv3.WithLease(gc))
	return b.putFailed(ctx, err, gc)
}

// Publish implements driver.Broadcaster: a put of the topic's key. A
// message over the value limit is refused before any I/O.
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if len(msg) > b.maxVal {
		return &driver.TooLargeError{What: "message", Size: len(msg), Limit: b.maxVal}
	}
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, b.topicKey(topic), string(msg))
	return b.fail(ctx, err)
}

// SubscribeTopic implements driver.Broadcaster: a watch of the topic's
// key; each put is a message, a broken watch a reset.
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	tk := b.topicKey(topic)
	return b.watch(ctx, tk, tk+"\x00", nil, func(evs []*clientv3.Event) {
		for _, ev := range evs {
			if ev.Type == mvccpb.PUT {
				deliver(ev.Kv.Value, false)
			}
		}
	}, func(resumed bool) {
		if resumed {
			deliver(nil, true)
		}
	})
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) { b.unwatch(b.topicKey(topic)) }

// watch starts a watch of [from, end) (see startWatch). Until
// unwatch(from) or Close, a goroutine hands every response's events to
// events; if the watch breaks (compacted, cancelled by the server), it
// calls gap(false), re-watches from the current revision (retrying with
// backoff), and calls gap(true) once the new watch is live. lost, if not
// nil, is called when the connection is lost (monitor).
func (b *backend) watch(ctx context.Context, from, end string, lost func(), events func([]*clientv3.Event), gap func(resumed bool)) error {
	return b.watchAs(ctx, from, from, end, lost, events, gap)
}

// watchAs is watch, registered as id (for unwatch) rather than from.
func (b *backend) watchAs(ctx context.Context, id, from, end string, lost func(), events func([]*clientv3.Event), gap func(resumed bool)) error {
	wctx, cancel := context.WithCancel(b.ctx)
	wch, stop, err := b.startWatch(ctx, wctx, from, end)
	if err != nil {
		cancel()
		return b.fail(ctx, err)
	}
	done := make(chan struct{})
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return driver.ErrClosed
	}
	b.watches[id] = func() { cancel(); <-done }
	if lost != nil {
		b.lost[id] = lost
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer close(done)
		for {
			for r := range wch {
				if r.Err() != nil || r.Canceled {
					break
				}
				events(r.Events)
			}
			stop()
			if wctx.Err() != nil {
				return
			}
			b.watchGaps.Add(1)
			gap(false)
			for backoff := 20 * time.Millisecond; ; backoff = min(2*backoff, 2*time.Second) {
				if wch, stop, err = b.startWatch(wctx, wctx, from, end); err == nil {
					break
				}
				select {
				case <-wctx.Done():
					return
				case <-time.After(backoff):
				}
			}
			gap(true)
		}
	}()
	return nil
}

// unwatch stops the watch of from (or registered as from: watchAs) and
// waits for its goroutine.
func (b *backend) unwatch(from string) {
	b.mu.Lock()
	stop := b.watches[from]
	delete(b.watches, from)
	delete(b.lost, from)
	b.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// startWatch watches [from, end) from the current revision, returning once
// etcd confirmed the watch (or ctx is done). The watch lives until wctx is
// cancelled or stop is called.
func (b *backend) startWatch(ctx, wctx context.Context, from, end string) (wch clientv3.WatchChan, stop func(), err error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, nil, err
	}
	// WithRequireLeader: a member cut off from its cluster's leader
	// cancels the watch instead of silently delivering nothing; the
	// driver then re-watches and wakes the subscribers to re-check.
	actx, stop := context.WithCancel(wctx)
	// Until etcd confirms the watch, ctx bounds it too: Watch itself
	// blocks until its request is on a stream, which it is not while the
	// client is disconnected.
	unbind := context.AfterFunc(ctx, stop)
	wch = cli.Watch(clientv3.WithRequireLeader(actx), from, clientv3.WithRange(end), clientv3.WithCreatedNotify())
	select {
	case r, ok := <-wch:
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case !ok:
			err = driver.ErrClosed // the driver or the etcd client closed
		case r.Err() != nil:
			err = r.Err()
		case r.Canceled:
			err = errors.New("watch cancelled by the server")
		default:
			if unbind() {
				return wch, stop, nil
			}
			err = ctx.Err() // ctx ended just now, and stopped the watch
		}
	case <-ctx.Done():
		err = ctx.Err()
	}
	unbind()
	stop()
	return nil, nil, fmt.Errorf("watch: %w", err)
}
