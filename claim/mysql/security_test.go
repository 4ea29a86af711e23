package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// rootDB opens a pool on srv as its (all-privileged) user, closed when
// the test ends.
func rootDB(t testing.TB, srv *testserver.Server) *sql.DB {
	t.Helper()
	u, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	_, cfg, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MultiStatements = true
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	t.Cleanup(func() { db.Close() })
	return db
}

// withUser returns srv's URL with user and password in place of its own.
func withUser(t testing.TB, raw, user, pw string, params ...string) string {
	t.Helper()
	u, err := url.Parse(backendtest.WithQuery(t, raw, params...))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, pw)
	return u.String()
}

// TestTLSAndAuth runs against a MariaDB that requires TLS with a client
// certificate from its CA (REQUIRE X509) and a password: a round trip
// through the URL (tls=true&cacert=&cert=&key=) and through the user's
// own pool given to New; a wrong password is ErrConfig
// (securitytest.ConfigRefused), and every refused client is refused.
func TestTLSAndAuth(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.MySQL, &testserver.Options{TLS: true, User: user, Password: pw})
	securitytest.RoundtripURLAndNew(t, srv.URL(), func(t *testing.T) (*claim.Client, error) {
		cfg := gomysql.NewConfig()
		cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName = srv.Addr(), user, pw, "stampede"
		cfg.TLS = backendtest.ClientTLS(t, srv)
		cfg.InterpolateParams, cfg.ClientFoundRows = true, true
		conn, err := gomysql.NewConnector(cfg)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(conn)
		t.Cleanup(func() { db.Close() })
		return New(db, nil)
	})
	good := backendtest.WithQuery(t, srv.URL(), "dial_timeout", "2s")
	t.Run("wrong password is ErrConfig", func(t *testing.T) {
		securitytest.ConfigRefused(t, withUser(t, good, user, "wrong-"+pw), pw)
	})
	t.Run("no client certificate is ErrConfig", func(t *testing.T) {
		u, _ := url.Parse(good)
		q := u.Query()
		q.Del("cert")
		q.Del("key")
		u.RawQuery = q.Encode()
		securitytest.ConfigRefused(t, u.String(), pw)
	})
	refused := securitytest.TLSRefusals(t, good, "mysql")
	securitytest.Refused(t, refused, pw, 15*time.Second)
	// An untrusted server certificate is checked by the client itself: a
	// configuration error.
	c, err := claim.Open(context.Background(), refused["system roots"])
	if err == nil {
		c.Close()
	}
	if !errors.Is(err, claim.ErrConfig) {
		t.Errorf("system roots: Open: %v, want ErrConfig", err)
	}
}

// TestConfigErrors: what waiting will not fix is claim.ErrConfig at Open
// (and at the first call of a lazy Client, and a flight Cache does not
// fail open on it): a user without rights on the tables, a user without
// access to the database, a database that does not exist, missing tables
// with migrate=false, a server of another kind at the address, and a
// maxvalue the server's max_allowed_packet cannot carry.
func TestConfigErrors(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	db := rootDB(t, srv)
	ctx := backendtest.Context(t)
	// The tables, made by a client with every right.
	backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "cfg_"))
	for _, s := range []string{
		"CREATE USER IF NOT EXISTS 'reader'@'%' IDENTIFIED BY 'reader-pw'",
		"GRANT SELECT ON stampede.* TO 'reader'@'%'",
		"CREATE USER IF NOT EXISTS 'nobody'@'%' IDENTIFIED BY 'nobody-pw'",
	} {
		if _, err := db.ExecContext(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	cases := map[string]string{
		"read-only user":      withUser(t, srv.URL(), "reader", "reader-pw", "prefix", "cfg_"),
		"no database access":  withUser(t, srv.URL(), "nobody", "nobody-pw", "prefix", "cfg_"),
		"no such database":    strings.Replace(backendtest.WithQuery(t, srv.URL(), "prefix", "cfg_"), "/stampede?", "/nosuchdb?", 1),
		"no tables, migrate":  backendtest.WithQuery(t, srv.URL(), "prefix", "absent_", "migrate", "false"),
		"another server kind": "mysql://u:pw@" + speaksFirst(t, "SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n") + "/stampede",
		"maxvalue too large":  backendtest.WithQuery(t, srv.URL(), "prefix", "cfg_", "maxvalue", fmt.Sprint(64<<20)),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) { securitytest.ConfigRefused(t, raw, "") })
	}
}

// speaksFirst starts a loopback listener that sends banner on every
// connection and closes it, as an SSH or SMTP server greets its clients:
// a server of another kind for a MySQL client, which waits for the
// server's greeting. (A server that waits for its client, HTTP, says
// nothing and at most closes the connection: a MySQL client cannot tell
// it from an unavailable server, and reports it as such.) It returns its
// address; it is closed when the test ends.
func speaksFirst(t testing.TB, banner string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(banner))
			_ = c.Close()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// TestNoHang: on a server that accepts connections and never answers,
// no call hangs under context.Background(): each fails within the
// operation timeout with ErrUnavailable.
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "mysql://u:pw@"+securitytest.Unresponsive(t)+"/stampede")
}

// TestURLErrors: malformed and unknown parameters are errors that never
// show the password.
func TestURLErrors(t *testing.T) {
	const pw = "s3cr3t-Pa55"
	securitytest.OpenFails(t, pw,
		"mysql://user:"+pw+"@127.0.0.1:1/db?maxvalue=bogus",
		"mysql://user:"+pw+"@127.0.0.1:1/db?prefix=a;b",
		"mysql://user:"+pw+"@127.0.0.1:1/db?prefix=a-b",
		"mysql://user:"+pw+"@127.0.0.1:1/db?nosuch=1",
		"mysql://user:"+pw+"@127.0.0.1:1/db?cacert=/ca.pem",
		"mysql://user:"+pw+"@127.0.0.1:1/db?tls=true&cacert=/nonexistent.pem",
		"mysql://user:"+pw+"@127.0.0.1:1/",
		"mysql://user:"+pw+"@127.0.0.1:1/db?max_conns=0",
		"mysql://user:"+pw+"@127.0.0.1:1/db?dial_timeout=1s&connect_timeout=3",
	)
	for _, s := range []string{"mysql", "mariadb"} {
		found := false
		for _, r := range claim.Schemes() {
			found = found || r == s
		}
		if !found {
			t.Errorf("scheme %q not registered", s)
		}
	}
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	securitytest.Hostile(t, backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "hostile_")))
}

// FuzzKeyNames: encoded keys are at most 255 bytes of printable ASCII
// (the VARBINARY(255) key columns), and two keys never share one.
func FuzzKeyNames(f *testing.F) {
	b, err := newBackend(&sql.DB{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	names := func(k string) []string { return []string{b.keys.Encode(k)} }
	securitytest.FuzzKeys(f, 254, func(t *testing.T, k1, k2 string) {
		securitytest.CheckEncoding(t, k1, k2, names, maxKeyLen, driver.PrintableASCII)
	}, "a b", "a_b", "\x00", "ключ", "'; DROP TABLE x; --", "a\\'b")
}
