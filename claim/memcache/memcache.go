// Package memcache is the claim backend on memcached, through
// github.com/bradfitz/gomemcache: leases are items created with add,
// fencing tokens come from incr, and waiters are woken by polling (memcached
// cannot push).
//
// # URLs
//
//	memcache://HOST:PORT[,HOST:PORT...][?PARAMS]
//
// Parameters (each maps to one Options field; unknown ones are errors):
//
//	prefix          key prefix (default "stampede")
//	item_size_max   the servers' -I item size limit in bytes (default 1048576)
//	timeout         socket read/write timeout per call (default 500ms)
//	max_idle_conns  idle connections kept per server (default 16)
//	poll_min        first polling interval after a change (default 2ms)
//	poll_max        polling interval cap (default 50ms)
//	tls             true: connect with TLS (memcached -Z); default false
//	cacert          PEM file of the CA to trust instead of the system roots
//	cert, key       PEM files of a client certificate and its key
//	servername      name to verify the server certificate against (default: HOST)
//
// With several servers, gomemcache spreads keys over them by hash; the
// items of one claim may then live on different servers.
//
// # Semantics
//
// Four items per key: the lock (PREFIX:l:KEY), the fence counter (:f:), the
// notify counter (:n:) and the value (:v:). Keys are mapped with
// claim.KeyEncoder to memcached's rules (at most 250 bytes including the
// prefix, no spaces or control characters); other keys are hashed.
//
// Claim is one add of the lock item (atomic: at most one live lease), then
// incr of the fence counter; a missing counter is created with the current
// Unix time in microseconds, so tokens keep increasing even after the
// counter was evicted or the server restarted, as long as the clients'
// clocks do not step back. Features.DurableFence is nevertheless false:
// memcached may evict the lock item itself under memory pressure, and then
// two holders can be live at once. Give memcached room (-m) and keep leases
// short.
//
// Lease TTLs are whole seconds, rounded up (MinTTL and TTLGranularity are
// 1s). memcached's clock ticks once a second (a timer that runs late on a
// loaded machine), so an item set with exptime N can go a second or more
// early: the lock is stored with exptime TTL+2 seconds and the holder's
// Deadline is TTL after the request was sent, so the server never drops a
// lease before its holder stops (clocks running at the same rate), and a
// crashed holder's key is free again at most about two seconds after its
// TTL. TTLs over 30 days are sent as absolute Unix
// times (memcached's rule), which then depend on the server's clock.
//
// Release and Extend read the lock with gets and compare the holder id
// (random, unique per claim) before a CompareAndSwap: Release swaps the lock
// for an already-expired item (exptime -1), so a stale holder can never
// delete or renew a newer holder's lock (no GET-then-DELETE).
//
// Commit is NOT atomic (Features.AtomicCommit is false): memcached has no
// multi-key transaction. It checks the lock (gets: ours?), writes the value,
// and succeeds only if the write's reply arrived before the lease's local
// Deadline, that is while the lease was certainly live, since the server
// keeps the lock at least until Deadline and nobody can add it meanwhile.
// If the reply came later, the write may have landed after expiry, perhaps
// after a new holder's Commit: Commit then deletes its value again (gets,
// compare the bytes, CAS to expired: a newer value is left alone) and
// returns ErrLost. The remaining windows: a stale value can be read between
// such a late write and its removal (about one round trip), and a newer
// holder's value written just before the late write is lost (a miss, not a
// stale value). Eviction of the lock, and a holder releasing its own lease
// while its Commit is in flight, are not covered.
//
// Values carry their expiry time (client clock, milliseconds) in an 8-byte
// header and are stored with exptime TTL+1 seconds: Get never returns a
// value past its TTL, and memcached reaps it within about a second after.
//
// Notification polls (Features.Notify is Poll): one loop per key per
// Backend however many waiters, reading the lock and the notify counter in
// one multi-get, every 2 ms at first and backing off to 50 ms, never
// sleeping past the holder's lease. Release and Notify bump the notify
// counter (Release between its gets and its CAS: three round trips), so a
// claim and release between two polls never look like no change; a
// changed counter, or the lock seen at the previous poll gone or
// replaced, wakes the key's waiters. A claim on a free key does not (the
// waiters are waiting for the end of a claim, not for its start).
//
// gomemcache takes no context: a cancelled context is honoured before each
// round trip, and a call in flight ends within Options.Timeout.
//
// # Errors
//
// ErrHeld (*claim.HeldError, Remaining from the holder's recorded expiry),
// ErrLost, ErrNotFound, ErrTooLarge (values over item_size_max - 1 KiB,
// checked before any I/O), ErrInvalidKey and ErrClosed from package claim,
// wrapped as "memcache: OP KEY: ..."; gomemcache's errors are wrapped
// underneath.
package memcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
	"github.com/stampede-go/stampede/internal/poll"
	"github.com/stampede-go/stampede/internal/tlsfiles"
)

