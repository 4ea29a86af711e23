package etcd

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme and TLSScheme are the URL schemes this package registers.
const (
	Scheme    = "etcd"
	TLSScheme = "etcds"
)

const (
	// DefaultPrefix is the key prefix used when Options.Prefix is empty.
	DefaultPrefix = "stampede"
	// DefaultMinTTL is the minimum lease TTL assumed when Options.MinTTL is
	// zero: that of an etcd with its default 1 s election timeout.
	DefaultMinTTL = 2 * time.Second
	// DefaultDialTimeout bounds each connection attempt (TCP and the
	// HTTP/2 handshake), authenticating, and the round trip in which
	// claim.Open learns the server's minimum lease TTL, when a URL gives
	// no dial_timeout. It is claim.DefaultOpTimeout: no longer than the
	// Client's own bound on a call.
	DefaultDialTimeout = claim.DefaultOpTimeout
	// RequestLimit is etcd's default --max-request-bytes (1.5 MiB).
	RequestLimit = 1572864
	// DefaultMaxValueLen is the largest value Commit and Set accept by
	// default: RequestLimit less room for the keys and the transaction
	// around the value.
	DefaultMaxValueLen = RequestLimit - requestOverhead - valueHeader
	// MaxPrefixLen is the longest Options.Prefix accepted.
	MaxPrefixLen = 1024

	requestOverhead = 8 << 10
	valueHeader     = 9 // version byte + 8-byte expiry
	maxKeyLen       = 512
	// revokeTimeout bounds a background revocation.
	revokeTimeout = 5 * time.Second
)

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(TLSScheme, &URLOpener{})
}

// keys maps any key to at most maxKeyLen bytes with no control character,
// so that lockKey+"\x00..." can only be this driver's own notify key.
var keys = driver.KeyEncoder{MaxLen: maxKeyLen, Safe: func(b byte) bool { return b >= 0x20 && b != 0x7f }}

// Options configure the driver New puts behind its Client. nil means
// defaults; every zero field is a documented default.
type Options struct {
	// Prefix is prepended (with "/") to every key this driver writes.
	// Empty means DefaultPrefix. Every process sharing keys must use the
	// same prefix. Trailing slashes are dropped.
	Prefix string
	// MinTTL is the server's minimum lease TTL (1.5 × election timeout,
	// rounded up to whole seconds). Zero means DefaultMinTTL; claim.Open
	// asks the server instead (see URLOpener). A server whose minimum is
	// higher still grants its minimum, and Lease.TTL says so.
	MinTTL time.Duration
	// MaxValueLen is the largest value accepted (0: DefaultMaxValueLen).
	// Raise it only together with the server's --max-request-bytes.
	MaxValueLen int
	// Client configures the Client New returns.
	Client *claim.Options
}

// New returns a Client using the caller's own configured etcd client (TLS,
// auth, endpoints, dial options are the caller's). Closing the Client does
// not close client, and neither does a New that fails.
//
// New checks the server before it returns (claim.Connect: the driver's
// Ping, one linearizable read under the prefix), within the operation
// timeout (Options.Client.OpTimeout, default claim.DefaultOpTimeout): a
// user without read access to the prefix, an expired or invalid token, or
// a server that is not etcd fails with an error wrapping claim.ErrConfig,
// a server that cannot be reached or does not answer with one wrapping
// claim.ErrUnavailable. (A wrong password already failed clientv3.New,
// which authenticates.) With Options.Client.Lazy it does no I/O, and the
// first call meets those errors instead.
func New(client *clientv3.Client, opt *Options) (*claim.Client, error) {
	if client == nil {
		return nil, errors.New("etcd: New: nil client")
	}
	o := cmp.Or(opt, &Options{})
	b, err := newBackend(client, nil, *o)
	if err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b, o.Client)
	if err != nil {
		return nil, fmt.Errorf("etcd: New: %w", err)
	}
	return c, nil
}

// backend is one client of an etcd cluster: a driver.Driver with every
// optional interface, safe for concurrent use.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	// cli is the etcd client: the caller's (New), or the one OpenURL
	// configured, made by connect on first use (conn.go).
	cli    atomic.Pointer[clientv3.Client]
	cfg    *clientv3.Config // nil: the caller's client (New), which Close leaves open
	kind   *kindCheck       // with cfg: what the server at the address speaks
	prefix string
	minTTL int64 // seconds
	maxVal int

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	dialing   *dialing             // the connect under way, if any
	refused   error                // the last connect's configuration error, if any
	refusedAt time.Time            // when it failed
	wg        sync.WaitGroup       // background goroutines
	watches   map[string]func()    // watched etcd key (lock or topic key) -> stop and wait
	lost      map[string]func()    // watched lock key -> its subscription's wake
	grantSubs map[string]*grantSub // grant key -> its subscription (queue.go)

	watchGaps  atomic.Int64 // broken watches (for tests)
	connLosses atomic.Int64 // connection failures that woke the watched keys (for tests)

	gcMu sync.Mutex
	gc   map[int64]gcLease // TTL class (seconds) -> shared value lease

	idleMu sync.Mutex
	idle   map[int64][]idleLease // TTL (seconds) -> etcd leases no key is on
	// tainted: etcd leases a write of unknown outcome (an Enqueue whose
	// answer was lost) may still land on, until it ends -> the lease's
	// expiry as last renewed: never kept idle (putIdle), revoked when
	// its waiter leaves (Dequeue).
	tainted map[clientv3.LeaseID]time.Time

	renewMu  sync.Mutex
	renewing pb.Lease_LeaseKeepAliveClient       // the renewal stream, if open (renew)
	waiting  map[clientv3.LeaseID][]chan renewal // renewals sent on it, not yet answered

	seenMu sync.Mutex
	seen   map[string]seenClaim // lock key -> its claim as this process knows it

	entMu   sync.Mutex
	entries map[string]idleLease // queue entry of a local waiter -> the etcd lease it is on (queue.go)
	// enqueuing: the queue entries of Enqueue calls under way -> whether
	// the grant watch saw the key granted to that entry's holder before
	// the call returned (queue.go).
	enqueuing map[string]bool

	qcMu    sync.Mutex
	qcaches map[string]*queueCache // lock key of a key held here fairly -> its queue (qcache.go)
	noCache bool                   // no queue caches (for tests)
}

