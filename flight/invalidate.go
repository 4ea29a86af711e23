package flight

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// Invalidation messages on the Cache's topic: keyMsg, the publishing
// Cache's origin (16 hexadecimal digits), ":" and a normalised key (drop
// it from L1; the publisher skips its own); genMsg followed by a
// generation in decimal (InvalidateAll: drop the whole L1 and use that
// generation's key space); anything else is a bare normalised key, as
// releases before the origin was added published.
const (
	keyMsg = "\x00key:"
	genMsg = "\x00gen:"
)

// keyMessage is the invalidation message of normalised key k from c.
func (c *Cache[V]) keyMessage(k string) []byte {
	return []byte(keyMsg + c.origin + ":" + k)
}

// genKey is where a Cache name's generation is stored in the backend.
func genKey(name string) string { return "\x00flight:gen:" + name }

// bkey is the backend key of normalised key k in generation gen:
// Name + ":" + k in generation 0 (what every release before
// InvalidateAll wrote), Name + "@" + gen + ":" + k after.
func (c *Cache[V]) bkey(gen uint64, k string) string {
	if gen == 0 {
		return c.cfg.prefix + k
	}
	return c.cfg.Name + "@" + strconv.FormatUint(gen, 10) + ":" + k
}

// Invalidate removes key's value from L2 and from every process's L1, and
// supersedes every load of key under way in any process: after
// Invalidate returns, a load that started before it can no longer store
// its value in L2 or in any L1 (its lease is revoked:
// claim.Client.Revoke), and the next caller loads again. Callers already
// waiting for such a load may still receive its value, with
// Result.Superseded set. Waiters in other processes are woken and load
// anew. Other processes' L1 copies are dropped through the Cache's topic
// (claim.Client.Publish); one that the message cannot reach keeps its
// copy until Options.L1TTL (see Invalidation in the package doc).
func (c *Cache[V]) Invalidate(ctx context.Context, key string) error {
	k, err := c.checkKey(key)
	if err != nil {
		return err
	}
	return c.supersede(ctx, "invalidate", k, nil, 0)
}

// Set stores value as key's value in L2, fresh for Options.TTL (without
// jitter), and in this process's L1, drops the key from the other
// processes' L1 (they read the new value from L2 on their next call), and
// supersedes every load of key under way, like Invalidate: the value a
// load computed from older data can no longer replace it. The value is
// written with the lease revoked in one step where the backend allows
// (claim.Client.RevokeSet).
func (c *Cache[V]) Set(ctx context.Context, key string, value V) error {
	k, err := c.checkKey(key)
	if err != nil {
		return err
	}
	now := time.Now()
	ttl := c.cfg.TTL
	e := &entry[V]{value: value, written: now, freshTil: now.Add(ttl)}
	e.staleTil = e.freshTil.Add(c.cfg.StaleTTL)
	data, err := c.encode(e, nil)
	if err != nil {
		return fmt.Errorf("flight: set %q: %w", k, err)
	}
	if err := c.supersede(ctx, "set", k, data, c.l2TTL(ttl, c.cfg.StaleTTL)); err != nil {
		return err
	}
	if c.l1 != nil && !c.closed.Load() {
		c.l1.Set(k, c.l1Entry(e))
	}
	return nil
}

func (c *Cache[V]) checkKey(key string) (string, error) {
	if c.closed.Load() {
		return "", ErrClosed
	}
	k := c.cfg.Normalize(key)
	if k == "" {
		return "", fmt.Errorf("flight: key %q: %w", key, ErrInvalidKey)
	}
	return k, nil
}

// supersede is Invalidate (data nil) and Set: this process's flight of k
// is marked superseded and its L1 copy dropped, the lease revoked and L2
// replaced, both again (a flight that started meanwhile read L2 before
// the revoke), then the other processes told.
func (c *Cache[V]) supersede(ctx context.Context, op, k string, data []byte, ttl time.Duration) error {
	c.dropLocal(k)
	bk := c.bkey(c.gen.Load(), k)
	var err error
	if data == nil {
		err = c.b.Revoke(ctx, bk)
	} else {
		err = c.b.RevokeSet(ctx, bk, data, ttl)
	}
	c.observe(ctx, err)
	c.dropLocal(k)
	if err != nil {
		return fmt.Errorf("flight: %s %q: %w", op, k, err)
	}
	err = c.b.Publish(ctx, c.cfg.topic, c.keyMessage(k))
	c.observe(ctx, err)
	if err != nil {
		return fmt.Errorf("flight: %s %q: publish: %w", op, k, err)
	}
	return nil
}

// dropLocal drops k from L1 and marks its flight, if one is under way in
// this process, superseded: it will not fill L1 (finish), and it leaves
// the flights map, so that the next caller starts a flight of its own
// rather than joining the superseded one.
func (c *Cache[V]) dropLocal(k string) {
	c.mu.Lock()
	if f := c.flights[k]; f != nil {
		f.superseded.Store(true)
		delete(c.flights, k)
	}
	c.mu.Unlock()
	c.dropL1(k)
}

func (c *Cache[V]) dropL1(k string) {
	if c.l1 != nil {
		c.l1.Invalidate(k)
		c.stats.invalidated.Add(1)
	}
}

