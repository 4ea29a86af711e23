package zookeeper

import (
	"context"
	"sync"
	"time"
)

// A process that holds a key fairly keeps the key's queue read while it
// holds it (a tracker), so that its HandOff makes its multi-op at once,
// without listing and reading the queue first: the hand-over then costs
// one round trip, not three. The tracker lists the queue and reads its
// entries with a child watch set, and again each time the watch fires
// (an entry added or removed), in the background. A listing it holds may
// still be out of date (an entry renewed, removed or added since the
// watch fired and before HandOff took it), and that is safe: HandOff's
// multi-op is guarded as with a fresh read (the entries it drops at the
// versions read, the entry it grants deleted, an empty queue proved
// unchanged by its version), so an out-of-date listing only fails the
// multi-op, and HandOff reads the queue and tries again.
//
// A tracker starts when this process's Enqueue returns a lease, and when
// a lease is granted to a holder this process enqueued (its grant watch,
// or its own HandOff or Dequeue). It ends at the HandOff that takes its
// listing, at the lease's TTL (a lease kept alive longer hands over with
// reads of its own), and at Close.

// tracker is one key's queue, kept read (see above).
type tracker struct {
	stop context.CancelFunc
	mu   sync.Mutex
	raw  *rawQueue // nil until read, and while a change is being read
}

func (t *tracker) set(raw *rawQueue) {
	t.mu.Lock()
	t.raw = raw
	t.mu.Unlock()
}

// track starts keeping key's queue read for ttl, replacing a tracker of
// the key's that is still running.
func (b *backend) track(key string, ttl time.Duration) {
	ctx, stop := context.WithTimeout(context.Background(), ttl)
	t := &tracker{stop: stop}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		stop()
		return
	}
	if old := b.tracks[key]; old != nil {
		old.stop()
	}
	b.tracks[key] = t
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		defer stop()
		for ctx.Err() == nil {
			raw, ch, err := b.listQueue(ctx, key, true)
			if err != nil {
				t.set(nil)
				return // HandOff reads the queue itself
			}
			t.set(&raw)
			select {
			case <-ch:
				t.set(nil)
			case <-ctx.Done():
			}
		}
	}()
}

// tracked stops key's tracker, if any, and returns its listing (nil if
// none is up to date as far as it knows).
func (b *backend) tracked(key string) *rawQueue {
	b.mu.Lock()
	t := b.tracks[key]
	delete(b.tracks, key)
	b.mu.Unlock()
	if t == nil {
		return nil
	}
	t.stop()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.raw
}

// enqueued records that holder, queued by this process, waits for key.
func (b *backend) enqueued(holder string) {
	b.mu.Lock()
	b.waiting[holder] = struct{}{}
	b.mu.Unlock()
}

// holds records that holder, if this process queued it, holds a lease for
// ttl now, and starts tracking key's queue for it.
func (b *backend) holds(key, holder string, ttl time.Duration) {
	b.mu.Lock()
	_, mine := b.waiting[holder]
	delete(b.waiting, holder)
	b.mu.Unlock()
	if mine {
		b.track(key, ttl)
	}
}

// left forgets holder, which left key's queue.
func (b *backend) left(holder string) {
	b.mu.Lock()
	delete(b.waiting, holder)
	b.mu.Unlock()
}
