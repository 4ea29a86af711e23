package nats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers (TLS is a parameter:
// tls=true, as NATS servers speak TLS on their one port).
const Scheme = "nats"

// Defaults for Options.
const (
	DefaultBucket    = "stampede"
	DefaultPrefix    = "stampede"
	DefaultClockSkew = 50 * time.Millisecond
	// DefaultMaxValueLen keeps a record (value, lease fields, holder) and
	// its headers under the NATS server's default max_payload (1 MiB).
	DefaultMaxValueLen = 1<<20 - 1024
	// DefaultDialTimeout bounds each connection attempt (and the server's
	// INFO) of a URL-opened Client.
	DefaultDialTimeout = 5 * time.Second
	// MaxPrefixLen bounds Options.Prefix.
	MaxPrefixLen = 200
)

func init() {
	claim.Register(Scheme, &URLOpener{})
}

// Options configure the Client New returns. nil means defaults; every
// zero field is the documented default.
type Options struct {
	// Bucket is the JetStream KV bucket (default "stampede"). Open and
	// Ping create it (file storage, history 1, Replicas) if it does not
	// exist, unless NoCreate.
	Bucket string
	// Prefix is the key prefix inside the bucket, and of the topic
	// subjects (default "stampede"): dot-separated tokens of letters,
	// digits, '-', '_' and '/'. Every process sharing keys must use the
	// same bucket and prefix.
	Prefix string
	// ClockSkew is the largest clock difference assumed between clients:
	// a lease is taken over ClockSkew after its recorded expiry, or
	// sooner by a client that saw it being written (a TTL after that
	// first sighting; see the package doc's Clocks). Zero means
	// DefaultClockSkew (50 ms); negative means none.
	ClockSkew time.Duration
	// MaxValueLen is the largest value Commit and Set accept (default
	// DefaultMaxValueLen). Raise it only with the server's max_payload.
	MaxValueLen int
	// Replicas is the replication factor of a bucket the driver creates
	// (default 1).
	Replicas int
	// NoCreate makes a missing bucket a configuration error instead of
	// creating it.
	NoCreate bool
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one client of a NATS server.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	o        Options // defaults applied; ClockSkew >= 0
	enc      driver.KeyEncoder
	kvPrefix string // "$KV.BUCKET."
	topicPre string // "_stampede.BUCKET.PREFIX.t."

	dial func(ctx context.Context) (*natsgo.Conn, error) // nil: a caller's connection
	// leaderReads: reads go to the stream's leader even on a bucket of
	// one replica (tests; always so with more replicas).
	leaderReads bool
	ownsNC      bool

	connMu sync.Mutex // serialises connecting and setting up
	nc     *natsgo.Conn
	js     jetstream.JetStream
	kv     jetstream.KeyValue
	stream jetstream.Stream

	mu     sync.Mutex
	closed bool
	subs   map[string]*sub   // wake-up subscriptions, by key
	grants map[string]*sub   // grant subscriptions, by key
	topics map[string]*topic // by topic
	held   map[string]heldRec
	seen   driver.Sightings // the leases seen, for takeovers (heldUntil)
	stopWG sync.WaitGroup   // watcher goroutines
	// closing is cancelled by Close: a watch being made again (rewatch)
	// gives up at once, rather than Close waiting out its back-off.
	closing     context.Context
	stopClosing context.CancelFunc
	permErr     error     // the last permissions violation the server reported
	permAt      time.Time // when

	// live ends (cause errConnLost) when a URL-opened connection drops:
	// the requests sent on it before are then never answered (begin).
	liveMu     sync.Mutex
	live       context.Context
	liveCancel context.CancelCauseFunc
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
)

// New returns a Client using the caller's NATS connection (its servers,
// credentials and TLS). The Client's Close does not close the
// connection, and neither does a New that fails.
//
// New checks the server before it returns (claim.Connect: the driver's
// Ping, which finds or creates the bucket), within the operation timeout
// (Options.Client.OpTimeout, default claim.DefaultOpTimeout): a server
// without JetStream, a user without the rights the driver needs, or a
// bucket that is missing (with NoCreate) or has the wrong storage fails
// with an error wrapping claim.ErrConfig, a server that does not answer
// with one wrapping claim.ErrUnavailable. With Options.Client.Lazy it does
// no I/O, and the first call does the check instead.
//
// With a caller's connection the driver installs no connection handlers:
// a reconnection does not wake subscribers by itself (each key's watch, a
// JetStream ordered consumer, resumes where it left off, or, if the
// server lost the consumer, once nats.go has missed its heartbeats, about
// 10 s), and topic subscribers are not told of messages lost while
// disconnected.
func New(nc *natsgo.Conn, opt *Options) (*claim.Client, error) {
	if nc == nil {
		return nil, errors.New("nats: New: nil connection")
	}
	b, err := newBackend(*cmp.Or(opt, &Options{}))
	if err != nil {
		return nil, err
	}
	if err := b.setConn(nc); err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b, b.o.Client)
	if err != nil {
		return nil, fmt.Errorf("nats: New: %w", err)
	}
	return c, nil
}

