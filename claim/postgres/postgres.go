package postgres

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers; "postgresql" is
// registered too.
const Scheme = "postgres"

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register("postgresql", &URLOpener{})
}

// Defaults and limits.
const (
	// DefaultMaxValueLen is the default Options.MaxValueLen (64 MiB).
	DefaultMaxValueLen = 64 << 20
	// MaxValueLimit is the largest MaxValueLen accepted: a bytea value and
	// a protocol message are limited to 1 GiB; 1 MiB is left for the rest
	// of the message.
	MaxValueLimit = 1<<30 - 1<<20
	// MinTTL is the shortest lease granted.
	MinTTL = time.Millisecond
	// maxKeyLen bounds encoded keys (btree entries must stay well under
	// PostgreSQL's ~2700-byte limit); longer keys are hashed.
	maxKeyLen = 256
	// maxIdent is PostgreSQL's identifier limit (NAMEDATALEN-1).
	maxIdent = 63
	// DefaultConnectTimeout bounds each connection attempt (TCP, TLS,
	// authentication) of a pool opened from a URL without connect_timeout,
	// and of a LISTEN connection whose configuration has no
	// ConnectTimeout. (pgxpool goes on connecting in the background when
	// the caller gives up, 2 minutes at most by default.)
	DefaultConnectTimeout = claim.DefaultOpTimeout
)

// Options configure a Client. nil means defaults; every zero field is a
// documented default.
type Options struct {
	// Schema holds the tables (default "public"). It is created if it
	// does not exist (needs CREATE on the database then).
	Schema string
	// TablePrefix names the tables TablePrefix+"claims",
	// TablePrefix+"values" and TablePrefix+"queue" (default
	// "stampede_"). Clients with different Schema or TablePrefix share
	// nothing, not even wake-ups.
	TablePrefix string
	// MaxValueLen limits values (default DefaultMaxValueLen, at most
	// MaxValueLimit).
	MaxValueLen int
	// SkipMigrate, if true, never creates the tables (at New's and Open's
	// check, or on first use): missing tables are then a configuration
	// error (claim.ErrConfig). Create them with Migrate (from a Client
	// made lazily) or with your migration tool.
	SkipMigrate bool
	// SweepInterval is the least time between two background deletions
	// of expired values by this Client, started after a Set or Commit
	// (default one minute; negative: never sweep).
	SweepInterval time.Duration
	// SweepLimit is the most expired values one sweep deletes (default 1000).
	SweepLimit int
	// HealthInterval is how long the LISTEN connection may stay silent
	// before it is pinged, so a dead connection is found; a ping
	// unanswered for as long again replaces the connection (default 30s).
	HealthInterval time.Duration
	// ListenConfig, if set, is used for the LISTEN connection instead of
	// the pool's ConnConfig: point it at the server directly when the
	// pool goes through a transaction-pooling proxy (PgBouncer), which
	// cannot hold a LISTEN. The pool's BeforeConnect hook is still run.
	ListenConfig *pgx.ConnConfig
	// AsyncRelease, if true, commits Release and CommitRelease with
	// synchronous_commit=off (for that statement only), so the NOTIFY
	// that wakes the next holder does not wait for the server's WAL flush
	// (on a server with fsync=on, one disk flush less on every handoff).
	// A server crash may then lose releases (and CommitRelease's value)
	// from the last moments (up to 3 × wal_writer_delay, 600 ms by
	// default): such a key stays held until its lease expires. Claims,
	// Extend and Commit stay synchronous, and a claim's commit makes every
	// earlier release durable, so tokens and exclusion are unaffected.
	AsyncRelease bool
	// NoValueWake, if true, keeps values out of wake-ups: a CommitRelease
	// sends the key alone in its NOTIFY, and the listener takes no value
	// from a payload that carries one (sent by a Client without
	// NoValueWake, or by anyone else), so every woken waiter reads the
	// key (one round trip more per waiting process). PostgreSQL has no privilege for NOTIFY: any role
	// that can connect to the database can send a payload on the
	// driver's channel, and without NoValueWake a forged value payload
	// is a value a waiter may answer with, without reading the tables.
	NoValueWake bool
	// Client configures the Client New returns.
	Client *claim.Options
}

