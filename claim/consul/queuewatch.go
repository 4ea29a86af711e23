package consul

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim/driver"
)

// queueWatch is, in the process that holds a key's fair lease, a
// blocking query on the key's queue key that keeps the queue as last
// read, so that HandOff writes at once, conditioned on what it read,
// without a read of its own (if a waiter enqueued after the last read,
// the write rolls back and HandOff reads).
type queueWatch struct {
	token  uint64 // the lease it serves
	sq     uint64 // its record's served entries (see record)
	sn     int
	cancel context.CancelFunc

	mu    sync.Mutex
	until time.Time // the lease's recorded expiry: the watch ends ClockSkew past it
	known bool      // qidx and q are the queue key as last read or written
	qidx  uint64    // its ModifyIndex; 0: absent
	q     []entry
}

// fairLocal is this process's part of fair acquisition: the holders that
// queued through this driver (so that a grant to one of them starts a
// queueWatch) and the queue watches. Guarded by backend.mu.
type fairLocal struct {
	locals   map[string]map[string]time.Time // key → queued holder → its entry's expiry
	qwatches map[string]*queueWatch          // by key
	ended    map[string]uint64               // by key: the latest lease whose watch was dropped
	qwg      sync.WaitGroup                  // the queue watches' goroutines
}

// noteLocal records that holder queued for key from this process, its
// entry expiring at exp (Unix ms).
func (b *backend) noteLocal(key, holder string, exp int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.locals[key]
	if m == nil {
		m = map[string]time.Time{}
		b.locals[key] = m
	}
	now := time.Now()
	prune := func(m map[string]time.Time) {
		for h, t := range m {
			if now.After(t) {
				delete(m, h)
			}
		}
	}
	prune(m)
	m[holder] = time.UnixMilli(exp).Add(b.o.ClockSkew)
	if len(b.locals) > maxLocalKeys {
		// Holders granted while their grants were polled, or gone
		// without a word: their keys' entries expire.
		for k, m := range b.locals {
			if prune(m); len(m) == 0 {
				delete(b.locals, k)
			}
		}
	}
}

// maxLocalKeys is how many keys fairLocal.locals holds before noteLocal
// drops the expired entries of every key.
const maxLocalKeys = 1024

// takeLocal forgets holder's entry for key and reports whether it was
// there.
func (b *backend) takeLocal(key, holder string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.locals[key]
	_, ok := m[holder]
	delete(m, holder)
	if len(m) == 0 {
		delete(b.locals, key)
	}
	return ok
}

// holdQueue starts watching key's queue for the lease l, held in this
// process, unless a watch serves it already (then it only takes seed, a
// queue state just read or written, when not nil). It replaces a watch
// for an earlier lease. With every watch slot taken (MaxWatches), or
// the driver closed, it does nothing: HandOff then reads first.
func (b *backend) holdQueue(l driver.Lease, seed *fairState) {
	_, exp := handleIndex(l)
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.qwatches[l.Key]
	if l.Token <= b.ended[l.Key] || (w != nil && w.token > l.Token) {
		return // a grant seen after its lease was handed on
	}
	if w != nil && w.token == l.Token {
		w.mu.Lock()
		w.until = exp
		if seed != nil {
			w.known, w.qidx, w.q = true, seed.qidx, seed.q
		}
		w.mu.Unlock()
		return
	}
	if w != nil {
		w.cancel()
		delete(b.qwatches, l.Key)
	}
	if b.closed || (b.o.MaxWatches >= 0 && len(b.watchers)+len(b.qwatches) >= b.o.MaxWatches) {
		return
	}
	delete(b.ended, l.Key)
	ctx, cancel := context.WithCancel(b.ctx)
	w = &queueWatch{token: l.Token, cancel: cancel, until: exp}
	w.sq, w.sn = handleQueue(l)
	if seed != nil {
		w.known, w.qidx, w.q = true, seed.qidx, seed.q
	}
	b.qwatches[l.Key] = w
	b.qwg.Add(1)
	go b.watchQueue(ctx, l.Key, w)
}

