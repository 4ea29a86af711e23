package mysql

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens mysql:// and mariadb:// URLs (see the package
// documentation).
type URLOpener struct{}

// OpenURL implements driver.URLOpener. It makes the pool and does no
// I/O: the Client checks the server next (Ping), unless lazy=true.
func (*URLOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	opt, cfg, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, fmt.Errorf("mysql: open: %w", err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(opt.maxConns)
	db.SetMaxIdleConns(opt.maxConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	b, err := newBackend(db, &opt.Options)
	if err != nil {
		db.Close()
		return nil, err
	}
	b.ownDB = true
	return b, nil
}

// urlOptions are a URL's Options plus the pool's size.
type urlOptions struct {
	Options
	maxConns int
}

// DefaultLockWaitTimeout is the innodb_lock_wait_timeout of the
// connections of a pool opened by URL without lock_wait_timeout.
const DefaultLockWaitTimeout = 5 * time.Second

// DefaultMaxConns is the pool size of a Client opened by URL without
// max_conns.
const DefaultMaxConns = 32

// ParseURL reads a mysql:// (or mariadb://) URL into this package's
// Options (with the Client's lazy in Options.Client) and the
// go-sql-driver configuration of the pool (see the package
// documentation for the parameters). The configuration always has
// InterpolateParams, ClientFoundRows and a dialer that recognises a
// server of another kind. Its errors never contain the password.
func ParseURL(u *url.URL) (*Options, *gomysql.Config, error) {
	o, cfg, err := parseURL(u)
	if err != nil {
		return nil, nil, err
	}
	return &o.Options, cfg, nil
}

func parseURL(u *url.URL) (*urlOptions, *gomysql.Config, error) {
	if u.Scheme != "mysql" && u.Scheme != "mariadb" {
		return nil, nil, fmt.Errorf("mysql: URL scheme %q: want mysql or mariadb", u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		return nil, nil, errors.New("mysql: URL names no host (mysql://user:pass@host:3306/database)")
	}
	db := strings.TrimPrefix(u.Path, "/")
	if db == "" || strings.Contains(db, "/") {
		return nil, nil, fmt.Errorf("mysql: URL path %q: want /DATABASE", u.Path)
	}
	p := driver.NewParams(u)
	o := &urlOptions{Options: Options{
		TablePrefix:   p.String("prefix", ""),
		MaxValueLen:   p.Int("maxvalue", 0),
		SkipMigrate:   !p.Bool("migrate", true),
		SweepInterval: p.Duration("sweep", 0),
	}}
	if p.Has("sweep") && o.SweepInterval == 0 {
		o.SweepInterval = -1 // sweep=0 disables sweeping
	}
	pollMin, pollMax, fixed := p.Duration("poll_min", 0), p.Duration("poll_max", 0), !p.Bool("poll_learn", true)
	if pollMin > 0 || pollMax > 0 || fixed {
		o.Poll = &driver.PollOptions{Min: pollMin, Max: pollMax, NoHoldEstimate: fixed}
	}
	o.maxConns = p.Int("max_conns", DefaultMaxConns)
	dial := p.Duration("dial_timeout", DefaultDialTimeout)
	lockWait := p.Duration("lock_wait_timeout", DefaultLockWaitTimeout)
	tc, tlsErr := p.TLS(p.Bool("tls", false), u.Hostname())
	if err := cmp.Or(p.Err(), tlsErr); err != nil {
		return nil, nil, fmt.Errorf("mysql: %w", err)
	}
	if lockWait < time.Second || lockWait%time.Second != 0 {
		return nil, nil, fmt.Errorf("mysql: URL parameter lock_wait_timeout=%s: want whole seconds, at least 1s", lockWait)
	}
	if o.maxConns == 0 {
		return nil, nil, errors.New("mysql: URL parameter max_conns=0: want at least 1")
	}
	if err := o.fill(); err != nil {
		return nil, nil, fmt.Errorf("mysql: %w", err)
	}
	cfg := gomysql.NewConfig()
	cfg.Net = "tcp"
	cfg.Addr = u.Host
	if u.Port() == "" {
		cfg.Addr = net.JoinHostPort(u.Hostname(), "3306")
	}
	cfg.DBName = db
	if u.User != nil {
		cfg.User = u.User.Username()
		cfg.Passwd, _ = u.User.Password()
	}
	cfg.TLS = tc
	cfg.Timeout = dial
	cfg.InterpolateParams = true
	// Bound the server's own wait for a row lock: a statement the client
	// gave up on (its context ended, the connection closed) would
	// otherwise wait, and keep the locks it took, for the server's
	// default 50 s. Set once per connection, when it is made.
	cfg.Params = map[string]string{"innodb_lock_wait_timeout": strconv.Itoa(int(lockWait / time.Second))}
	cfg.ClientFoundRows = true
	cfg.MaxAllowedPacket = 0 // read the server's
	// go-sql-driver logs some failures (a dropped connection) to stderr
	// as well as returning them: the Client reports them, once.
	cfg.Logger = &gomysql.NopLogger{}
	var d net.Dialer
	cfg.DialFunc = sniffing(d.DialContext)
	return o, cfg, nil
}