func newBackend(o Options) (*backend, error) {
	o.Bucket = cmp.Or(o.Bucket, DefaultBucket)
	if !validBucket(o.Bucket) {
		return nil, fmt.Errorf("nats: bucket %q: want letters, digits, '-' and '_'", o.Bucket)
	}
	prefix, err := cleanPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	o.Prefix = prefix
	o.ClockSkew = max(cmp.Or(o.ClockSkew, DefaultClockSkew), 0)
	if o.MaxValueLen <= 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	b := &backend{
		o:        o,
		enc:      driver.KeyEncoder{MaxLen: 256, Safe: safeKeyByte},
		kvPrefix: "$KV." + o.Bucket + ".",
		topicPre: "_stampede." + o.Bucket + "." + prefix + ".t.",
		subs:     map[string]*sub{}, grants: map[string]*sub{}, topics: map[string]*topic{}, held: map[string]heldRec{},
	}
	b.live, b.liveCancel = context.WithCancelCause(context.Background())
	b.closing, b.stopClosing = context.WithCancel(context.Background())
	b.ClaimFunc = b.tryClaim
	b.CommitFunc = b.commit
	return b, nil
}

// setConn makes nc the driver's connection.
func (b *backend) setConn(nc *natsgo.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("nats: JetStream context: %w", err)
	}
	b.nc, b.js = nc, js
	return nil
}

func validBucket(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return s != ""
}

// safeKeyByte keeps readable keys to one subject token a KV key accepts.
func safeKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '='
}

func cleanPrefix(p string) (string, error) {
	if p == "" {
		return DefaultPrefix, nil
	}
	if len(p) > MaxPrefixLen {
		return "", fmt.Errorf("nats: prefix longer than %d bytes", MaxPrefixLen)
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return "", fmt.Errorf("nats: prefix %q: empty token", p)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c == '=' || !safeKeyByte(c) {
				return "", fmt.Errorf("nats: prefix %q: byte %q not allowed (letters, digits, '-', '_', '/' and '.' between tokens)", p, c)
			}
		}
	}
	return p, nil
}

// encode returns key's subject token: "=" and the key, or "_" and its
// hash (KeyEncoder's "#" is not allowed in a KV key).
func (b *backend) encode(key string) string {
	e := b.enc.Encode(key)
	if e[0] == '#' {
		return "_" + e[1:]
	}
	return e
}

// Key layout inside the bucket: PREFIX.TOKEN.r (the record: lease and
// value) and PREFIX.TOKEN.n (notifications).
func (b *backend) recKey(key string) string    { return b.o.Prefix + "." + b.encode(key) + ".r" }
func (b *backend) notifyKey(key string) string { return b.o.Prefix + "." + b.encode(key) + ".n" }
func (b *backend) watchKey(key string) string  { return b.o.Prefix + "." + b.encode(key) + ".*" }
func (b *backend) subject(kvKey string) string { return b.kvPrefix + kvKey }

// String describes the driver without secrets.
func (b *backend) String() string {
	return fmt.Sprintf("nats driver (bucket %q, prefix %q)", b.o.Bucket, b.o.Prefix)
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{Name: Scheme, Notify: driver.Push, AtomicCommit: true, DurableFence: true,
		MinTTL: time.Millisecond, TTLGranularity: time.Millisecond, MaxValueLen: b.o.MaxValueLen, Broadcast: true}
}

// Close implements driver.Driver: it stops the watches and topic
// subscriptions and, for a URL-opened Client, closes the connection.
func (b *backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.stopClosing()
	subs, topics := b.subs, b.topics
	for k, s := range b.grants {
		subs[k+"\x00grants"] = s
	}
	b.subs, b.grants, b.topics = map[string]*sub{}, map[string]*sub{}, map[string]*topic{}
	b.mu.Unlock()
	b.connMu.Lock()
	nc := b.nc
	b.connMu.Unlock()
	if nc != nil && b.ownsNC {
		// Closed first, the connection ends every subscription at once,
		// with no request to delete their consumers (the server drops
		// them once inactive).
		for _, s := range subs {
			s.mu.Lock()
			s.stopped = true
			s.mu.Unlock()
		}
		for _, t := range topics {
			t.mu.Lock()
			t.stopped = true
			t.mu.Unlock()
		}
		nc.Close()
	}
	for _, s := range subs {
		b.stopSub(s)
	}
	for _, t := range topics {
		t.stop()
	}
	b.stopWG.Wait()
	return nil
}

// As implements driver.Aser: it accepts a **nats.Conn
// (github.com/nats-io/nats.go) and a *jetstream.KeyValue (the bucket,
// once the driver has found it).
func (b *backend) As(i any) bool {
	b.connMu.Lock()
	nc, kv := b.nc, b.kv
	b.connMu.Unlock()
	if nc != nil && driver.SetAs(i, nc) {
		return true
	}
	return kv != nil && driver.SetAs(i, kv)
}
