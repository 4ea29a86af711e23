package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Schemes this package registers.
const (
	Scheme    = "consul"
	SchemeTLS = "consuls"
)

// Defaults for Options.
const (
	DefaultPrefix    = "stampede"
	DefaultClockSkew = 50 * time.Millisecond
	// DefaultMaxValueLen keeps a Commit transaction (value base64-encoded
	// in JSON, plus two keys) under Consul's default 512 KiB limits
	// (txn_max_req_len, kv_max_value_size).
	DefaultMaxValueLen = 380 << 10
	// MaxPrefixLen bounds Options.Prefix.
	MaxPrefixLen = 256
)

// DefaultMaxWatches is Options.MaxWatches when unset, and
// DefaultMaxConns the connections a URL-opened Client uses for everything
// else (its maxconns parameter): 12 connections per Client at most, so
// that 8 processes on one host (each with a Client) stay at half the
// local agent's default limit of 200 connections per client address
// (http_max_conns_per_client).
const (
	DefaultMaxWatches = 6
	DefaultMaxConns   = 6
)

// DefaultWaitTime is Options.WaitTime when unset: shorter than Consul's
// own default (5 minutes), so that a blocking query given up holds its
// connection on the agent for a minute at most.
const DefaultWaitTime = time.Minute

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(SchemeTLS, &URLOpener{TLS: true})
}

// Options configure the Client New returns. nil means defaults; every
// zero field is the documented default.
type Options struct {
	// Prefix is the KV prefix every key lives under (default "stampede").
	// Every process sharing keys must use the same prefix.
	Prefix string
	// ClockSkew is the largest clock difference assumed between clients:
	// a lease is taken over only ClockSkew after its recorded expiry.
	// Zero means DefaultClockSkew (50 ms); negative means none.
	ClockSkew time.Duration
	// MaxValueLen is the largest value Commit and Set accept (default
	// DefaultMaxValueLen).
	MaxValueLen int
	// WaitTime is the longest a blocking query waits for a change (0:
	// DefaultWaitTime): a subscription's queries start with a wait of a
	// second and double it while nothing happens. A query given up
	// (Unsubscribe, Close) keeps its connection open on the agent until
	// its wait ends, counting against http_max_conns_per_client.
	WaitTime time.Duration
	// MaxWatches is the most blocking queries (one per subscription of a
	// key, wake-ups or grants, and one per fair lease held, each holding
	// an HTTP connection) this Client keeps open at once; subscriptions
	// beyond it are polled (see the package doc), and a fair lease held
	// beyond it is handed over with a read first. Zero means
	// DefaultMaxWatches; negative means no limit.
	MaxWatches int
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one client of Consul.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	c       *capi.Client
	kv      *capi.KV
	watchKV *capi.KV // blocking queries: kv, or a client of its own (URL-opened)
	prefix  string
	o       Options // defaults applied; ClockSkew >= 0, MaxWatches < 0: no limit
	enc     driver.KeyEncoder
	ctx     context.Context // cancelled by Close; parent of every watcher
	cancel  context.CancelFunc
	cleanup func() // closes idle connections of a client we made

	mu        sync.Mutex
	closed    bool
	watchers  map[subID]*watcher
	polled    map[subID]sub    // subscriptions read by the poll loop
	pollDone  chan struct{}    // closed when the poll loop ends; nil when none runs
	fairLocal                  // fair acquisition: queuewatch.go
	seen      driver.Sightings // the claims seen, for takeovers (heldUntil)
	watchWG   sync.WaitGroup   // the blocking queries' goroutines (notify.go)
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
)

// New returns a Client using the caller's Consul client (its address, TLS,
// ACL token and datacenter). The Client's Close does not close the Consul
// client's connections, and neither does a New that fails.
//
// New checks the agent before it returns (claim.Connect: the driver's
// Ping, one KV read under the prefix), within the operation timeout
// (Options.Client.OpTimeout, default claim.DefaultOpTimeout): an ACL token
// the agent does not know or that cannot read the prefix (HTTP 403), a
// proxy's 401, or a server that is not a Consul agent fails with an error
// wrapping claim.ErrConfig, an agent that cannot be reached or does not
// answer with one wrapping claim.ErrUnavailable. With
// Options.Client.Lazy it does no I/O, and the first call meets those
// errors instead. Every request the driver makes carries its call's
// context (consul/api has no timeout of its own).
func New(client *capi.Client, opt *Options) (*claim.Client, error) {
	b, err := newBackend(client, *cmp.Or(opt, &Options{}))
	if err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b, b.o.Client)
	if err != nil {
		return nil, fmt.Errorf("consul: New: %w", err)
	}
	return c, nil
}

