// Package memory is the in-process claim backend: full claim semantics
// (leases, fencing tokens, fenced commits, push notification, a value store
// with TTLs) with no server. It is the embedded default, and lets tests and
// demos simulate several processes: every Backend opened on the same Space
// behaves like a separate process sharing one server.
//
// # URLs
//
//	mem://            the process-wide default space
//	mem://NAME        the space named NAME (created on first use)
//
// Parameters: maxvalue (bytes, default 0: unlimited).
//
// # Semantics
//
// TryClaim, Extend, Release and Commit are atomic (one mutex), and so are
// TryClaimRead (claim and read the value) and CommitRelease (commit and
// release), which flight uses to save a round trip each. Fencing
// tokens come from a per-key counter that outlives releases and expiry, so
// they are strictly increasing for the life of the Space. Expiry is judged
// by the Space's clock (injectable through SpaceOptions.Clock); it has
// no granularity and no minimum TTL. Release and Notify wake every
// subscriber of the key in every Backend of the Space, synchronously.
//
// # Errors
//
// ErrHeld, ErrLost, ErrNotFound, ErrTooLarge, ErrInvalidKey and ErrClosed
// from package claim, wrapped as "memory: OP KEY: ...".
package memory

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
)

// Scheme is the URL scheme this package registers.
const Scheme = "mem"

func init() { claim.Register(Scheme, &URLOpener{}) }

// SpaceOptions configure a Space. nil means defaults.
type SpaceOptions struct {
	// Clock returns the current time; nil means time.Now. Expiry of leases
	// and values is judged by it.
	Clock func() time.Time
	// MaxValueLen limits values (0: unlimited).
	MaxValueLen int
}

// Space is the shared state of one simulated server: leases, fence
// counters, values and subscriptions. It is safe for concurrent use.
type Space struct {
	now    func() time.Time
	maxVal int

	mu     sync.Mutex
	locks  map[string]lock
	fences map[string]uint64
	values map[string]value
	subs   map[string]map[*Backend]int // key -> subscribed backends
	topics map[string]map[*topicSub]struct{}
}

type lock struct {
	holder  string
	token   uint64
	expires time.Time
}

type value struct {
	data    []byte
	expires time.Time // zero: never
}

// NewSpace returns an empty Space.
func NewSpace(opt *SpaceOptions) *Space {
	s := &Space{
		now:    time.Now,
		locks:  map[string]lock{},
		fences: map[string]uint64{},
		values: map[string]value{},
		subs:   map[string]map[*Backend]int{},
		topics: map[string]map[*topicSub]struct{}{},
	}
	if opt != nil {
		if opt.Clock != nil {
			s.now = opt.Clock
		}
		s.maxVal = opt.MaxValueLen
	}
	return s
}

var (
	spacesMu sync.Mutex
	spaces   = map[string]*Space{}
)

// NamedSpace returns the process-wide Space called name, creating it with
// default options on first use. mem://NAME URLs open it.
func NamedSpace(name string) *Space {
	spacesMu.Lock()
	defer spacesMu.Unlock()
	s := spaces[name]
	if s == nil {
		s = NewSpace(nil)
		spaces[name] = s
	}
	return s
}

// Options configure one Backend. nil means defaults.
type Options struct{}

// Backend is one client of a Space (one simulated process). It implements
// claim.Backend, claim.Broadcaster, claim.ClaimReader and
// claim.CommitReleaser.
type Backend struct {
	sp  *Space
	hub *hub.Hub

	mu     sync.Mutex
	closed bool
	topics map[*topicSub]struct{}
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.Broadcaster    = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

// New returns a new client of space (a fresh private Space if nil).
func New(space *Space, _ *Options) (*Backend, error) {
	if space == nil {
		space = NewSpace(nil)
	}
	b := &Backend{sp: space, topics: map[*topicSub]struct{}{}}
	b.hub = hub.New(substrate{b})
	return b, nil
}

// URLOpener opens mem:// URLs.
type URLOpener struct{}

// OpenBackendURL implements claim.URLOpener.
func (*URLOpener) OpenBackendURL(_ context.Context, u *url.URL) (claim.Backend, error) {
	p := claim.NewParams(u)
	maxVal := p.Int("maxvalue", 0)
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("memory: URL path %q not allowed: use mem://NAME", u.Path)
	}
	sp := NamedSpace(u.Host)
	if maxVal > 0 {
		sp.mu.Lock()
		sp.maxVal = maxVal
		sp.mu.Unlock()
	}
	return New(sp, nil)
}

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	b.sp.mu.Lock()
	defer b.sp.mu.Unlock()
	return claim.Features{
		Name:         Scheme,
		Notify:       claim.Push,
		AtomicCommit: true,
		DurableFence: true,
		MaxValueLen:  b.sp.maxVal,
		Broadcast:    true,
	}
}