func (o *Options) fill() error {
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.TablePrefix == "" {
		o.TablePrefix = "stampede_"
	}
	if o.MaxValueLen == 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.MaxValueLen < 0 || o.MaxValueLen > MaxValueLimit {
		return fmt.Errorf("MaxValueLen %d out of range 1..%d", o.MaxValueLen, MaxValueLimit)
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = time.Minute
	}
	if o.SweepLimit <= 0 {
		o.SweepLimit = 1000
	}
	if o.HealthInterval <= 0 {
		o.HealthInterval = 30 * time.Second
	}
	if len(o.Schema) > maxIdent || strings.ContainsRune(o.Schema, 0) {
		return fmt.Errorf("schema %q: want at most %d bytes, no NUL", o.Schema, maxIdent)
	}
	if l := len(o.TablePrefix) + len("values_expires_idx"); l > maxIdent || strings.ContainsRune(o.TablePrefix, 0) {
		return fmt.Errorf("table prefix %q: want at most %d bytes, no NUL", o.TablePrefix, maxIdent-len("values_expires_idx"))
	}
	return nil
}

// backend is one client of a PostgreSQL database: a driver.Driver with
// every optional interface, safe for concurrent use.
type backend struct {
	driver.ClaimFunc // b.tryClaim: TryClaim and TryClaimRead

	pool    *pgxpool.Pool
	ownPool bool
	opt     Options
	keys    driver.KeyEncoder
	q       queries // schema.go
	channel string
	lockID  int64
	// chunkBytes bounds the values of one CommitReleaseMany statement
	// (maxChunkBytes; tests lower it).
	chunkBytes int

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	migrated atomic.Bool
	migSem   chan struct{}

	bgMu      sync.Mutex // guards wg.Add against Close
	wg        sync.WaitGroup
	lastSweep atomic.Int64

	l listener // notify.go
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.Queuer         = (*backend)(nil)
)

// New returns a Client using pool for claims and values. The pool stays
// the caller's: neither the Client's Close nor a failed New closes it.
// The LISTEN connection is made separately, from pool.Config(), when the
// first subscription needs it.
//
// New checks the server before it returns (claim.Connect: the Client's
// Ping, within the operation timeout, Options.Client.OpTimeout): it
// takes a connection from the pool, and reads whether the tables exist
// (creating them unless SkipMigrate) and whether the role may use them.
// A wrong password, a missing database, schema or table, a missing
// privilege or a server that is not PostgreSQL fail it with an error
// wrapping claim.ErrConfig; a server that cannot be reached, with one
// wrapping claim.ErrUnavailable. With Options.Client.Lazy, New does no
// I/O: the first call connects and migrates.
func New(pool *pgxpool.Pool, opt *Options) (*claim.Client, error) {
	b, err := newBackend(pool, opt)
	if err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b, b.opt.Client)
	if err != nil {
		return nil, fmt.Errorf("postgres: New: %w", err)
	}
	return c, nil
}

func newBackend(pool *pgxpool.Pool, opt *Options) (*backend, error) {
	if pool == nil {
		return nil, errors.New("postgres: New: nil pool")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if err := o.fill(); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	b := &backend{
		pool:       pool,
		opt:        o,
		keys:       driver.KeyEncoder{MaxLen: maxKeyLen, Safe: driver.PrintableASCII},
		q:          buildQueries(o),
		migSem:     make(chan struct{}, 1),
		chunkBytes: maxChunkBytes,
	}
	b.ClaimFunc = b.tryClaim
	b.ctx, b.cancel = context.WithCancel(context.Background())
	ns := o.Schema + "." + o.TablePrefix
	b.channel = ns + "events"
	if len(b.channel) > maxIdent {
		h := fnv.New128a()
		h.Write([]byte(ns))
		b.channel = "stampede_" + hex.EncodeToString(h.Sum(nil))
	}
	h := fnv.New64a()
	h.Write([]byte("stampede-migrate:" + ns))
	b.lockID = int64(h.Sum64())
	b.l.init()
	return b, nil
}

// of returns the driver behind a Client that New or claim.Open made.
func of(op string, c *claim.Client) (*backend, error) {
	b, ok := c.Driver().(*backend)
	if !ok {
		return nil, fmt.Errorf("postgres: %s: not a postgres Client (%s)", op, c.Features().Name)
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
		MinTTL:         MinTTL,
		TTLGranularity: time.Microsecond,
		MaxValueLen:    b.opt.MaxValueLen,
		Broadcast:      true,
		MaxBatch:       MaxBatch,
	}
}

// goBackground runs f on a goroutine that Close waits for; it does
// nothing once the driver is closed.
func (b *backend) goBackground(f func()) {
	b.bgMu.Lock()
	defer b.bgMu.Unlock()
	if b.ctx.Err() != nil {
		return
	}
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		f()
	}()
}

// Close implements driver.Driver. It closes the LISTEN connection, waits
// for the background sweep and, for a Client opened by URL, closes its
// pool.
func (b *backend) Close() error {
	b.bgMu.Lock()
	b.cancel()
	b.bgMu.Unlock()
	b.wg.Wait()
	if b.ownPool {
		b.pool.Close()
	}
	return nil
}

// As implements driver.Aser: it sets a **pgxpool.Pool to the pool.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.pool) }
