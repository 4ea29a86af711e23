package etcd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
)

// notifyTTL bounds how long a notify key stays on the server (it is put
// with the shared lease of this TTL class, so it is deleted eventually).
const notifyTTL = time.Minute

// Subscribe implements claim.Notifier. The first subscriber of a key in
// this Backend starts a watch on the key's lock and notify keys from the
// current revision and returns once etcd has confirmed it; later
// subscribers share it.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check("subscribe", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, wrap("subscribe", key, err)
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, wrap("subscribe", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier: a put of the key's notify key, which
// every watch of the key sees.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check("notify", key); err != nil {
		return err
	}
	now := time.Now()
	gc, err := b.gcLease(ctx, now, notifyTTL)
	if err != nil {
		return wrap("notify", key, ctxErr(ctx, err))
	}
	var opts []clientv3.OpOption
	if gc != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(gc))
	}
	if _, err := b.cli.Put(ctx, b.lockKey(key)+notifySuffix, "", opts...); err != nil {
		b.gcFailed(gc, err)
		return wrap("notify", key, ctxErr(ctx, err))
	}
	return nil
}

// watch is one running watch loop.
type watch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startWatch watches [from, end) (just from if end is empty) from the
// current revision, returning once etcd confirmed the watch (or ctx is
// done). The watch lives until wctx is cancelled or stop is called.
func (b *Backend) startWatch(ctx, wctx context.Context, from, end string) (wch clientv3.WatchChan, stop func(), err error) {
	opts := []clientv3.OpOption{clientv3.WithCreatedNotify()}
	if end != "" {
		opts = append(opts, clientv3.WithRange(end))
	}
	// WithRequireLeader: a member cut off from its cluster's leader
	// cancels the watch instead of silently delivering nothing; the
	// Backend then re-watches and wakes the subscribers to re-check.
	actx, stop := context.WithCancel(wctx)
	// Until etcd confirms the watch, ctx bounds it too: Watch itself
	// blocks until its request is on a stream, which it is not while the
	// client is disconnected.
	unbind := context.AfterFunc(ctx, stop)
	wch = b.cli.Watch(clientv3.WithRequireLeader(actx), from, opts...)
	select {
	case r, ok := <-wch:
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case !ok && wctx.Err() != nil:
			err = claim.ErrClosed
		case !ok:
			err = errors.New("watch channel closed (client closed?)")
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
	return nil, nil, err
}

// rewatch restarts a broken watch from the current revision, retrying with
// backoff until it is live or wctx is done (then it returns nil).
func (b *Backend) rewatch(wctx context.Context, from, end string) (clientv3.WatchChan, func()) {
	backoff := 20 * time.Millisecond
	for {
		wch, stop, err := b.startWatch(wctx, wctx, from, end)
		if err == nil {
			return wch, stop
		}
		t := time.NewTimer(backoff)
		select {
		case <-wctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

// substrate plugs per-key watches into the hub.
type substrate struct{ b *Backend }

func (s substrate) Subscribe(ctx context.Context, key string) error {
	b := s.b
	lk := b.lockKey(key)
	end := lk + "\x01"
	wctx, cancel := context.WithCancel(b.ctx)
	wch, stop, err := b.startWatch(ctx, wctx, lk, end)
	if err != nil {
		cancel()
		return err
	}
	w := &watch{cancel: cancel, done: make(chan struct{})}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return claim.ErrClosed
	}
	b.watches[key] = w
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		defer close(w.done)
		b.watchKey(wctx, key, lk, end, wch, stop)
	}()
	return nil
}

func (s substrate) Unsubscribe(key string) {
	b := s.b
	b.mu.Lock()
	w := b.watches[key]
	delete(b.watches, key)
	b.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// watchKey wakes the key's subscribers on a delete of the lock key
// (release or lease expiry) or a put of its notify key. If the watch
// breaks (compacted, cancelled by the server), it re-watches from the
// current revision and then wakes every subscriber to re-check state:
// whatever happened in the gap, nothing is lost.
func (b *Backend) watchKey(wctx context.Context, key, lk, end string, wch clientv3.WatchChan, stop func()) {
	nk := lk + notifySuffix
	for {
		for r := range wch {
			if r.Err() != nil || r.Canceled {
				break
			}
			for _, ev := range r.Events {
				k := string(ev.Kv.Key)
				if (k == lk && ev.Type == mvccpb.DELETE) || (k == nk && ev.Type == mvccpb.PUT) {
					b.hub.Wake(key)
					break
				}
			}
		}
		stop()
		if wctx.Err() != nil {
			return
		}
		b.watchGaps.Add(1)
		b.hub.Wake(key)
		if wch, stop = b.rewatch(wctx, lk, end); wch == nil {
			return
		}
		b.hub.Wake(key)
	}
}

// Publish implements claim.Broadcaster: a put of the topic's key, which
// carries the message to every watch of the topic.
func (b *Backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := b.check("publish", topic); err != nil {
		return err
	}
	if len(msg) > b.maxVal {
		return fmt.Errorf("etcd: publish %q: %w", topic, &claim.TooLargeError{What: "payload", Size: len(msg), Limit: b.maxVal})
	}
	if _, err := b.cli.Put(ctx, b.topicKey(topic), string(msg)); err != nil {
		return wrap("publish", topic, ctxErr(ctx, err))
	}
	return nil
}

// SubscribeTopic implements claim.Broadcaster with a watch of the topic's
// key from the current revision; it returns once etcd confirmed the watch.
// If the watch breaks, it is restarted from the current revision and
// handle is called with reset=true.
func (b *Backend) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (func(), error) {
	if err := b.check("subscribe-topic", topic); err != nil {
		return nil, err
	}
	tk := b.topicKey(topic)
	wctx, cancel := context.WithCancel(b.ctx)
	wch, stopWatch, err := b.startWatch(ctx, wctx, tk, "")
	if err != nil {
		cancel()
		return nil, wrap("subscribe-topic", topic, ctxErr(ctx, err))
	}
	done := make(chan struct{})
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("etcd: subscribe-topic %q: %w", topic, claim.ErrClosed)
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
				for _, ev := range r.Events {
					if ev.Type == mvccpb.PUT {
						handle(ev.Kv.Value, false)
					}
				}
			}
			stopWatch()
			if wctx.Err() != nil {
				return
			}
			if wch, stopWatch = b.rewatch(wctx, tk, ""); wch == nil {
				return
			}
			handle(nil, true)
		}
	}()
	var once sync.Once
	return func() {
		once.Do(cancel)
		<-done
	}, nil
}
