// Package countdriver wraps a claim driver to count its calls: every call
// of a driver method is one substrate round trip (Subscribe included,
// Unsubscribe not). The demo, the herd and flight's tests use it to report
// and assert round trips; it can also hide the driver's optional fast
// paths or its topic bus, to see the Client's fallbacks at work.
package countdriver

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// Method names a counted driver method.
type Method int

// The counted methods.
const (
	Get Method = iota
	Subscribe
	TryClaim
	Commit
	Release
	Extend
	Notify
	Set
	Delete
	ClaimRead     // driver.ClaimReader's TryClaimRead
	CommitRelease // driver.CommitReleaser's CommitRelease
	Publish       // driver.Broadcaster's Publish
	SubscribeTopic
	Revoke
	GetMany           // driver.Batcher's methods
	ClaimMany         //
	CommitReleaseMany //
	SubscribeMany     //
	ReleaseMany       // driver.ReleaseBatcher's
	NumMethods
)

var names = [NumMethods]string{"get", "subscribe", "claim", "commit", "release", "extend", "notify",
	"set", "delete", "claim+read", "commit+release", "publish", "subscribe-topic", "revoke",
	"get-many", "claim-many", "commit-release-many", "subscribe-many", "release-many"}

func (m Method) String() string { return names[m] }

// Counts is a snapshot of calls, by method.
type Counts [NumMethods]int64

// Total returns the number of calls of every method.
func (c Counts) Total() int64 {
	var t int64
	for _, n := range c {
		t += n
	}
	return t
}

// Sub returns c - o.
func (c Counts) Sub(o Counts) Counts {
	for i := range c {
		c[i] -= o[i]
	}
	return c
}

// Plus returns c + o.
func (c Counts) Plus(o Counts) Counts {
	for i := range c {
		c[i] += o[i]
	}
	return c
}

// Counter counts one wrapped driver's calls. OnCall, if set before use,
// runs before every counted call.
type Counter struct {
	per    [NumMethods]atomic.Int64
	OnCall func(Method)
}

func (c *Counter) add(m Method) {
	if c.OnCall != nil {
		c.OnCall(m)
	}
	c.per[m].Add(1)
}

// Load returns the calls of method m so far.
func (c *Counter) Load(m Method) int64 { return c.per[m].Load() }

// Snapshot returns the calls counted so far.
func (c *Counter) Snapshot() Counts {
	var s Counts
	for i := range s {
		s[i] = c.per[i].Load()
	}
	return s
}

// Total returns the calls counted so far.
func (c *Counter) Total() int64 { return c.Snapshot().Total() }

// Options choose what the wrapper shows of the driver.
type Options struct {
	// NoFastPaths hides driver.ClaimReader and driver.CommitReleaser.
	NoFastPaths bool
	// NoBroadcast hides driver.Broadcaster.
	NoBroadcast bool
	// NoBatch hides driver.Batcher.
	NoBatch bool
	// NoValueWake hides driver.ValueNotifier: wake-ups carry no value.
	NoValueWake bool
}

// Wrap returns d counted by c (a new Counter if nil), with the optional
// interfaces of d that opt does not hide.
func Wrap(d driver.Driver, c *Counter, opt Options) (driver.Driver, *Counter) {
	if c == nil {
		c = &Counter{}
	}
	cr, _ := d.(driver.ClaimReader)
	crl, _ := d.(driver.CommitReleaser)
	bc, _ := d.(driver.Broadcaster)
	ba, _ := d.(driver.Batcher)
	withFast := !opt.NoFastPaths && cr != nil && crl != nil
	withBus := !opt.NoBroadcast && bc != nil
	withBatch := !opt.NoBatch && ba != nil
	b := &base{d: d, c: c, bus: withBus}
	if vn, ok := d.(driver.ValueNotifier); ok && !opt.NoValueWake {
		b.vn = vn
	}
	f := fastPaths{b, cr, crl}
	x := bus{b, bc}
	rb, _ := d.(driver.ReleaseBatcher)
	y := batch{b, ba, rb}
	switch {
	case withFast && withBus && withBatch:
		return &fastBusBatch{f, x, y}, c
	case withFast && withBus:
		return &fastBus{f, x}, c
	case withFast && withBatch:
		return &fastBatch{f, y}, c
	case withBus && withBatch:
		return &busBatch{b, x, y}, c
	case withFast:
		return &f, c
	case withBus:
		return &busOnly{b, x}, c
	case withBatch:
		return &batchOnly{b, y}, c
	}
	return b, c
}

type base struct {
	d   driver.Driver
	c   *Counter
	bus bool                 // the wrapper shows the driver's Broadcaster
	vn  driver.ValueNotifier // the driver's, if shown
}

func (b *base) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	b.c.add(TryClaim)
	return b.d.TryClaim(ctx, key, holder, ttl)
}