func (b *Backend) check(op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("memory: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("memory: %s %q: %w", op, key, claim.ErrClosed)
	}
	return nil
}

func holderID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// TryClaim implements claim.Claimer.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: the claim and the read of the
// value happen under one lock of the Space.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if err := ctx.Err(); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("memory: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	start := time.Now()
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	if l, ok := sp.locks[key]; ok && now.Before(l.expires) {
		return claim.Lease{}, nil, false, fmt.Errorf("memory: %s %q: %w", op, key, &claim.HeldError{Key: key, Remaining: l.expires.Sub(now)})
	}
	sp.fences[key]++
	l := lock{holder: holderID(), token: sp.fences[key], expires: now.Add(ttl)}
	sp.locks[key] = l
	lease := claim.Lease{Key: key, Holder: l.holder, Token: l.token, TTL: ttl, Deadline: start.Add(ttl)}
	if !read {
		return lease, nil, false, nil
	}
	v, ok := sp.getLocked(key, now)
	return lease, v, ok, nil
}

// current reports whether l is the live lease; sp.mu must be held.
func (sp *Space) current(l claim.Lease, now time.Time) bool {
	cur, ok := sp.locks[l.Key]
	return ok && cur.token == l.Token && cur.holder == l.Holder && now.Before(cur.expires)
}

// Extend implements claim.Claimer.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check("extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("memory: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("memory: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	now := sp.now()
	if !sp.current(l, now) {
		return claim.Lease{}, fmt.Errorf("memory: extend %q: %w", l.Key, claim.ErrLost)
	}
	sp.locks[l.Key] = lock{holder: l.Holder, token: l.Token, expires: now.Add(ttl)}
	l.TTL = ttl
	l.Deadline = start.Add(ttl)
	return l, nil
}

// Release implements claim.Claimer.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check("release", l.Key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	if !sp.current(l, sp.now()) {
		sp.mu.Unlock()
		return fmt.Errorf("memory: release %q: %w", l.Key, claim.ErrLost)
	}
	delete(sp.locks, l.Key)
	targets := sp.subscribersLocked(l.Key)
	sp.mu.Unlock()
	for _, t := range targets {
		t.hub.Wake(l.Key)
	}
	return nil
}

func (sp *Space) subscribersLocked(key string) []*Backend {
	m := sp.subs[key]
	out := make([]*Backend, 0, len(m))
	for t := range m {
		out = append(out, t)
	}
	return out
}

// Commit implements claim.Claimer.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	return b.commit(ctx, "commit", l, val, ttl, false)
}

// CommitRelease implements claim.CommitReleaser: the check, the write and
// the release happen under one lock of the Space; subscribers are woken
// after it.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	return b.commit(ctx, "commit-release", l, val, ttl, true)
}

func (b *Backend) commit(ctx context.Context, op string, l claim.Lease, val []byte, ttl time.Duration, release bool) error {
	if err := b.check(op, l.Key); err != nil {
		return err
	}
	if err := b.checkValue(op, l.Key, val, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("memory: %s %q: %w (local deadline passed)", op, l.Key, claim.ErrLost)
	}
	sp := b.sp
	sp.mu.Lock()
	now := sp.now()
	if !sp.current(l, now) {
		sp.mu.Unlock()
		return fmt.Errorf("memory: %s %q: %w", op, l.Key, claim.ErrLost)
	}
	sp.setLocked(l.Key, val, ttl, now)
	if !release {
		sp.mu.Unlock()
		return nil
	}
	delete(sp.locks, l.Key)
	targets := sp.subscribersLocked(l.Key)
	sp.mu.Unlock()
	for _, t := range targets {
		t.hub.Wake(l.Key)
	}
	return nil
}

func (b *Backend) checkValue(op, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("memory: %s %q: negative ttl %s", op, key, ttl)
	}
	b.sp.mu.Lock()
	limit := b.sp.maxVal
	b.sp.mu.Unlock()
	if err := claim.CheckValue(val, limit); err != nil {
		return fmt.Errorf("memory: %s %q: %w", op, key, err)
	}
	return nil
}

func (sp *Space) setLocked(key string, val []byte, ttl time.Duration, now time.Time) {
	v := value{data: append([]byte(nil), val...)}
	if ttl > 0 {
		v.expires = now.Add(ttl)
	}
	sp.values[key] = v
}

// Get implements claim.Store.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check("get", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	v, ok := sp.getLocked(key, sp.now())
	if !ok {
		return nil, fmt.Errorf("memory: get %q: %w", key, claim.ErrNotFound)
	}
	return v, nil
}

