package etcd

import (
	"bytes"
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// qcacheLen is how many of a queue's first entries a queue cache reads;
// maxQueueCaches bounds the queue caches (watches) one process keeps.
const (
	qcacheLen      = 16
	maxQueueCaches = 1024
)

// queueCache is what a process holding a key fairly knows of the key's
// queue, from a read of its first entries and a watch of it since, so
// that HandOff can name the first waiter without reading the queue on
// its way (one round trip saved). It is only a guess: HandOff's
// transaction compares it (the entry unchanged and none created before
// it), and reads the queue in its failure branch.
type queueCache struct {
	id     string // the watch's registration (unwatch)
	gen    uint64
	mu     sync.Mutex
	holder string // the local holder it serves
	ready  bool   // loaded; the watch delivers from then on
	// complete: known holds every entry (else the first qcacheLen, and
	// entries created later are not added).
	complete bool
	rev      int64              // the revision of the load
	known    []*mvccpb.KeyValue // by CreateRevision
	pending  []*clientv3.Event  // delivered before the load
	overflow bool               // pending overflowed: the load is not enough
}

var qcacheGen atomic.Uint64

// head returns the cached first entry (nil: the queue is empty), if the
// cache can tell.
func (c *queueCache) head() (*mvccpb.KeyValue, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case !c.ready:
		return nil, false
	case len(c.known) > 0:
		return c.known[0], true
	}
	return nil, c.complete
}

// apply updates the cache with watch events.
func (c *queueCache) apply(evs []*clientv3.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready {
		if len(c.pending) < 4*qcacheLen {
			c.pending = append(c.pending, evs...)
		} else {
			c.pending, c.overflow = nil, true // unready until reloaded
		}
		return
	}
	c.applyLocked(evs)
}

func (c *queueCache) applyLocked(evs []*clientv3.Event) {
	for _, ev := range evs {
		if ev.Kv.ModRevision <= c.rev {
			continue // in the load already
		}
		i := slices.IndexFunc(c.known, func(kv *mvccpb.KeyValue) bool { return bytes.Equal(kv.Key, ev.Kv.Key) })
		switch {
		case ev.Type == mvccpb.DELETE && i >= 0:
			c.known = slices.Delete(c.known, i, i+1)
		case ev.Type == mvccpb.DELETE:
		case i >= 0:
			c.known[i] = ev.Kv
		case c.complete:
			j, _ := slices.BinarySearchFunc(c.known, ev.Kv.CreateRevision, func(kv *mvccpb.KeyValue, r int64) int {
				return int(kv.CreateRevision - r)
			})
			c.known = slices.Insert(c.known, j, ev.Kv)
		}
	}
}

// load reads the queue's first entries; the events the watch delivered
// meanwhile are applied on top.
func (c *queueCache) load(r *clientv3.GetResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overflow {
		c.pending, c.overflow = nil, false
		return
	}
	c.known, c.complete, c.rev = r.Kvs, !r.More, r.Header.Revision
	c.ready = true
	c.applyLocked(c.pending)
	c.pending = nil
}

// reset forgets everything until the next load (a broken watch).
func (c *queueCache) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ready, c.known, c.pending, c.overflow = false, nil, nil, false
}

// cacheQueue makes sure this process keeps a queue cache of key for its
// local holder holder, who was just granted the key: in the background, a
// watch of the queue and a read of its first entries (HandOff reads the
// queue itself until they are done).
func (b *backend) cacheQueue(key, holder string) {
	if b.noCache {
		return
	}
	lk := b.lockKey(key)
	b.qcMu.Lock()
	if c, ok := b.qcaches[lk]; ok {
		c.mu.Lock()
		c.holder = holder
		c.mu.Unlock()
		b.qcMu.Unlock()
		return
	}
	if len(b.qcaches) >= maxQueueCaches {
		b.qcMu.Unlock()
		return // HandOff reads the queue instead
	}
	gen := qcacheGen.Add(1)
	c := &queueCache{holder: holder, gen: gen, id: b.queuePrefix(key) + "/" + strconv.FormatUint(gen, 10)}
	b.qcaches[lk] = c
	b.qcMu.Unlock()
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.ctx, revokeTimeout)
		defer cancel()
		qp := b.queuePrefix(key)
		load := func() {
			cli, err := b.client(ctx)
			if err != nil {
				return
			}
			r, err := cli.Get(ctx, qp, headOpts(clientv3.WithLimit(qcacheLen))...)
			if err == nil {
				c.load(r)
			}
		}
		err := b.watchAs(ctx, c.id, qp, clientv3.GetPrefixRangeEnd(qp), nil, c.apply, func(resumed bool) {
			c.reset()
			if resumed {
				go load() // off the watch's goroutine; the cache is a guess
			}
		})
		if err != nil {
			b.dropQueueCache(key, func(cur *queueCache) bool { return cur == c })
			return
		}
		b.qcMu.Lock()
		current := b.qcaches[lk] == c
		b.qcMu.Unlock()
		if !current {
			b.unwatch(c.id) // dropped while the watch started
			return
		}
		load()
	}()
}

// queueHead returns the first entry of key's queue as this process's
// cache knows it (nil: empty), if it can tell.
func (b *backend) queueHead(key string) (*mvccpb.KeyValue, bool) {
	b.qcMu.Lock()
	c, ok := b.qcaches[b.lockKey(key)]
	b.qcMu.Unlock()
	if !ok {
		return nil, false
	}
	return c.head()
}

// dropQueueCache stops key's queue cache if match says so, in the
// background.
func (b *backend) dropQueueCache(key string, match func(c *queueCache) bool) {
	lk := b.lockKey(key)
	b.qcMu.Lock()
	c, ok := b.qcaches[lk]
	if ok && match(c) {
		delete(b.qcaches, lk)
	} else {
		ok = false
	}
	b.qcMu.Unlock()
	if !ok {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return // Close stops every watch
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		b.unwatch(c.id)
	}()
}

// releasedQueue drops key's queue cache if it serves holder, who no longer
// holds the key.
func (b *backend) releasedQueue(key, holder string) {
	b.dropQueueCache(key, func(c *queueCache) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.holder == holder
	})
}
