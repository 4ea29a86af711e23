package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
)

// URLOpener opens postgres:// and postgresql:// URLs (see the package
// documentation). The Backend owns its pool and closes it on Close.
type URLOpener struct{}

// OpenBackendURL implements claim.URLOpener. It connects once: it creates
// the tables if needed (or pings, with stampede_migrate=false).
func (*URLOpener) OpenBackendURL(ctx context.Context, u *url.URL) (claim.Backend, error) {
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
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, scrub("postgres: open pool", err, secret)
	}
	b, err := New(pool, opt)
	if err != nil {
		pool.Close()
		return nil, err
	}
	b.ownPool = true
	if opt.SkipMigrate {
		err = pool.Ping(ctx)
	} else {
		err = b.ensure(ctx)
	}
	if err != nil {
		b.Close()
		return nil, scrub("postgres: open", err, secret)
	}
	return b, nil
}

// scrub reports err under op, with secret masked should the driver have
// echoed it.
func scrub(op string, err error, secret string) error {
	if secret != "" && strings.Contains(err.Error(), secret) {
		msg := strings.ReplaceAll(err.Error(), secret, "xxxxx")
		if op == "" {
			return errors.New(msg)
		}
		return fmt.Errorf("%s: %s", op, msg)
	}
	if op == "" {
		return err
	}
	return fmt.Errorf("%s: %w", op, err)
}

// ParseURL splits a postgres:// URL into this package's Options (from the
// stampede_* query parameters) and the connection string for pgx (the URL
// without them). An unknown stampede_* parameter is an error.
func ParseURL(u *url.URL) (*Options, string, error) {
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, "", fmt.Errorf("postgres: URL scheme %q: want postgres or postgresql", u.Scheme)
	}
	q := u.Query()
	ours := url.Values{}
	for k, v := range q {
		if strings.HasPrefix(k, "stampede_") {
			ours[k] = v
			delete(q, k)
		}
	}
	p := claim.NewParams(&url.URL{RawQuery: ours.Encode()})
	o := &Options{
		Schema:       p.String("stampede_schema", ""),
		TablePrefix:  p.String("stampede_prefix", ""),
		MaxValueLen:  p.Int("stampede_maxvalue", 0),
		SkipMigrate:  !p.Bool("stampede_migrate", true),
		AsyncRelease: p.Bool("stampede_async_release", false),
	}
	o.SweepInterval = p.Duration("stampede_sweep", 0)
	if err := p.Err(); err != nil {
		secret, _ := u.User.Password()
		return nil, "", scrub("postgres", err, secret)
	}
	if _, ok := ours["stampede_sweep"]; ok && o.SweepInterval == 0 {
		o.SweepInterval = -1 // stampede_sweep=0 disables sweeping
	}
	c := *u
	c.RawQuery = q.Encode()
	return o, c.String(), nil
}