// Scheme is the URL scheme this package registers.
const Scheme = "memcache"

func init() { claim.Register(Scheme, &URLOpener{}) }

// Defaults for Options.
const (
	DefaultPrefix       = "stampede"
	DefaultItemSizeMax  = 1 << 20
	DefaultTimeout      = 500 * time.Millisecond
	DefaultMaxIdleConns = 16
	// itemOverhead is what an item needs besides its value: memcached's
	// item header, a key of up to 250 bytes, and the value header (8).
	itemOverhead = 1024
	maxKeyLen    = 250
	// lockSlack is how many seconds past its TTL the lock item is kept,
	// so memcached's coarse, possibly late clock never frees a lock
	// before its holder's Deadline (a fault test saw a rival get in
	// early at load 20 with a one-second slack).
	lockSlack = 2
	// maxRelative is the longest exptime memcached reads as relative.
	maxRelative = 30 * 24 * 3600
)

// Options configure a Backend. nil means defaults; every zero field is the
// documented default.
type Options struct {
	// Prefix starts every item key (default "stampede"). Printable ASCII
	// without spaces, at most 200 bytes. Every process sharing keys must
	// use the same prefix.
	Prefix string
	// ItemSizeMax is the servers' item size limit, memcached's -I
	// (default 1 MiB). Values up to ItemSizeMax - 1 KiB are accepted.
	ItemSizeMax int
	// PollMin and PollMax bound the polling interval (defaults 2 ms and
	// 50 ms, see internal/poll).
	PollMin, PollMax time.Duration
}

// Backend is one memcached client's claim backend. It implements
// claim.Backend; it is safe for concurrent use.
type Backend struct {
	c      *gomemcache.Client
	own    bool
	prefix string
	enc    claim.KeyEncoder
	maxVal int
	hub    *hub.Hub
	poller *poll.Poller

	mu     sync.Mutex
	closed bool
}

var _ claim.Backend = (*Backend)(nil)

// New returns a Backend using client, which the caller configured (servers,
// timeouts, TLS dialer) and keeps owning: Close does not close it.
func New(client *gomemcache.Client, opt *Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("memcache: nil client")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if len(o.Prefix) > 200 {
		return nil, fmt.Errorf("memcache: prefix is %d bytes, at most 200", len(o.Prefix))
	}
	for i := 0; i < len(o.Prefix); i++ {
		if !claim.PrintableASCII(o.Prefix[i]) {
			return nil, fmt.Errorf("memcache: prefix %q: want printable ASCII without spaces", o.Prefix)
		}
	}
	if o.ItemSizeMax == 0 {
		o.ItemSizeMax = DefaultItemSizeMax
	}
	if o.ItemSizeMax < 2*itemOverhead {
		return nil, fmt.Errorf("memcache: item size limit %d too small", o.ItemSizeMax)
	}
	b := &Backend{
		c:      client,
		prefix: o.Prefix,
		// "PREFIX:x:" + encoded key fits memcached's 250 bytes.
		enc:    claim.KeyEncoder{MaxLen: maxKeyLen - len(o.Prefix) - 3, Safe: safeByte},
		maxVal: o.ItemSizeMax - itemOverhead,
	}
	b.poller = poll.New(b.readState, func(k string) { b.hub.Wake(k) }, &poll.Options{Min: o.PollMin, Max: o.PollMax})
	b.hub = hub.New(b.poller)
	return b, nil
}

// safeByte: memcached keys may hold any byte but space, control characters
// and DEL.
func safeByte(c byte) bool { return c > ' ' && c != 0x7f }

// URLOpener opens memcache:// URLs. Registration dials nothing; neither
// does opening (gomemcache connects on first use).
type URLOpener struct{}

