package redis

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme and TLSScheme are the URL schemes this package registers.
const (
	Scheme    = "redis"
	TLSScheme = "rediss"
)

// Defaults for Options' zero fields.
const (
	DefaultPrefix              = "stampede"
	DefaultMaxValueLen         = 512 << 20 // Redis's proto-max-bulk-len default
	DefaultHealthCheckInterval = 3 * time.Second
	DefaultWaitTimeout         = time.Second
)

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(TLSScheme, &URLOpener{})
}

// Options configure the Client New returns. nil means defaults; every
// zero field is a default.
type Options struct {
	// Prefix starts every key and channel name (default "stampede"). It
	// must not contain '{' or '}' (the hash tag that keeps a key's names in
	// one cluster slot follows it). Processes sharing keys must agree on it.
	Prefix string
	// MaxValueLen is the largest value Commit and Set accept (default 512
	// MiB, Redis's proto-max-bulk-len default; set it to the server's).
	MaxValueLen int
	// HealthCheckInterval: when the pub/sub connection has been silent this
	// long, the driver pings it; with no answer within another interval
	// the connection is replaced and waiters re-check (default 3s).
	HealthCheckInterval time.Duration
	// CloseClient makes Close also close the go-redis client (default
	// false: the caller owns it). Clients opened by URL close theirs. A New
	// that fails never closes it.
	CloseClient bool
	// WaitReplicas, when positive, turns on the WAIT mode (see "WAIT
	// mode" in the package doc): every write but Release and the
	// publishes is followed, in the same pipeline on the same
	// connection, by WAIT WaitReplicas WaitTimeout, and a write that
	// fewer replicas acknowledged fails with a *ReplicationError (a claim
	// is then released, best effort). Default 0: no WAIT. Not supported
	// on a *ClusterClient, nor with fair acquisition (the driver then
	// lacks driver.Queuer).
	WaitReplicas int
	// WaitTimeout bounds each WAIT (default DefaultWaitTimeout, 1s; Redis
	// rounds it to whole milliseconds). Used only with WaitReplicas.
	WaitTimeout time.Duration
	// Client configures the Client New returns: its operation timeout
	// (OpTimeout, which also bounds New's check of the server) and Lazy
	// (New does not check the server).
	Client *claim.Options
}

// backend is the driver on one go-redis client. It is safe for concurrent
// use.
type backend struct {
	rdb goredis.UniversalClient
	cc  *goredis.ClusterClient // non-nil: sharded pub/sub
	opt Options                // defaults filled in
	n   *notifier
	// deadlines: rdb ends its calls at their context's deadline
	// (ContextTimeoutEnabled); without it, call bounds them.
	deadlines bool
	owns      atomic.Bool // Close closes rdb
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
)

// New returns a Client on client: a *goredis.Client (standalone or
// Sentinel failover) or *goredis.ClusterClient (sharded pub/sub, Redis 7
// or later); a *goredis.Ring is refused (its pub/sub cannot follow keys
// across shards). Every script is safe under go-redis's retries, but
// MaxRetries: -1 (one attempt per call) and DialerRetries: 1 give the
// clearest errors and the fastest; set ContextTimeoutEnabled too, or
// each call runs on a goroutine of its own so that it can return at its
// context's deadline. The URL opener does all three.
//
// New checks the server before it returns (claim.Connect: the Client's
// Ping, one script round trip after go-redis's connection set-up),
// within the operation timeout (Options.Client.OpTimeout, default
// claim.DefaultOpTimeout): a wrong or missing password, an ACL user
// without the driver's commands, keys or channels, a read-only replica or
// a server of another kind fail with an error wrapping claim.ErrConfig,
// a server that cannot be reached or does not answer with one wrapping
// claim.ErrUnavailable. With Options.Client.Lazy it does no I/O, and the
// first call meets those errors instead. A New that fails leaves client
// open, whatever CloseClient says: the caller still owns it.
func New(client goredis.UniversalClient, opt *Options) (*claim.Client, error) {
	b, err := newBackend(client, opt)
	if err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b.driver(), b.opt.Client)
	if err != nil {
		return nil, fmt.Errorf("redis: New: %w", err)
	}
	b.owns.Store(b.opt.CloseClient)
	return c, nil
}