// dropQueue stops the watch of key's queue for the lease of token (any
// lease: token 0), and keeps a later holdQueue for it from starting one.
func (b *backend) dropQueue(key string, token uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if token != 0 && token > b.ended[key] {
		if len(b.ended) >= maxLocalKeys {
			clear(b.ended) // at worst a watch for a lease gone, until its expiry
		}
		b.ended[key] = token
	}
	if w := b.qwatches[key]; w != nil && (token == 0 || w.token == token) {
		w.cancel()
		delete(b.qwatches, key)
	}
}

// extendQueue moves the end of the watch for the lease of token to exp.
func (b *backend) extendQueue(key string, token uint64, exp time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.qwatches[key]; w != nil && w.token == token {
		w.mu.Lock()
		w.until = exp
		w.mu.Unlock()
	}
}

// cachedQueue returns key's queue as the watch for the lease of token
// last saw it, if it has.
func (b *backend) cachedQueue(key string, token uint64) (fairState, bool) {
	b.mu.Lock()
	w := b.qwatches[key]
	b.mu.Unlock()
	if w == nil || w.token != token {
		return fairState{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return fairState{qidx: w.qidx, q: slices.Clone(w.q)}, w.known
}

// maxQueueWait bounds a queue watch's waits: every hand-over gives its
// query up, and the agent keeps a query given up (and its connection)
// until its wait ends.
const maxQueueWait = 5 * time.Second

// watchQueue runs w's blocking query on key's queue key until ctx is
// cancelled (the lease handed over, Close) or ClockSkew past the lease's
// expiry, with waits from minWait (doubling while nothing changes) up to
// maxQueueWait, WaitTime and the lease's end. A failed query forgets the
// queue until the next answer.
func (b *backend) watchQueue(ctx context.Context, key string, w *queueWatch) {
	defer b.qwg.Done()
	defer func() {
		b.mu.Lock()
		if b.qwatches[key] == w {
			delete(b.qwatches, key)
		}
		b.mu.Unlock()
		w.cancel()
	}()
	qk := b.queueKey(key)
	bo := driver.Backoff{Min: 50 * time.Millisecond, Max: 5 * time.Second, Rand: rand.Float64}
	var idx uint64
	wait := min(minWait, b.o.WaitTime)
	for {
		w.mu.Lock()
		left := time.Until(w.until.Add(b.o.ClockSkew))
		w.mu.Unlock()
		if left <= 0 {
			return
		}
		d := max(min(wait, left), time.Millisecond)
		q := &capi.QueryOptions{WaitIndex: idx, WaitTime: d}
		qctx, cancel := context.WithTimeout(ctx, d+d/16+queryGrace)
		p, meta, err := b.watchKV.Get(qk, q.WithContext(qctx))
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = indexed(meta)
		}
		if err != nil {
			w.mu.Lock()
			w.known = false
			w.mu.Unlock()
			if !sleep(ctx, &bo) {
				return
			}
			idx, wait = 0, min(minWait, b.o.WaitTime)
			continue
		}
		bo.Reset()
		var qidx uint64
		var entries []entry
		if p != nil {
			qidx = p.ModifyIndex
			if json.Unmarshal(p.Value, &entries) != nil {
				entries = nil
			}
		}
		w.mu.Lock()
		changed := !w.known || w.qidx != qidx
		w.known, w.qidx, w.q = true, qidx, entries
		w.mu.Unlock()
		if changed {
			wait = min(minWait, b.o.WaitTime)
		} else if idx != 0 {
			wait = min(2*wait, b.o.WaitTime, maxQueueWait)
		}
		if meta.LastIndex < idx {
			idx = 0
		} else {
			idx = meta.LastIndex
		}
	}
}