func newBackend(client *capi.Client, o Options) (*backend, error) {
	if client == nil {
		return nil, errors.New("consul: New: nil client")
	}
	prefix, err := cleanPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	o.ClockSkew = max(cmp.Or(o.ClockSkew, DefaultClockSkew), 0)
	o.MaxWatches = cmp.Or(o.MaxWatches, DefaultMaxWatches)
	if o.WaitTime <= 0 {
		o.WaitTime = DefaultWaitTime
	}
	if o.MaxValueLen <= 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	b := &backend{
		c: client, kv: client.KV(), watchKV: client.KV(), prefix: prefix, o: o,
		enc:      driver.KeyEncoder{MaxLen: 256, Safe: safeKeyByte},
		watchers: map[subID]*watcher{}, polled: map[subID]sub{},
		fairLocal: fairLocal{locals: map[string]map[string]time.Time{}, qwatches: map[string]*queueWatch{}, ended: map[string]uint64{}},
	}
	b.ClaimFunc = b.tryClaim
	b.CommitFunc = func(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration, release bool) error {
		return b.commit(ctx, l, v, ttl, true, release)
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	return b, nil
}

// safeKeyByte keeps readable keys to one path segment that needs no
// escaping in JSON and survives HTTP path cleaning.
func safeKeyByte(c byte) bool {
	return driver.PrintableASCII(c) && !strings.ContainsRune(`/\"<>&%?#`, rune(c))
}

func cleanPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return DefaultPrefix, nil
	}
	if len(p) > MaxPrefixLen {
		return "", fmt.Errorf("consul: prefix longer than %d bytes", MaxPrefixLen)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("consul: prefix %q: empty, . or .. segment", p)
		}
		for i := 0; i < len(seg); i++ {
			if !safeKeyByte(seg[i]) {
				return "", fmt.Errorf("consul: prefix %q: byte %q not allowed", p, seg[i])
			}
		}
	}
	return p, nil
}

// String describes the driver without secrets.
func (b *backend) String() string { return fmt.Sprintf("consul driver (prefix %q)", b.prefix) }

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{Name: Scheme, Notify: driver.Push, AtomicCommit: true, DurableFence: true,
		MinTTL: time.Millisecond, TTLGranularity: time.Millisecond, MaxValueLen: b.o.MaxValueLen, MaxBatch: maxTxnOps}
}

// Key layout.
func (b *backend) dir(key string) string       { return b.prefix + "/c/" + b.enc.Encode(key) + "/" }
func (b *backend) lockKey(key string) string   { return b.dir(key) + "lock" }
func (b *backend) notifyKey(key string) string { return b.dir(key) + "notify" }
func (b *backend) valueKey(key string) string  { return b.prefix + "/v/" + b.enc.Encode(key) }

// qo is the options of every read: consistent (?consistent), because in
// Consul's default mode a leader paused past an election answers the
// reads queued at it from its old state when it resumes (measured by
// TestClusterConsulStaleRead in faults: 3 stale reads of 8 before). The
// cost is the leader's check with a quorum of its peers, nothing on a
// single server.
func qo(ctx context.Context) *capi.QueryOptions {
	return (&capi.QueryOptions{RequireConsistent: true}).WithContext(ctx)
}
func wo(ctx context.Context) *capi.WriteOptions { return (&capi.WriteOptions{}).WithContext(ctx) }

// Close implements driver.Driver; a driver opened by URL also drops its
// idle connections.
func (b *backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.watchers = nil
	pd := b.pollDone
	b.mu.Unlock()
	b.cancel()
	b.watchWG.Wait()
	b.qwg.Wait()
	if pd != nil {
		<-pd
	}
	if b.cleanup != nil {
		b.cleanup()
	}
	return nil
}

// As implements driver.Aser (see the package doc).
func (b *backend) As(i any) bool { return driver.SetAs(i, b.c) }
