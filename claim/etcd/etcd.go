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

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
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
	// DefaultDialTimeout bounds dialling and authenticating, and the round
	// trip in which claim.Open learns the server's minimum lease TTL, when
	// a URL gives no dial_timeout.
	DefaultDialTimeout = 5 * time.Second
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
// auth, endpoints, dial options are the caller's). It does no I/O. Closing
// the Client does not close client.
func New(client *clientv3.Client, opt *Options) (*claim.Client, error) {
	if client == nil {
		return nil, errors.New("etcd: New: nil client")
	}
	o := cmp.Or(opt, &Options{})
	b, err := newBackend(client, *o, false)
	if err != nil {
		return nil, err
	}
	return claim.NewClient(b, o.Client), nil
}

// backend is one client of an etcd cluster: a driver.Driver with every
// optional interface, safe for concurrent use.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	cli    *clientv3.Client
	own    bool // Close closes cli
	prefix string
	minTTL int64 // seconds
	maxVal int

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	mu      sync.Mutex
	closed  bool
	wg      sync.WaitGroup    // background goroutines
	watches map[string]func() // watched etcd key (lock or topic key) -> stop and wait

	watchGaps atomic.Int64 // broken watches (for tests)

	gcMu sync.Mutex
	gc   map[int64]gcLease // TTL class (seconds) -> shared value lease
}

var (
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
)

func newBackend(cli *clientv3.Client, o Options, own bool) (*backend, error) {
	prefix := cmp.Or(strings.TrimRight(o.Prefix, "/"), DefaultPrefix)
	if len(prefix) > MaxPrefixLen {
		return nil, fmt.Errorf("etcd: prefix of %d bytes: limit %d", len(prefix), MaxPrefixLen)
	}
	if o.MinTTL < 0 || o.MaxValueLen < 0 {
		return nil, errors.New("etcd: negative MinTTL or MaxValueLen")
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &backend{
		cli:     cli,
		own:     own,
		prefix:  prefix,
		minTTL:  ceilSeconds(cmp.Or(o.MinTTL, DefaultMinTTL)),
		maxVal:  cmp.Or(o.MaxValueLen, DefaultMaxValueLen),
		ctx:     ctx,
		cancel:  cancel,
		watches: map[string]func(){},
		gc:      map[int64]gcLease{},
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
	}
}

// Close implements driver.Driver: it stops every watch and background
// revocation, and closes the etcd client if Open made it (a client given
// to New is the caller's to close).
func (b *backend) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	b.cancel()
	b.wg.Wait()
	if b.own {
		if err := b.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	return nil
}

// As implements driver.Aser for a **clientv3.Client.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.cli) }

func (b *backend) lockKey(key string) string    { return b.prefix + "/c/" + keys.Encode(key) }
func (b *backend) valueKey(key string) string   { return b.prefix + "/v/" + keys.Encode(key) }
func (b *backend) topicKey(topic string) string { return b.prefix + "/t/" + keys.Encode(topic) }

// notifySuffix makes the notify key of a claim key sort right after its
// lock key: [lock, lock+"\x01") holds exactly the two (encoded keys have no
// control characters).
const notifySuffix = "\x00n"

// fail maps the error of a call made with ctx: nil stays nil; ctx's error
// if ctx is done (the call was abandoned); etcd's request-too-large wraps
// driver.ErrTooLarge.
func fail(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if c := ctx.Err(); c != nil {
		return c
	}
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrGRPCRequestTooLarge) {
		return fmt.Errorf("%w: %w", driver.ErrTooLarge, err)
	}
	return err
}

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
	if b.closed {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		ctx, cancel := context.WithTimeout(b.ctx, revokeTimeout)
		defer cancel()
		_, _ = b.cli.Revoke(ctx, id)
	}()
}