// OpenBackendURL implements claim.URLOpener.
func (*URLOpener) OpenBackendURL(_ context.Context, u *url.URL) (claim.Backend, error) {
	if u.User != nil {
		return nil, errors.New("memcache: URL user info not supported (gomemcache has no SASL)")
	}
	if u.Path != "" && u.Path != "/" {
		return nil, fmt.Errorf("memcache: URL path %q not allowed", u.Path)
	}
	var servers []string
	for _, s := range strings.Split(u.Host, ",") {
		if s == "" {
			continue
		}
		if !strings.Contains(s, ":") {
			s += ":11211"
		}
		servers = append(servers, s)
	}
	if len(servers) == 0 {
		return nil, errors.New("memcache: URL names no server")
	}
	p := claim.NewParams(u)
	o := Options{
		Prefix:      p.String("prefix", DefaultPrefix),
		ItemSizeMax: p.Int("item_size_max", DefaultItemSizeMax),
		PollMin:     p.Duration("poll_min", 0),
		PollMax:     p.Duration("poll_max", 0),
	}
	timeout := p.Duration("timeout", DefaultTimeout)
	idle := p.Int("max_idle_conns", DefaultMaxIdleConns)
	useTLS := p.Bool("tls", false)
	tf := tlsfiles.Files{CA: p.String("cacert", ""), Cert: p.String("cert", ""), Key: p.String("key", ""), ServerName: p.String("servername", "")}
	if err := p.Err(); err != nil {
		return nil, fmt.Errorf("memcache: %w", err)
	}
	c := gomemcache.New(servers...)
	c.Timeout = timeout
	c.MaxIdleConns = idle
	if !useTLS && !tf.Empty() {
		return nil, errors.New("memcache: URL parameters cacert, cert, key and servername need tls=true")
	}
	if useTLS {
		tc, err := tf.Config()
		if err != nil {
			return nil, fmt.Errorf("memcache: URL TLS parameters: %w", err)
		}
		// memcached 1.6 built with TLS, started with -Z (--enable-ssl).
		d := &tls.Dialer{Config: tc}
		c.DialContext = d.DialContext
	}
	b, err := New(c, &o)
	if err != nil {
		return nil, err
	}
	b.own = true
	return b, nil
}

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Poll,
		AtomicCommit:   false,
		DurableFence:   false,
		MinTTL:         time.Second,
		TTLGranularity: time.Second,
		MaxValueLen:    b.maxVal,
	}
}

// Close implements claim.Backend: it stops the poll loops, closes every
// subscription, and closes the client if the Backend was opened by URL.
// Leases are not released. Idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.hub.Close()
	b.poller.Close()
	if b.own {
		_ = b.c.Close()
	}
	return nil
}

func (b *Backend) check(ctx context.Context, op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("memcache: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("memcache: %s %q: %w", op, key, claim.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memcache: %s %q: %w", op, key, err)
	}
	return nil
}

func (b *Backend) item(role byte, key string) string {
	return b.prefix + ":" + string(role) + ":" + b.enc.Encode(key)
}

// seconds rounds ttl up to whole seconds, at least one.
func seconds(ttl time.Duration) int64 {
	return max(1, int64((ttl+time.Second-1)/time.Second))
}

// exptime converts a lifetime in seconds to memcached's exptime: relative
// up to 30 days, an absolute Unix time beyond (memcached reads any larger
// number as one).
func exptime(sec int64, now time.Time) (int32, error) {
	if sec <= maxRelative {
		return int32(sec), nil
	}
	abs := now.Unix() + sec
	if abs > 1<<31-1 {
		return 0, fmt.Errorf("ttl of %ds ends after 2038, beyond memcached's exptime", sec)
	}
	return int32(abs), nil
}

func holderID() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// The lock item's value: "HOLDER UNIXMS", UNIXMS being the latest time
// (holder's clock) the server can keep the item: request time + exptime.
func lockValue(holder string, latest time.Time) []byte {
	return []byte(holder + " " + strconv.FormatInt(latest.UnixMilli(), 10))
}

func parseLock(v []byte) (holder string, latest time.Time) {
	h, ms, ok := strings.Cut(string(v), " ")
	if !ok {
		return h, time.Time{}
	}
	n, _ := strconv.ParseInt(ms, 10, 64)
	return h, time.UnixMilli(n)
}

// wrap maps gomemcache's errors (object too large) and wraps once.
func wrap(op, key string, err error) error {
	if err != nil && strings.Contains(err.Error(), "object too large") {
		err = fmt.Errorf("%w: %w", claim.ErrTooLarge, err)
	}
	return fmt.Errorf("memcache: %s %q: %w", op, key, err)
}

