package mysql

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim/driver"
)

// Ping implements driver.Pinger: a connection from the pool (the server
// kind, TLS, the credentials, the database), one statement that reads
// whether the tables exist, the server's version and max_allowed_packet,
// and one that exercises every privilege the driver needs on the tables
// without changing anything. Missing tables are created unless
// SkipMigrate, when they are a configuration error, as are a missing
// privilege, a server that is not MariaDB 10.5 or later, and a
// max_allowed_packet too small for MaxValueLen.
func (b *backend) Ping(ctx context.Context) error {
	b.migrated.Store(false)
	return b.classify(b.ensure(ctx))
}

// check is Ping's check; ensure runs it.
func (b *backend) check(ctx context.Context) error {
	var (
		n       int
		version string
		packet  int64
		hasDB   bool
	)
	p := b.opt.TablePrefix
	if err := b.db.QueryRowContext(ctx, b.q.tables, p+"claims", p+"values", p+"queue").Scan(&n, &version, &packet, &hasDB); err != nil {
		return err
	}
	if !hasDB {
		return driver.Misconfigured(errors.New("no database selected: name one in the URL's path (mysql://user:pass@host:3306/DATABASE)"))
	}
	if err := checkVersion(version); err != nil {
		return driver.Misconfigured(err)
	}
	if need := int64(2*b.opt.MaxValueLen + 64<<10); packet < need {
		return driver.Misconfigured(fmt.Errorf("the server's max_allowed_packet (%d bytes) is too small for values of up to %d bytes (escaped into statements: it needs %d): raise it, or lower maxvalue",
			packet, b.opt.MaxValueLen, need))
	}
	switch {
	case n < 3 && b.opt.SkipMigrate:
		return driver.Misconfigured(fmt.Errorf("tables %s, %s and %s do not all exist (or this user has no privilege on them), and migrate=false: create them with mysql.Migrate or your migration tool",
			b.q.claims, b.q.values, b.q.queue))
	case n < 3:
		if err := b.migrate(ctx); err != nil {
			return err
		}
	}
	if _, err := b.db.ExecContext(ctx, b.q.ping); err != nil {
		return fmt.Errorf("check privileges on %s, %s and %s: %w", b.q.claims, b.q.values, b.q.queue, err)
	}
	return nil
}

var mariaVersion = regexp.MustCompile(`^(\d+)\.(\d+)\.\d+.*MariaDB`)

// checkVersion accepts MariaDB 10.5 and later: the driver's statements
// need INSERT … RETURNING (10.5) and anonymous compound statements (BEGIN
// NOT ATOMIC, 10.1). MySQL has neither.
func checkVersion(v string) error {
	m := mariaVersion.FindStringSubmatch(v)
	if m == nil {
		return fmt.Errorf("server version %q: this driver needs MariaDB 10.5 or later (INSERT … RETURNING, BEGIN NOT ATOMIC; MySQL has neither)", v)
	}
	major, _ := strconv.Atoi(m[1])
	minor, _ := strconv.Atoi(m[2])
	if major < 10 || major == 10 && minor < 5 {
		return fmt.Errorf("server version %q: this driver needs MariaDB 10.5 or later (INSERT … RETURNING)", v)
	}
	return nil
}

// configCodes are the MySQL error numbers of configuration errors:
// waiting does not fix them.
var configCodes = map[uint16]bool{
	1044: true, // ER_DBACCESS_DENIED_ERROR
	1045: true, // ER_ACCESS_DENIED_ERROR (also a REQUIRE X509/SSL not met)
	1049: true, // ER_BAD_DB_ERROR: no such database
	1142: true, // ER_TABLEACCESS_DENIED_ERROR
	1143: true, // ER_COLUMNACCESS_DENIED_ERROR
	1146: true, // ER_NO_SUCH_TABLE
	1227: true, // ER_SPECIFIC_ACCESS_DENIED_ERROR
	1251: true, // ER_NOT_SUPPORTED_AUTH_MODE
	1698: true, // ER_ACCESS_DENIED_NO_PASSWORD_ERROR
	1064: true, // ER_PARSE_ERROR: a server that does not speak MariaDB's SQL
	1046: true, // ER_NO_DB_ERROR: no database selected
	3159: true, // ER_SECURE_TRANSPORT_REQUIRED (MySQL)
}

// noSuchTable is the error number of a missing table.
const noSuchTable = 1146

// classify maps a compound statement's lost-lease signal to ErrLost, and
// marks err as a configuration error (driver.Misconfigured) if its number
// is one of configCodes, if the server is not a MySQL server, if it
// refused TLS, or if the TLS handshake was refused (driver.TLSRefused).
// After a missing table, the next call checks the tables again.
func (b *backend) classify(err error) error {
	if err == nil {
		return nil
	}
	var me *gomysql.MySQLError
	switch {
	case isLost(err):
		return driver.ErrLost
	case errors.As(err, &me) && configCodes[me.Number]:
		if me.Number == noSuchTable {
			b.migrated.Store(false)
		}
		return driver.Misconfigured(err)
	case errors.Is(err, errNotMySQL), errors.Is(err, gomysql.ErrNoTLS), driver.TLSRefused(err):
		return driver.Misconfigured(err)
	}
	return err
}

// errNotMySQL is the error of a connection whose server's greeting is not
// MySQL's.
var errNotMySQL = errors.New("not a MySQL or MariaDB server")

// sniffing wraps dial so that a connection whose server's first packet is
// not a MySQL greeting (sequence 0, protocol 10, or an error packet) fails
// the dial with errNotMySQL, instead of go-sql-driver's "invalid
// connection". The server speaks first, so the dial reads the greeting's
// first 5 bytes itself (within ctx) and hands them on with the connection.
func sniffing(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if d, ok := ctx.Deadline(); ok {
			_ = c.SetReadDeadline(d)
		}
		stop := context.AfterFunc(ctx, func() { _ = c.SetReadDeadline(time.Unix(1, 0)) })
		head := make([]byte, 0, 5)
		for len(head) < 5 && err == nil {
			var n int
			n, err = c.Read(head[len(head):5])
			head = head[:len(head)+n]
			if !plausible(head) {
				stop()
				c.Close()
				return nil, fmt.Errorf("%w at %s: it answered %q", errNotMySQL, addr, strings.ToValidUTF8(string(head), "?"))
			}
		}
		stop()
		if err != nil {
			c.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("reading the server's greeting: %w", ctx.Err())
			}
			return nil, fmt.Errorf("reading the server's greeting: %w", err)
		}
		_ = c.SetReadDeadline(time.Time{})
		return &sniffConn{Conn: c, head: head}, nil
	}
}

// sniffConn replays the greeting bytes sniffing read.
type sniffConn struct {
	net.Conn
	head []byte
}

func (c *sniffConn) Read(p []byte) (int, error) {
	if len(c.head) > 0 {
		n := copy(p, c.head)
		c.head = c.head[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// plausible reports whether h (up to 5 bytes) can start a greeting: a
// 3-byte length (under 64 KiB), sequence 0, protocol 10 or an error
// packet (0xff).
func plausible(h []byte) bool {
	if len(h) >= 3 && h[2] != 0 {
		return false
	}
	if len(h) >= 4 && h[3] != 0 {
		return false
	}
	if len(h) >= 5 && h[4] != 10 && h[4] != 0xff {
		return false
	}
	return true
}