// newBackend is the driver of New and of the URL opener.
func newBackend(client goredis.UniversalClient, opt *Options) (*backend, error) {
	if client == nil {
		return nil, errors.New("redis: New: nil client")
	}
	if _, ok := client.(*goredis.Ring); ok {
		return nil, errors.New("redis: New: *Ring is not supported (use a *ClusterClient)")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	o.Prefix = cmp.Or(o.Prefix, DefaultPrefix)
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redis: prefix %q must not contain '{' or '}'", o.Prefix)
	}
	if o.MaxValueLen <= 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.HealthCheckInterval <= 0 {
		o.HealthCheckInterval = DefaultHealthCheckInterval
	}
	if o.WaitReplicas < 0 {
		return nil, fmt.Errorf("redis: WaitReplicas %d: want 0 (no WAIT) or more", o.WaitReplicas)
	}
	if o.WaitTimeout < 0 || (o.WaitTimeout > 0 && o.WaitTimeout < time.Millisecond) {
		return nil, fmt.Errorf("redis: WaitTimeout %v: want at least 1ms (0: the default, %v)", o.WaitTimeout, DefaultWaitTimeout)
	}
	if o.WaitTimeout == 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	b := &backend{rdb: client, opt: o}
	switch c := client.(type) {
	case *goredis.Client:
		b.deadlines = c.Options().ContextTimeoutEnabled
		if rt := c.Options().ReadTimeout; o.WaitReplicas > 0 && rt > 0 && o.WaitTimeout >= rt {
			return nil, fmt.Errorf("redis: WaitTimeout %v: want it below the client's ReadTimeout, %v (read_timeout), which bounds WAIT's reply", o.WaitTimeout, rt)
		}
	case *goredis.ClusterClient:
		b.cc, b.deadlines = c, c.Options().ContextTimeoutEnabled
		if o.WaitReplicas > 0 {
			return nil, errors.New("redis: WAIT mode (WaitReplicas, wait_replicas) is not supported on a cluster client: WAIT must follow the write on its master's connection")
		}
	}
	b.n = newNotifier(b, o.HealthCheckInterval)
	return b, nil
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Push,
		AtomicCommit:   true,
		DurableFence:   false,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    b.opt.MaxValueLen,
		Broadcast:      true,
		// Redis bounds neither a pipeline's length nor the channels of
		// one SUBSCRIBE: batches are as long as the caller makes them.
		MaxBatch: 0,
	}
}

// Close implements driver.Driver: it closes the pub/sub connections, and
// the go-redis client too if Options.CloseClient (and New succeeded) or
// the client was opened by URL.
func (b *backend) Close() error {
	b.n.close()
	if b.owns.Load() {
		return b.rdb.Close()
	}
	return nil
}

// call runs f, one go-redis call, under ctx and returns its error
// classified (classify). When rdb ends its calls at their context's
// deadline (ContextTimeoutEnabled, as the URL opener sets it) f runs
// directly; otherwise on a goroutine, and call returns ctx's error as
// soon as ctx is done (f then ends in the background, at go-redis's
// ReadTimeout or WriteTimeout).
func call[T any](b *backend, ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	if b.deadlines {
		v, err := f(ctx)
		return v, classify(err)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f(ctx)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, classify(r.err)
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// As implements driver.Aser (the types are in the package doc); *i is
// left alone when it returns false.
func (b *backend) As(i any) bool {
	switch p := i.(type) {
	case *goredis.UniversalClient:
		*p = b.rdb
		return true
	case **goredis.Client:
		c, ok := b.rdb.(*goredis.Client)
		if ok {
			*p = c
		}
		return ok
	case **goredis.ClusterClient:
		if b.cc != nil {
			*p = b.cc
		}
		return b.cc != nil
	}
	return false
}

// keyEncoder keeps keys of up to 255 bytes without braces readable.
var keyEncoder = driver.KeyEncoder{MaxLen: 256, Safe: func(c byte) bool { return c != '{' && c != '}' }}

// names of one key: every name shares the hash tag {E}.
func (b *backend) base(key string) string { return b.opt.Prefix + ":{" + keyEncoder.Encode(key) + "}" }

func (b *backend) lockKey(key string) string        { return b.base(key) + ":lock" }
func (b *backend) fenceKey(key string) string       { return b.base(key) + ":fence" }
func (b *backend) valKey(key string) string         { return b.base(key) + ":val" }
func (b *backend) channel(key string) string        { return b.base(key) + ":ch" }
func (b *backend) topicChannel(topic string) string { return b.base(topic) + ":topic" }

// millis rounds d up to whole milliseconds (at least 1).
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}

// expiry is a value's PX in milliseconds (0: no expiry).
func expiry(ttl time.Duration) int64 {
	if ttl <= 0 {
		return 0
	}
	return millis(ttl)
}
