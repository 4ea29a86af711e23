package memcache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers.
const Scheme = "memcache"

func init() { claim.Register(Scheme, &URLOpener{}) }

// Defaults for Options and URL parameters.
const (
	DefaultPrefix       = "stampede"
	DefaultItemSizeMax  = 1 << 20
	DefaultTimeout      = 500 * time.Millisecond
	DefaultMaxIdleConns = 16
	// DefaultClockSkew is Options.ClockSkew's default.
	DefaultClockSkew = 100 * time.Millisecond
	// itemOverhead is what an item needs besides its value: memcached's
	// item header, a key of up to 250 bytes, and the value header (8).
	itemOverhead = 1024
	maxKeyLen    = 250
	// lockSlack is how many seconds past its lease's end a lock item
	// records as its "latest" time (lockItem): the lock's end is that
	// less lockSlack. Earlier versions also kept the item exactly that
	// long and waited for memcached to drop it; the value is kept so
	// that every version reads the same end from the same lock.
	lockSlack = 2
	// lockKeep is how many seconds past its lease's end memcached keeps
	// a lock item, so that memcached's coarse, possibly late clock never
	// drops a lock before its holder's Deadline: a fault test saw a
	// rival get in early at load 20 with one second, and a 3-second
	// item (lockSlack) was seen dropped 1.05 s after it was set at load
	// 3. Nobody waits for the drop (rivals take a lock over by the end
	// it records, see takeLock), so a generous keep costs only the
	// memory of a dead holder's lock for that long.
	lockKeep = 10
	// maxRelative is the longest exptime memcached reads as relative.
	maxRelative = 30 * 24 * 3600
	// pollBatchKeys is how many keys' states one batched poll reads (a
	// multi-get of twice as many items): a process waiting on hundreds
	// of keys polls them in a few requests (driver.NewBatchPoller).
	pollBatchKeys = 100
)

// Options configure New. nil means defaults; every zero field is the
// documented default.
type Options struct {
	// Prefix starts every item key (default "stampede"). Printable ASCII
	// without spaces, at most 200 bytes. Every process sharing keys must
	// use the same prefix.
	Prefix string
	// ItemSizeMax is the servers' item size limit, memcached's -I
	// (default 1 MiB). Values up to ItemSizeMax - 1 KiB are accepted
	// (Features.MaxValueLen; the URL parameter maxvalue sets that).
	ItemSizeMax int
	// ClockSkew is the margin for the difference between clients' clocks
	// (default 100 ms): a lease whose holder did not release it is
	// taken over ClockSkew after the end its lock records, by the
	// claimer's clock, or sooner by a process that saw the lock written
	// when it was made: its TTL (and 1 ms and 500 ppm) after that
	// sighting, whatever the clocks read (see the package's Semantics).
	// Negative is an error.
	ClockSkew time.Duration
	// PollMin and PollMax bound the polling interval (defaults 2 ms and
	// 50 ms, see driver.PollOptions).
	PollMin, PollMax time.Duration
	// PollFixed, if true, polls on the backoff's schedule only, without
	// learning how long claims are held (driver.PollOptions.NoHoldEstimate).
	PollFixed bool
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one memcached client's driver; it is safe for concurrent
// use.
type backend struct {
	*driver.Poller // Subscribe and Unsubscribe: one poll loop per key (readState), their reads batched (readStates)

	c      *gomemcache.Client
	own    bool // Close closes c
	prefix string
	enc    driver.KeyEncoder
	maxVal int
	// timeout is gomemcache's Timeout: the dial, and each read and write
	// of a call; slowest is how long one call on one or two items can
	// take at most (see do).
	timeout, slowest time.Duration
	// skew is Options.ClockSkew: how long after the end a lock records
	// another client may take it over by the clock rule (heldUntil).
	skew time.Duration
	// seen is the locks this client saw written, and when it first saw
	// each write, for earlier takeovers (heldUntil).
	seen driver.Sightings
	// par bounds the batch requests this client has in flight at once,
	// across all its batches (writes holds a token per request; see
	// batch.go): the client's idle connections per server, so that
	// batches reuse pooled connections instead of dialling more.
	par    int
	writes chan struct{}
	// grants runs the grant subscriptions (SubscribeGrants, queue.go).
	grants *grantPoller
}

var (
	_ driver.Driver      = (*backend)(nil)
	_ driver.Aser        = (*backend)(nil)
	_ driver.Batcher     = (*backend)(nil)
	_ driver.Queuer      = (*backend)(nil)
	_ driver.PollCounter = (*backend)(nil)
)

// New returns a Client on client, which the caller configured (servers,
// timeouts, TLS dialer) and keeps owning: neither Close nor a failed
// check closes it. New checks the servers first (claim.Connect: a
// version command to each, within the operation timeout), unless
// opt.Client.Lazy: a server that is not memcached, or a TLS handshake it
// refuses, fails with an error wrapping claim.ErrConfig, one that cannot
// be reached or does not answer with claim.ErrUnavailable.
func New(client *gomemcache.Client, opt *Options) (*claim.Client, error) {
	var o Options
	if opt != nil {
		o = *opt
	}
	b, err := newBackend(client, o)
	if err != nil {
		return nil, err
	}
	return claim.Connect(context.Background(), b, o.Client)
}

func newBackend(client *gomemcache.Client, o Options) (*backend, error) {
	if client == nil {
		return nil, errors.New("memcache: nil client")
	}
	o.Prefix = cmp.Or(o.Prefix, DefaultPrefix)
	if len(o.Prefix) > 200 || strings.ContainsFunc(o.Prefix, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return nil, fmt.Errorf("memcache: prefix %q: want at most 200 bytes of printable ASCII without spaces", o.Prefix)
	}
	o.ItemSizeMax = cmp.Or(o.ItemSizeMax, DefaultItemSizeMax)
	if o.ItemSizeMax < 2*itemOverhead {
		return nil, fmt.Errorf("memcache: value limit %d (maxvalue, or ItemSizeMax less %d) too small: want at least %d",
			o.ItemSizeMax-itemOverhead, itemOverhead, itemOverhead)
	}
	if o.ClockSkew < 0 {
		return nil, fmt.Errorf("memcache: negative clock skew %s", o.ClockSkew)
	}
	o.ClockSkew = cmp.Or(o.ClockSkew, DefaultClockSkew)
	timeout := cmp.Or(client.Timeout, gomemcache.DefaultTimeout)
	par := client.MaxIdleConns
	if par < 1 {
		par = gomemcache.DefaultMaxIdleConns
	}
	b := &backend{
		c:      client,
		prefix: o.Prefix,
		// "PREFIX:x:" + encoded key fits memcached's 250 bytes.
		enc:    driver.KeyEncoder{MaxLen: maxKeyLen - len(o.Prefix) - 3, Safe: safeByte},
		maxVal: o.ItemSizeMax - itemOverhead,
		// A dial, then a deadline for the request and one per line of
		// the reply (a multi-get of two items has three).
		timeout: timeout,
		slowest: 5 * timeout,
		skew:    o.ClockSkew,
		par:     par,
		writes:  make(chan struct{}, par),
	}
	b.Poller = driver.NewBatchPoller(func(ctx context.Context, key, _ string) (driver.PollState, error) { return b.readState(ctx, key) },
		b.readStates, pollBatchKeys, &driver.PollOptions{Min: o.PollMin, Max: o.PollMax, NoHoldEstimate: o.PollFixed})
	b.grants = &grantPoller{
		Poller: driver.NewPoller(b.readGrant, &driver.PollOptions{Min: o.PollMin, Max: o.PollMax, NoHoldEstimate: o.PollFixed}),
		subs:   map[string]*grantSub{},
	}
	return b, nil
}

// safeByte: memcached keys may hold any byte but space, control characters
// and DEL.
func safeByte(c byte) bool { return c > ' ' && c != 0x7f }

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Poll,
		AtomicCommit:   false,
		DurableFence:   false,
		MinTTL:         time.Second,
		TTLGranularity: time.Second,
		MaxValueLen:    b.maxVal,
	}
}