func (b *base) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	b.c.add(Extend)
	return b.d.Extend(ctx, l, ttl)
}

func (b *base) Release(ctx context.Context, l driver.Lease) error {
	b.c.add(Release)
	return b.d.Release(ctx, l)
}

func (b *base) Commit(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	b.c.add(Commit)
	return b.d.Commit(ctx, l, v, ttl)
}

func (b *base) Revoke(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	b.c.add(Revoke)
	return b.d.Revoke(ctx, key, v, ttl)
}

func (b *base) Subscribe(ctx context.Context, key string, wake func()) error {
	b.c.add(Subscribe)
	return b.d.Subscribe(ctx, key, wake)
}

// SubscribeValue counts as Subscribe. Every wrapper has it: it reaches
// the driver's driver.ValueNotifier when the driver has one and the
// options show it, and is Subscribe with value-less wake-ups otherwise
// (what the Client does without one).
func (b *base) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	b.c.add(Subscribe)
	if b.vn != nil {
		return b.vn.SubscribeValue(ctx, key, wake)
	}
	return b.d.Subscribe(ctx, key, func() { wake(nil) })
}

func (b *base) Unsubscribe(key string) { b.d.Unsubscribe(key) }

func (b *base) Notify(ctx context.Context, key string) error {
	b.c.add(Notify)
	return b.d.Notify(ctx, key)
}

func (b *base) Get(ctx context.Context, key string) ([]byte, error) {
	b.c.add(Get)
	return b.d.Get(ctx, key)
}

func (b *base) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	b.c.add(Set)
	return b.d.Set(ctx, key, v, ttl)
}

func (b *base) Delete(ctx context.Context, key string) error {
	b.c.add(Delete)
	return b.d.Delete(ctx, key)
}

func (b *base) Features() driver.Features {
	f := b.d.Features()
	f.Broadcast = b.bus
	return f
}

func (b *base) Close() error { return b.d.Close() }

// As reaches the wrapped driver's native client.
func (b *base) As(i any) bool {
	a, ok := b.d.(driver.Aser)
	return ok && a.As(i)
}

type fastPaths struct {
	*base
	cr  driver.ClaimReader
	crl driver.CommitReleaser
}

func (f *fastPaths) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	f.c.add(ClaimRead)
	return f.cr.TryClaimRead(ctx, key, holder, ttl)
}

func (f *fastPaths) CommitRelease(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	f.c.add(CommitRelease)
	return f.crl.CommitRelease(ctx, l, v, ttl)
}

type bus struct {
	b  *base
	bc driver.Broadcaster
}

func (x bus) Publish(ctx context.Context, topic string, msg []byte) error {
	x.b.c.add(Publish)
	return x.bc.Publish(ctx, topic, msg)
}

func (x bus) SubscribeTopic(ctx context.Context, topic string, deliver func([]byte, bool)) error {
	x.b.c.add(SubscribeTopic)
	return x.bc.SubscribeTopic(ctx, topic, deliver)
}

func (x bus) UnsubscribeTopic(topic string) { x.bc.UnsubscribeTopic(topic) }

type busOnly struct {
	*base
	bus
}

type fastBus struct {
	fastPaths
	bus
}

type batch struct {
	b  *base
	ba driver.Batcher
	rb driver.ReleaseBatcher // nil: ReleaseMany is Release of each lease
}

// ReleaseMany is the driver's ReleaseMany where it has one; otherwise
// Release of each lease, concurrently (counted as such), as the client
// releases them without a ReleaseBatcher, so that a wrapper with the
// driver's Batcher need not come in two kinds.
func (x batch) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	if x.rb != nil {
		x.b.c.add(ReleaseMany)
		return x.rb.ReleaseMany(ctx, leases)
	}
	errs := make([]error, len(leases))
	driver.Each(len(leases), 16, func(i int) { errs[i] = x.b.Release(ctx, leases[i]) })
	return errs, nil
}

func (x batch) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	x.b.c.add(GetMany)
	return x.ba.GetMany(ctx, keys)
}

func (x batch) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	x.b.c.add(ClaimMany)
	return x.ba.TryClaimMany(ctx, keys, holders, ttl)
}

func (x batch) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	x.b.c.add(CommitReleaseMany)
	return x.ba.CommitReleaseMany(ctx, commits)
}

func (x batch) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	x.b.c.add(SubscribeMany)
	return x.ba.SubscribeMany(ctx, keys, wakes)
}

type batchOnly struct {
	*base
	batch
}

type fastBatch struct {
	fastPaths
	batch
}

type busBatch struct {
	*base
	bus
	batch
}

type fastBusBatch struct {
	fastPaths
	bus
	batch
}

// ByName returns the non-zero counts by method name.
func (c Counts) ByName() map[string]int64 {
	m := map[string]int64{}
	for i, n := range c {
		if n != 0 {
			m[Method(i).String()] = n
		}
	}
	return m
}