// TryClaim implements claim.Claimer: add of the lock item, then incr of the
// fence counter (two round trips; three when the counter must be created).
// ttl is rounded up to whole seconds.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	if err := b.check(ctx, "claim", key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("memcache: claim %q: ttl must be positive, got %s", key, ttl)
	}
	sec := seconds(ttl)
	start := time.Now()
	exp, err := exptime(sec+lockSlack, start)
	if err != nil {
		return claim.Lease{}, fmt.Errorf("memcache: claim %q: %w", key, err)
	}
	holder := holderID()
	lk := b.item('l', key)
	err = b.c.Add(&gomemcache.Item{Key: lk, Value: lockValue(holder, start.Add(time.Duration(sec+lockSlack)*time.Second)), Expiration: exp})
	if errors.Is(err, gomemcache.ErrNotStored) {
		he := &claim.HeldError{Key: key}
		if it, err := b.c.Get(lk); err == nil {
			if _, latest := parseLock(it.Value); !latest.IsZero() {
				he.Remaining = max(0, time.Until(latest))
			}
		}
		return claim.Lease{}, fmt.Errorf("memcache: claim %q: %w", key, he)
	}
	if err != nil {
		return claim.Lease{}, wrap("claim", key, err)
	}
	// The token is drawn after the add succeeded, so tokens are issued in
	// the order the leases were granted.
	token, err := b.incr(b.item('f', key))
	if err != nil {
		// No token, no lease: free the key again if we still can (else
		// the lock expires by its TTL).
		_ = b.swapLock(claim.Lease{Key: key, Holder: holder}, false, func(it *gomemcache.Item) { it.Expiration = -1 })
		return claim.Lease{}, wrap("claim", key, err)
	}
	d := time.Duration(sec) * time.Second
	return claim.Lease{Key: key, Holder: holder, Token: token, TTL: d, Deadline: start.Add(d)}, nil
}

// incr increments a counter that never expires, creating it (at the
// current Unix time in microseconds, so a counter lost to eviction or a
// restart comes back larger than it was) when missing.
func (b *Backend) incr(k string) (uint64, error) {
	n, err := b.c.Increment(k, 1)
	if !errors.Is(err, gomemcache.ErrCacheMiss) {
		return n, err
	}
	base := uint64(time.Now().UnixMicro())
	err = b.c.Add(&gomemcache.Item{Key: k, Value: []byte(strconv.FormatUint(base, 10))})
	if err == nil {
		return base, nil
	}
	if !errors.Is(err, gomemcache.ErrNotStored) {
		return 0, err
	}
	return b.c.Increment(k, 1) // someone else created it just now
}

// swapLock replaces l's lock item, read with gets, by the item next
// returns, with CompareAndSwap: never if the lock is gone or another
// holder's (ErrLost). A CAS conflict caused by the same holder (a
// concurrent Extend of this lease) is retried; one by another holder means
// the lease was lost. With notify, the key's notify counter is bumped once
// the lock was seen to be l's, before the swap.
func (b *Backend) swapLock(l claim.Lease, notify bool, next func(it *gomemcache.Item)) error {
	lk := b.item('l', l.Key)
	for range 3 {
		it, err := b.c.Get(lk)
		if errors.Is(err, gomemcache.ErrCacheMiss) {
			return claim.ErrLost
		}
		if err != nil {
			return err
		}
		if h, _ := parseLock(it.Value); h != l.Holder {
			return claim.ErrLost
		}
		if notify {
			if _, err := b.incr(b.item('n', l.Key)); err != nil {
				return fmt.Errorf("notify: %w", err)
			}
			notify = false
		}
		next(it)
		err = b.c.CompareAndSwap(it)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, gomemcache.ErrCacheMiss):
			return claim.ErrLost
		case !errors.Is(err, gomemcache.ErrCASConflict):
			return err
		}
	}
	return claim.ErrLost
}

// Extend implements claim.Claimer: gets the lock, check the holder, CAS it
// with the new expiry.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check(ctx, "extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("memcache: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("memcache: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	sec := seconds(ttl)
	exp, err := exptime(sec+lockSlack, start)
	if err != nil {
		return claim.Lease{}, fmt.Errorf("memcache: extend %q: %w", l.Key, err)
	}
	err = b.swapLock(l, false, func(it *gomemcache.Item) {
		it.Value = lockValue(l.Holder, start.Add(time.Duration(sec+lockSlack)*time.Second))
		it.Expiration = exp
	})
	if err != nil {
		return claim.Lease{}, wrap("extend", l.Key, err)
	}
	l.TTL = time.Duration(sec) * time.Second
	l.Deadline = start.Add(l.TTL)
	return l, nil
}

