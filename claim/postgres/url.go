package postgres

import (
	"context"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens postgres:// and postgresql:// URLs (see the package
// documentation).
type URLOpener struct{}

// OpenURL implements driver.URLOpener. It makes the pool and does no
// I/O (unless pool_min_conns makes pgxpool dial in the background): the
// Client checks the server next (Ping), unless lazy=true. Connection
// attempts are bounded by connect_timeout, DefaultConnectTimeout if the
// URL has none.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	opt, connString, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	secret, _ := u.User.Password()
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, scrub("postgres: parse URL", err, secret)
	}
	cfg.ShouldPing = ShouldPing
	if cfg.ConnConfig.ConnectTimeout <= 0 {
		cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout
	}
	cfg.ConnConfig.DialFunc = sniffing(cfg.ConnConfig.DialFunc)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, scrub("postgres: open pool", err, secret)
	}
	b, err := newBackend(pool, opt)
	if err != nil {
		pool.Close()
		return nil, err
	}
	b.ownPool = true
	return b, nil
}

// scrub reports err under op, with secret masked should the driver have
// echoed it.
func scrub(op string, err error, secret string) error {
	if secret != "" && strings.Contains(err.Error(), secret) {
		return fmt.Errorf("%s: %s", op, strings.ReplaceAll(err.Error(), secret, "xxxxx"))
	}
	return fmt.Errorf("%s: %w", op, err)
}

// ourParams are the query parameters this package reads (the last two
// are the Client's: Options.Client); the others are libpq's, for pgx.
var ourParams = []string{"schema", "prefix", "maxvalue", "migrate", "sweep", "async_release", "value_wake", "op_timeout", "lazy"}

// misnamed are parameters a postgres URL spells otherwise: this package's
// names before they lost their stampede_ prefix, and the TLS and timeout
// parameters of the other backends' URLs (a postgres URL is a libpq URL).
var misnamed = [][2]string{
	{"stampede_schema", "schema"}, {"stampede_prefix", "prefix"}, {"stampede_maxvalue", "maxvalue"},
	{"stampede_migrate", "migrate"}, {"stampede_sweep", "sweep"}, {"stampede_async_release", "async_release"},
	{"cacert", "sslrootcert"}, {"cert", "sslcert"}, {"key", "sslkey"},
	{"servername", "the URL's host"}, {"skip_verify", "sslmode=require"}, {"dial_timeout", "connect_timeout"},
}

// ParseURL splits a postgres:// URL into this package's Options (with
// the Client's op_timeout and lazy in Options.Client, if given) and the
// connection string for pgx (the URL without those parameters; see the
// package documentation, also for what is an error).
func ParseURL(u *url.URL) (*Options, string, error) {
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, "", fmt.Errorf("postgres: URL scheme %q: want postgres or postgresql", u.Scheme)
	}
	secret, _ := u.User.Password()
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return nil, "", scrub("postgres", driver.NewParams(u).Err(), secret)
	}
	for _, n := range misnamed {
		if q.Has(n[0]) {
			return nil, "", fmt.Errorf("postgres: URL parameter %q: use %s", n[0], n[1])
		}
	}
	ours := url.Values{}
	for _, k := range ourParams {
		if v, ok := q[k]; ok {
			ours[k] = v
			delete(q, k)
		}
	}
	p := driver.NewParams(&url.URL{RawQuery: ours.Encode()})
	o := &Options{
		Schema:        p.String("schema", ""),
		TablePrefix:   p.String("prefix", ""),
		MaxValueLen:   p.Int("maxvalue", 0),
		SkipMigrate:   !p.Bool("migrate", true),
		SweepInterval: p.Duration("sweep", 0),
		AsyncRelease:  p.Bool("async_release", false),
		NoValueWake:   !p.Bool("value_wake", true),
	}
	if ours.Has("op_timeout") || ours.Has("lazy") {
		o.Client = &claim.Options{OpTimeout: p.Duration("op_timeout", 0), Lazy: p.Bool("lazy", false)}
	}
	if err := p.Err(); err != nil {
		return nil, "", scrub("postgres", err, secret)
	}
	if ours.Has("sweep") && o.SweepInterval == 0 {
		o.SweepInterval = -1 // sweep=0 disables sweeping
	}
	c := *u
	c.RawQuery = q.Encode()
	return o, c.String(), nil
}