// InvalidateAll invalidates every key of the Cache's name, in every
// process: it moves the name to a new generation, a key space of its own
// in the backend (stored under a reserved key and announced on the
// Cache's topic), so that no value written before is read again (they
// expire by their TTL), and no load under way in any process can store
// its value where it would be read. Every process drops its L1 on the
// announcement; a process that misses it (its subscription failed) reads
// the generation again when its subscription resumes, and until then
// keeps serving its L1 for at most Options.L1TTL. It costs a claim, a read
// and a write of the generation key, and one publication.
func (c *Cache[V]) InvalidateAll(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	gk := genKey(c.cfg.Name)
	l, err := c.b.Acquire(ctx, gk, c.cfg.LeaseTTL)
	c.observe(ctx, err)
	if err != nil {
		return fmt.Errorf("flight: invalidate all: %w", err)
	}
	cur, err := c.readGen(ctx)
	if err != nil {
		_ = c.b.Release(context.WithoutCancel(ctx), l)
		return fmt.Errorf("flight: invalidate all: %w", err)
	}
	next := max(cur, c.gen.Load()) + 1
	err = c.b.CommitRelease(ctx, l, []byte(strconv.FormatUint(next, 10)), 0)
	c.observe(ctx, err)
	if err != nil {
		_ = c.b.Release(context.WithoutCancel(ctx), l)
		return fmt.Errorf("flight: invalidate all: %w", err)
	}
	c.useGen(next)
	err = c.b.Publish(ctx, c.cfg.topic, []byte(genMsg+strconv.FormatUint(next, 10)))
	c.observe(ctx, err)
	if err != nil {
		return fmt.Errorf("flight: invalidate all: publish: %w", err)
	}
	return nil
}

// readGen reads the name's generation from the backend (0 if none).
func (c *Cache[V]) readGen(ctx context.Context) (uint64, error) {
	b, err := c.b.Get(ctx, genKey(c.cfg.Name))
	c.observe(ctx, err)
	switch {
	case errors.Is(err, claim.ErrNotFound):
		return 0, nil
	case err != nil:
		return 0, err
	}
	n, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("flight: generation of %q: %q is not a number", c.cfg.Name, b)
	}
	return n, nil
}

// useGen moves the Cache to generation g if it is newer, dropping L1 and
// marking every flight under way superseded.
func (c *Cache[V]) useGen(g uint64) {
	c.mu.Lock()
	if g <= c.gen.Load() {
		c.mu.Unlock()
		return
	}
	c.gen.Store(g)
	for k, f := range c.flights {
		f.superseded.Store(true)
		delete(c.flights, k)
	}
	c.mu.Unlock()
	if c.l1 != nil {
		c.l1.InvalidateAll()
		c.stats.invalidated.Add(1)
	}
}

// syncGen reads the generation and uses it; on a failure the Cache keeps
// its own (logged), and tries again at the next reset.
func (c *Cache[V]) syncGen(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	g, err := c.readGen(ctx)
	if err != nil {
		c.log.Warn("flight: cannot read the cache's generation (InvalidateAll); keeping this process's", "err", err)
		return
	}
	c.useGen(g)
}

// onInvalidate handles the invalidation topic: a message is a normalised
// key, or a new generation; a reset (messages may have been missed) drops
// the whole L1 and reads the generation again.
func (c *Cache[V]) onInvalidate(msg []byte, reset bool) {
	switch {
	case reset:
		if c.l1 != nil {
			c.l1.InvalidateAll()
			c.stats.invalidated.Add(1)
		}
		c.log.Debug("flight: invalidation stream reset: L1 dropped")
		c.mu.Lock()
		if c.closed.Load() {
			c.mu.Unlock()
			return
		}
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			c.syncGen(c.root)
		}()
	case strings.HasPrefix(string(msg), genMsg):
		if g, err := strconv.ParseUint(string(msg[len(genMsg):]), 10, 64); err == nil {
			c.useGen(g)
		}
	case strings.HasPrefix(string(msg), keyMsg):
		rest := string(msg[len(keyMsg):])
		origin, k, ok := strings.Cut(rest, ":")
		if !ok || origin == c.origin {
			// Our own: supersede already did what it asks.
			return
		}
		c.dropLocal(k)
	default:
		c.dropLocal(string(msg))
	}
}

// l1Entry is what L1 keeps of e: e itself, or with Options.FailSafeTTL a
// copy that L1 keeps until the end of e's fail-safe window, but fresh and
// stale no longer than L1TTL from now (which bounds how long L1 serves a
// value another process may have replaced), a fail-safe answer after.
func (c *Cache[V]) l1Entry(e *entry[V]) *entry[V] {
	if c.cfg.FailSafeTTL <= 0 || e.notFound || e.failed != nil {
		return e
	}
	cp := *e
	cp.failSafeTil = c.failSafeLimit(e)
	if limit := time.Now().Add(c.cfg.L1TTL); cp.staleTil.After(limit) {
		cp.staleTil = limit
		if cp.freshTil.After(limit) {
			cp.freshTil = limit
		}
	}
	return &cp
}

// l2TTL is the L2 lifetime of a value fresh for ttl and stale for stale,
// kept Options.FailSafeTTL longer for fail-safe answers.
func (c *Cache[V]) l2TTL(ttl, stale time.Duration) time.Duration {
	return ttl + stale + c.cfg.FailSafeTTL
}

// newOrigin is a Cache's random origin: 16 hexadecimal digits.
func newOrigin() string {
	return fmt.Sprintf("%016x", rand.Uint64())
}
