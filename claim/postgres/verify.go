package postgres

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/stampede-go/stampede/claim/driver"
)

// Ping implements driver.Pinger: one statement (after the pool's connect,
// which checks the server kind, the credentials and the database) reads
// whether the tables exist and whether this role may use them. Missing
// tables are created unless Options.SkipMigrate, when they are a
// configuration error, as is a role lacking a privilege on them.
func (b *backend) Ping(ctx context.Context) error {
	return b.classify(b.ping(ctx))
}

func (b *backend) ping(ctx context.Context) error {
	exist, usable, role, err := b.tables(ctx)
	switch {
	case err != nil:
		return err
	case !exist && b.opt.SkipMigrate:
		return driver.Misconfigured(fmt.Errorf("tables %s, %s and %s (and their indexes) do not all exist, and migrate=false: create them with postgres.Migrate or your migration tool",
			b.q.tableArgs[0], b.q.tableArgs[1], b.q.tableArgs[3]))
	case !exist:
		b.migrated.Store(false)
		return b.ensure(ctx)
	case !usable:
		return driver.Misconfigured(fmt.Errorf("role %q lacks SELECT, INSERT or UPDATE on %s, or SELECT, INSERT, UPDATE or DELETE on %s or %s",
			role, b.q.tableArgs[0], b.q.tableArgs[1], b.q.tableArgs[3]))
	}
	b.migrated.Store(true)
	return nil
}

// configCodes are the SQLSTATEs of configuration errors: waiting does
// not fix them.
var configCodes = map[string]bool{
	"28P01": true, // invalid_password
	"28000": true, // invalid_authorization_specification (no pg_hba.conf entry, ...)
	"3D000": true, // invalid_catalog_name: no such database
	"3F000": true, // invalid_schema_name
	"42P01": true, // undefined_table
	"42501": true, // insufficient_privilege
}

// undefinedTable is the SQLSTATE of a missing table.
const undefinedTable = "42P01"

// classify marks err as a configuration error (driver.Misconfigured, the
// *pgconn.PgError or the dial's error still underneath) if its SQLSTATE
// is one of configCodes, if the server is not a PostgreSQL server, or if
// the TLS handshake was refused (driver.TLSRefused).
// After a missing table, the next call checks the tables again (and
// creates them, unless SkipMigrate).
func (b *backend) classify(err error) error {
	if err == nil {
		return nil
	}
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && configCodes[pe.Code]:
		if pe.Code == undefinedTable {
			b.migrated.Store(false)
		}
		return driver.Misconfigured(err)
	case errors.Is(err, errNotPostgres), driver.TLSRefused(err):
		return driver.Misconfigured(err)
	}
	return err
}

// errNotPostgres is the error of a connection whose server's first answer
// is not PostgreSQL's.
var errNotPostgres = errors.New("not a PostgreSQL server")

// pgFirst are the bytes a PostgreSQL server's first answer on a
// connection can start with: 'S' or 'N' (to the SSLRequest), 'G' (to a
// GSSENCRequest), 'R', 'E' or 'v' (to the startup message:
// authentication, an error, a protocol version), and a TLS record
// (handshake or alert, with sslnegotiation=direct).
const pgFirst = "SNGREv\x15\x16"

// sniffing wraps dial so that a connection whose server answers with
// anything else fails with errNotPostgres (instead of pgx reading a
// length out of, say, "HTTP/1.1 400", and failing on it with a message
// that does not say what is wrong). The pools of URLs and every LISTEN
// connection dial through it.
func sniffing(dial pgconn.DialFunc) pgconn.DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &sniffConn{Conn: c, addr: addr}, nil
	}
}

// sniffConn checks the first byte its server sends (see sniffing).
type sniffConn struct {
	net.Conn
	addr string
	seen bool // a byte was read: pgconn reads from one goroutine at a time
}

func (c *sniffConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && !c.seen {
		c.seen = true
		if strings.IndexByte(pgFirst, p[0]) < 0 {
			c.Conn.Close()
			return 0, fmt.Errorf("%w at %s: it answered %q", errNotPostgres, c.addr, p[:min(n, 16)])
		}
	}
	return n, err
}

// NetConn returns the connection under c, for ShouldPing's look at the
// socket.
func (c *sniffConn) NetConn() net.Conn { return c.Conn }
