package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers; "mariadb" is
// registered too.
const Scheme = "mysql"

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register("mariadb", &URLOpener{})
}

// Defaults and limits.
const (
	// DefaultMaxValueLen is the default Options.MaxValueLen (4 MiB): with
	// the server's default max_allowed_packet (16 MiB in MariaDB 10.11, 64
	// MiB in MySQL 8) a value goes through even when escaping doubles it
	// (parameters are sent in the statement's text).
	DefaultMaxValueLen = 4 << 20
	// MaxValueLimit is the largest MaxValueLen accepted (a LONGBLOB holds
	// 4 GiB, a packet at most 1 GiB; values are escaped into the
	// statement, which may double them).
	MaxValueLimit = 256 << 20
	// MinTTL is the shortest lease granted.
	MinTTL = time.Millisecond
	// maxKeyLen bounds encoded keys: the key columns are VARBINARY(255);
	// longer keys are hashed.
	maxKeyLen = 255
	// maxIdent is MySQL's identifier limit.
	maxIdent = 64
	// DefaultDialTimeout bounds each connection attempt (TCP connect and
	// the server's greeting) of a pool opened from a URL without
	// dial_timeout. TLS, authentication and every statement are bounded
	// by the call's context (the Client's operation timeout).
	DefaultDialTimeout = claim.DefaultOpTimeout
)

// Options configure a Client. nil means defaults; every zero field is a
// documented default.
type Options struct {
	// TablePrefix names the tables TablePrefix+"claims",
	// TablePrefix+"values" and TablePrefix+"queue" in the connection's
	// database (default "stampede_"). Clients with different prefixes
	// share nothing, not even wake-ups.
	TablePrefix string
	// MaxValueLen limits values (default DefaultMaxValueLen, at most
	// MaxValueLimit). The check at open refuses a MaxValueLen the
	// server's max_allowed_packet cannot carry (claim.ErrConfig).
	MaxValueLen int
	// SkipMigrate, if true, never creates the tables: missing tables are
	// then a configuration error (claim.ErrConfig).
	SkipMigrate bool
	// SweepInterval is the least time between two background deletions
	// of expired values by this Client, started after a Set or Commit
	// (default one minute; negative: never sweep).
	SweepInterval time.Duration
	// SweepLimit is the most expired values one sweep deletes (default 1000).
	SweepLimit int
	// Poll tunes the polling of wake-ups (driver.PollOptions; nil:
	// defaults, 2 ms after a change doubling up to 50 ms).
	Poll *driver.PollOptions
	// Client configures the Client New returns.
	Client *claim.Options
}

func (o *Options) fill() error {
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
	if l := len(o.TablePrefix) + len("claims"); l > maxIdent {
		return fmt.Errorf("table prefix %q: want at most %d bytes", o.TablePrefix, maxIdent-len("claims"))
	}
	for _, r := range o.TablePrefix {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '$') {
			return fmt.Errorf("table prefix %q: want letters, digits, '_' and '$' only", o.TablePrefix)
		}
	}
	return nil
}

// backend is one client of a MySQL or MariaDB database: a driver.Driver,
// safe for concurrent use.
type backend struct {
	driver.ClaimFunc // b.tryClaim: TryClaim and TryClaimRead

	db    *sql.DB
	ownDB bool
	opt   Options
	keys  driver.KeyEncoder
	q     queries  // schema.go
	qq    queueSQL // queue.go
	poll  *driver.Poller

	grants *driver.Poller       // SubscribeGrants (queue.go)
	gmu    sync.Mutex           // guards gsubs
	gsubs  map[string]*grantSub // key -> its grant subscription

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc

	migrated atomic.Bool
	migSem   chan struct{}

	bgMu      sync.Mutex // guards wg.Add against Close
	wg        sync.WaitGroup
	lastSweep atomic.Int64
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Pinger         = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.Queuer         = (*backend)(nil)
	_ driver.PollCounter    = (*backend)(nil)
)

// New returns a Client using db for claims and values. db stays the
// caller's: neither the Client's Close nor a failed New closes it. db
// must be a go-sql-driver/mysql pool whose configuration has
// InterpolateParams (one round trip per statement instead of a prepare,
// an execute and a close) and ClientFoundRows (an affected-rows count
// that counts the rows matched, not only those changed); ParseURL's
// Config has both. New cannot see db's configuration: without
// ClientFoundRows, a Commit that rewrites the same value with no TTL, or
// an Extend to the same microsecond, reports ErrLost although it
// matched; without InterpolateParams every call costs two more round
// trips. Give it a small innodb_lock_wait_timeout too (Config.Params; a
// URL's lock_wait_timeout).
//
// New checks the server before it returns (claim.Connect: the Client's
// Ping, within the operation timeout): a connection (server kind, TLS,
// credentials, database), the tables (created unless SkipMigrate) and
// the user's rights on them. A wrong password, a missing database or
// table, a missing privilege or a server that is not MySQL fail it with
// an error wrapping claim.ErrConfig; a server that cannot be reached,
// with one wrapping claim.ErrUnavailable. With Options.Client.Lazy, New
// does no I/O.
func New(db *sql.DB, opt *Options) (*claim.Client, error) {
	b, err := newBackend(db, opt)
	if err != nil {
		return nil, err
	}
	c, err := claim.Connect(context.Background(), b, b.opt.Client)
	if err != nil {
		return nil, fmt.Errorf("mysql: New: %w", err)
	}
	return c, nil
}

func newBackend(db *sql.DB, opt *Options) (*backend, error) {
	if db == nil {
		return nil, errors.New("mysql: New: nil db")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if err := o.fill(); err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	b := &backend{
		db:     db,
		opt:    o,
		keys:   driver.KeyEncoder{MaxLen: maxKeyLen, Safe: driver.PrintableASCII},
		q:      buildQueries(o.TablePrefix),
		migSem: make(chan struct{}, 1),
	}
	b.ClaimFunc = b.tryClaim
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.poll = driver.NewBatchPoller(b.pollState, b.pollStates, pollBatchKeys, o.Poll)
	b.grants = driver.NewPoller(b.readGrant, o.Poll)
	b.gsubs = map[string]*grantSub{}
	b.qq = buildQueueSQL(b.q.claims, b.q.queue)
	return b, nil
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Poll,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         MinTTL,
		TTLGranularity: time.Microsecond,
		MaxValueLen:    b.opt.MaxValueLen,
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

// Close implements driver.Driver. It stops the pollers, waits for the
// background sweep and, for a Client opened by URL, closes its pool.
func (b *backend) Close() error {
	b.bgMu.Lock()
	b.cancel()
	b.bgMu.Unlock()
	b.poll.Close()
	b.grants.Close()
	b.wg.Wait()
	if b.ownDB {
		return b.db.Close()
	}
	return nil
}

// As implements driver.Aser: it sets a **sql.DB to the pool.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.db) }

// PollReads implements driver.PollCounter: the reads of the wake-up and
// grant polls.
func (b *backend) PollReads() uint64 { return b.poll.Reads() + b.grants.Reads() }