var (
	_ driver.Pinger         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
	_ driver.Queuer         = (*backend)(nil)
)

// newBackend returns the driver of cli (New), or, with cli nil, of the
// client cfg configures, made on first use (OpenURL).
func newBackend(cli *clientv3.Client, cfg *clientv3.Config, o Options) (*backend, error) {
	prefix := cmp.Or(strings.TrimRight(o.Prefix, "/"), DefaultPrefix)
	if len(prefix) > MaxPrefixLen {
		return nil, fmt.Errorf("etcd: prefix of %d bytes: limit %d", len(prefix), MaxPrefixLen)
	}
	if o.MinTTL < 0 || o.MaxValueLen < 0 {
		return nil, errors.New("etcd: negative MinTTL or MaxValueLen")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &backend{
		cfg:       cfg,
		prefix:    prefix,
		minTTL:    ceilSeconds(cmp.Or(o.MinTTL, DefaultMinTTL)),
		maxVal:    cmp.Or(o.MaxValueLen, DefaultMaxValueLen),
		ctx:       ctx,
		cancel:    cancel,
		watches:   map[string]func(){},
		lost:      map[string]func(){},
		grantSubs: map[string]*grantSub{},
		gc:        map[int64]gcLease{},
		idle:      map[int64][]idleLease{},
		tainted:   map[clientv3.LeaseID]time.Time{},
		seen:      map[string]seenClaim{},
		entries:   map[string]idleLease{},
		enqueuing: map[string]bool{},
		qcaches:   map[string]*queueCache{},
		waiting:   map[clientv3.LeaseID][]chan renewal{},
	}
	if cfg != nil {
		// The client's own context ends with the driver: Close aborts a
		// connect under way.
		cfg.Context = ctx
	} else {
		b.cli.Store(cli)
		b.monitor(cli)
	}
	b.ClaimFunc = b.tryClaim
	b.CommitFunc = func(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration, release bool) error {
		return b.commit(ctx, l, v, ttl, true, release)
	}
	return b, nil
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Duration(b.minTTL) * time.Second,
		TTLGranularity: time.Second,
		MaxValueLen:    b.maxVal,
		Broadcast:      true,
		MaxBatch:       maxBatch,
	}
}

// Close implements driver.Driver: it stops every watch, background
// revocation and connect under way, and closes the etcd client if Open
// made it (a client given to New is the caller's to close).
func (b *backend) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	if cli := b.cli.Load(); cli != nil && b.cfg != nil {
		if err := cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// As implements driver.Aser for a **clientv3.Client. A Client opened with
// lazy=true has none until its first call has connected: As then returns
// false.
func (b *backend) As(i any) bool {
	cli := b.cli.Load()
	return cli != nil && driver.SetAs(i, cli)
}

func (b *backend) lockKey(key string) string    { return b.prefix + "/c/" + keys.Encode(key) }
func (b *backend) valueKey(key string) string   { return b.prefix + "/v/" + keys.Encode(key) }
func (b *backend) topicKey(topic string) string { return b.prefix + "/t/" + keys.Encode(topic) }

// notifySuffix makes the notify key of a claim key sort right after its
// lock key: [lock, lock+"\x01") holds exactly the two (encoded keys have no
// control characters).
const notifySuffix = "\x00n"

// ceilSeconds is d in whole seconds, rounded up; 0 if d <= 0.
func ceilSeconds(d time.Duration) int64 { return int64((max(d, 0) + time.Second - 1) / time.Second) }

// leaseSeconds is the TTL in whole seconds the server will grant for ttl.
func (b *backend) leaseSeconds(ttl time.Duration) int64 {
	return max(ceilSeconds(ttl), b.minTTL, 1)
}

// revokeLater revokes a lease this driver no longer needs, off the
// caller's path, on a goroutine Close waits for (none once closed). If it
// fails the lease simply expires.
func (b *backend) revokeLater(id clientv3.LeaseID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cli := b.cli.Load()
	if b.closed || cli == nil {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.ctx, revokeTimeout)
		defer cancel()
		_, _ = cli.Revoke(ctx, id)
	}()
}