// Release implements claim.Claimer: gets the lock, check the holder, incr
// the notify counter, CAS the lock to an already-expired item (three round
// trips). Pollers see the counter change (and the lock gone); this
// Backend's own subscribers are woken at once.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check(ctx, "release", l.Key); err != nil {
		return err
	}
	// The lock records when it ends as last extended: past the lease's
	// end, the lease is no longer current, though memcached (whole
	// seconds, and lockSlack) may not have dropped the item yet.
	var expired bool
	err := b.swapLock(l, true, func(it *gomemcache.Item) {
		// latest is when memcached drops the item at the latest: the
		// lease's own end plus lockSlack.
		_, latest := parseLock(it.Value)
		expired = !latest.IsZero() && !time.Now().Before(latest.Add(-lockSlack*time.Second))
		it.Expiration = -1
	})
	if err != nil {
		return wrap("release", l.Key, err)
	}
	b.hub.Wake(l.Key) // this process's waiters need no poll
	if expired {
		return fmt.Errorf("memcache: release %q: %w (it had expired; its lock, still unclaimed, was freed)", l.Key, claim.ErrLost)
	}
	return nil
}

// A stored value: 8 bytes of expiry (Unix ms, big endian; 0: none), then
// the caller's bytes.
const valueHeader = 8

func encodeValue(val []byte, expires time.Time) []byte {
	out := make([]byte, valueHeader+len(val))
	if !expires.IsZero() {
		binary.BigEndian.PutUint64(out, uint64(expires.UnixMilli()))
	}
	copy(out[valueHeader:], val)
	return out
}

func (b *Backend) valueItem(op, key string, val []byte, ttl time.Duration) (*gomemcache.Item, error) {
	if ttl < 0 {
		return nil, fmt.Errorf("memcache: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, b.maxVal); err != nil {
		return nil, fmt.Errorf("memcache: %s %q: %w", op, key, err)
	}
	it := &gomemcache.Item{Key: b.item('v', key)}
	var expires time.Time
	if ttl > 0 {
		now := time.Now()
		expires = now.Add(ttl)
		exp, err := exptime(seconds(ttl)+1, now)
		if err != nil {
			return nil, fmt.Errorf("memcache: %s %q: %w", op, key, err)
		}
		it.Expiration = exp
	}
	it.Value = encodeValue(val, expires)
	return it, nil
}

// Commit implements claim.Claimer. It is not atomic; see the package
// documentation for exactly what it guarantees.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	if err := b.check(ctx, "commit", l.Key); err != nil {
		return err
	}
	it, err := b.valueItem("commit", l.Key, val, ttl)
	if err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("memcache: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	lock, err := b.c.Get(b.item('l', l.Key))
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return fmt.Errorf("memcache: commit %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return wrap("commit", l.Key, err)
	}
	if h, _ := parseLock(lock.Value); h != l.Holder {
		return fmt.Errorf("memcache: commit %q: %w", l.Key, claim.ErrLost)
	}
	if err := b.c.Set(it); err != nil {
		return wrap("commit", l.Key, err)
	}
	if !l.Expired(time.Now()) {
		// The write was applied before its reply, hence before Deadline,
		// while the lease was certainly live.
		return nil
	}
	// Too late to be sure: take the value back unless someone replaced it.
	if cur, err := b.c.Get(it.Key); err == nil && bytes.Equal(cur.Value, it.Value) {
		cur.Expiration = -1
		_ = b.c.CompareAndSwap(cur)
	}
	return fmt.Errorf("memcache: commit %q: %w (write acknowledged after the local deadline, withdrawn)", l.Key, claim.ErrLost)
}

// Get implements claim.Store. A value past its TTL (by this client's clock)
// is never returned.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check(ctx, "get", key); err != nil {
		return nil, err
	}
	it, err := b.c.Get(b.item('v', key))
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil, fmt.Errorf("memcache: get %q: %w", key, claim.ErrNotFound)
	}
	if err != nil {
		return nil, wrap("get", key, err)
	}
	if len(it.Value) < valueHeader {
		return nil, fmt.Errorf("memcache: get %q: malformed value item (%d bytes)", key, len(it.Value))
	}
	if ms := binary.BigEndian.Uint64(it.Value); ms != 0 && time.Now().UnixMilli() >= int64(ms) {
		return nil, fmt.Errorf("memcache: get %q: %w", key, claim.ErrNotFound)
	}
	return it.Value[valueHeader:], nil
}

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.check(ctx, "set", key); err != nil {
		return err
	}
	it, err := b.valueItem("set", key, val, ttl)
	if err != nil {
		return err
	}
	if err := b.c.Set(it); err != nil {
		return wrap("set", key, err)
	}
	return nil
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check(ctx, "delete", key); err != nil {
		return err
	}
	if err := b.c.Delete(b.item('v', key)); err != nil && !errors.Is(err, gomemcache.ErrCacheMiss) {
		return wrap("delete", key, err)
	}
	return nil
}