// Close implements driver.Driver: it stops the poll loops (the grant
// subscriptions' too), and closes the gomemcache client if it was opened
// by URL.
func (b *backend) Close() error {
	b.Poller.Close()
	b.grants.Close()
	if b.own {
		return b.c.Close()
	}
	return nil
}

// As implements driver.Aser: i may be a **gomemcache.Client.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.c) }

func (b *backend) item(role byte, key string) string {
	return b.prefix + ":" + string(role) + ":" + b.enc.Encode(key)
}

// do runs fn, one gomemcache call, within ctx, and classifies its error
// (classify). gomemcache takes no context: its calls end by its own
// Timeout (io_timeout). When ctx may end before the slowest such call
// could, fn runs on a goroutine of its own and do returns ctx's error
// when ctx ends first, leaving the call to end by its Timeout in the
// background (a write it made may still land: see Commit). A call whose
// ctx is done is not made.
func do[T any](ctx context.Context, b *backend, fn func() (T, error)) (T, error) {
	return within(ctx, b.slowest, fn)
}

// within is do for a call that can take at most slowest.
func within[T any](ctx context.Context, slowest time.Duration, fn func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	dl, ok := ctx.Deadline()
	if ctx.Done() == nil || (ok && time.Until(dl) > slowest) {
		v, err := fn()
		return v, classify(err)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := fn()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, classify(r.err)
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// getMulti reads items with one multi-get: gomemcache sends one gets per
// server, to every server at once, so it costs one round trip whatever
// the number of keys. Each line of a reply gets its own deadline: the
// call is bounded by a dial, the request and a line per item (and END).
func (b *backend) getMulti(ctx context.Context, keys ...string) (map[string]*gomemcache.Item, error) {
	return within(ctx, time.Duration(3+len(keys))*b.timeout, func() (map[string]*gomemcache.Item, error) {
		return b.c.GetMulti(keys)
	})
}

// do0 is do for a call that returns only an error.
func do0(ctx context.Context, b *backend, fn func() error) error {
	_, err := do(ctx, b, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// PollReads implements driver.PollCounter: the reads of the wake-up and
// grant polls.
func (b *backend) PollReads() uint64 { return b.Poller.Reads() + b.grants.Reads() }