// getLocked returns a copy of key's live value; sp.mu must be held.
func (sp *Space) getLocked(key string, now time.Time) ([]byte, bool) {
	v, ok := sp.values[key]
	if ok && !v.expires.IsZero() && !now.Before(v.expires) {
		delete(sp.values, key)
		ok = false
	}
	if !ok {
		return nil, false
	}
	return append([]byte(nil), v.data...), true
}

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.check("set", key); err != nil {
		return err
	}
	if err := b.checkValue("set", key, val, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.setLocked(key, val, ttl, sp.now())
	return nil
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check("delete", key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	delete(b.sp.values, key)
	b.sp.mu.Unlock()
	return nil
}

// Subscribe implements claim.Notifier.
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check("subscribe", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("memory: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check("notify", key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	targets := b.sp.subscribersLocked(key)
	b.sp.mu.Unlock()
	for _, t := range targets {
		t.hub.Wake(key)
	}
	return nil
}

// substrate registers a Backend's per-key subscription with the Space.
type substrate struct{ b *Backend }

func (s substrate) Subscribe(_ context.Context, key string) error {
	sp := s.b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	m := sp.subs[key]
	if m == nil {
		m = map[*Backend]int{}
		sp.subs[key] = m
	}
	m[s.b]++
	return nil
}

func (s substrate) Unsubscribe(key string) {
	sp := s.b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if m := sp.subs[key]; m != nil {
		if m[s.b]--; m[s.b] <= 0 {
			delete(m, s.b)
		}
		if len(m) == 0 {
			delete(sp.subs, key)
		}
	}
}

// Subscriptions returns how many keys this Backend holds a Space-level
// subscription for (one per key however many local subscribers).
func (b *Backend) Subscriptions() int { return b.hub.Len() }

type topicSub struct {
	topic   string
	handle  func([]byte, bool)
	queue   chan []byte
	stopped chan struct{}
	done    chan struct{}
}

// Publish implements claim.Broadcaster.
func (b *Backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := b.check("publish", topic); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	targets := make([]*topicSub, 0, len(b.sp.topics[topic]))
	for t := range b.sp.topics[topic] {
		targets = append(targets, t)
	}
	b.sp.mu.Unlock()
	for _, t := range targets {
		m := append([]byte(nil), msg...)
		select {
		case t.queue <- m:
		case <-t.stopped:
		default:
			// A subscriber too slow to keep up loses messages and is
			// told so with a reset.
			select {
			case t.queue <- nil:
			default:
			}
		}
	}
	return nil
}

// SubscribeTopic implements claim.Broadcaster.
func (b *Backend) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (func(), error) {
	if err := b.check("subscribe-topic", topic); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := &topicSub{topic: topic, handle: handle, queue: make(chan []byte, 1024), stopped: make(chan struct{}), done: make(chan struct{})}
	b.sp.mu.Lock()
	m := b.sp.topics[topic]
	if m == nil {
		m = map[*topicSub]struct{}{}
		b.sp.topics[topic] = m
	}
	m[t] = struct{}{}
	b.sp.mu.Unlock()
	b.mu.Lock()
	b.topics[t] = struct{}{}
	b.mu.Unlock()
	go func() {
		defer close(t.done)
		for {
			select {
			case <-t.stopped:
				return
			case m := <-t.queue:
				t.handle(m, m == nil)
			}
		}
	}()
	stop := func() { b.stopTopic(topic, t) }
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		stop()
		return nil, fmt.Errorf("memory: subscribe-topic %q: %w", topic, claim.ErrClosed)
	}
	return stop, nil
}

// stopTopic ends one topic subscription once, whoever asks first.
func (b *Backend) stopTopic(topic string, t *topicSub) {
	b.mu.Lock()
	_, mine := b.topics[t]
	delete(b.topics, t)
	b.mu.Unlock()
	if !mine {
		<-t.done
		return
	}
	b.sp.mu.Lock()
	delete(b.sp.topics[topic], t)
	if len(b.sp.topics[topic]) == 0 {
		delete(b.sp.topics, topic)
	}
	b.sp.mu.Unlock()
	close(t.stopped)
	<-t.done
}

// Close implements claim.Backend. Leases this Backend holds are not
// released: like a crashed process's, they expire by their TTL.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.sp.mu.Lock()
	for k, m := range b.sp.subs {
		delete(m, b)
		if len(m) == 0 {
			delete(b.sp.subs, k)
		}
	}
	b.sp.mu.Unlock()
	b.mu.Lock()
	var stops []*topicSub
	for t := range b.topics {
		stops = append(stops, t)
	}
	b.mu.Unlock()
	for _, t := range stops {
		b.stopTopic(t.topic, t)
	}
	b.hub.Close()
	return nil
}
