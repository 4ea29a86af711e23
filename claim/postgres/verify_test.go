package postgres

import (
	"context"
	"errors"
	"net/url"
	"testing"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestNoHang: on a server that accepts connections and never answers,
// Open fails and every method and Close return within the operation
// timeout (pgx's connect has no deadline of its own: the Client's and
// DefaultConnectTimeout bound it).
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "postgres://u@"+securitytest.Unresponsive(t)+"/db")
}

// asUser returns rawURL with user in place of its user.
func asUser(t *testing.T, rawURL, user string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(user)
	return u.String()
}

// TestConfigErrors: each configuration problem fails Open (and New) with
// ErrConfig, and a lazily opened Client's first call too; flight never
// loads on it (securitytest.ConfigRefused). Where the LISTEN connection
// itself is refused, so is Subscribe.
func TestConfigErrors(t *testing.T) {
	ctx := backendtest.Context(t)
	srv := testserver.Shared(t, testserver.Postgres)
	admin := newPool(t)
	id := randID()
	role, open, closed, fresh := "cfg_"+id, "cfg_open_"+id, "cfg_closed_"+id, "cfg_new_"+id
	for _, s := range []string{
		`CREATE ROLE ` + role + ` LOGIN`,
		`CREATE SCHEMA ` + open, `GRANT USAGE ON SCHEMA ` + open + ` TO ` + role,
		`CREATE SCHEMA ` + closed,
	} {
		if _, err := admin.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, s := range []string{`DROP SCHEMA ` + open + ` CASCADE`, `DROP SCHEMA ` + closed + ` CASCADE`, `DROP ROLE ` + role} {
			_, _ = admin.Exec(context.Background(), s)
		}
	})
	// The tables exist in both schemas; role may use neither.
	for _, s := range []string{open, closed} {
		c, err := New(admin, &Options{Schema: s})
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	noDB, err := url.Parse(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	noDB.Path = "/nosuch_" + id
	connectRefused := map[string]string{
		"no such database":        noDB.String(),
		"no such role":            asUser(t, srv.URL(), "nobody_"+id),
		"not a PostgreSQL server": "postgres://u@" + securitytest.AnswersHTTP(t) + "/db?sslmode=prefer",
	}
	for name, u := range connectRefused {
		t.Run(name, func(t *testing.T) {
			securitytest.ConfigRefused(t, u, "")
			securitytest.SubscribeRefused(t, u)
		})
	}
	for name, u := range map[string]string{
		"no schema, migrate=false":   serverURL(t, "schema", "nosuch_"+id, "migrate", "false"),
		"no privilege on the tables": backendtest.WithQuery(t, asUser(t, srv.URL(), role), "schema", open, "migrate", "false"),
		"no privilege on the schema": backendtest.WithQuery(t, asUser(t, srv.URL(), role), "schema", closed),
		"no privilege to create":     backendtest.WithQuery(t, asUser(t, srv.URL(), role), "schema", fresh),
	} {
		t.Run(name, func(t *testing.T) { securitytest.ConfigRefused(t, u, "") })
	}
}

// TestNewKeepsPoolOnFailure: New on a pool whose server refuses the
// check fails with ErrConfig and leaves the pool open (it is the
// caller's); with Lazy it makes no connection.
func TestNewKeepsPoolOnFailure(t *testing.T) {
	ctx := backendtest.Context(t)
	p := newPool(t)
	if c, err := New(p, &Options{Schema: "nosuch_" + randID(), SkipMigrate: true}); !errors.Is(err, claim.ErrConfig) {
		if err == nil {
			c.Close()
		}
		t.Fatalf("New on a missing schema with SkipMigrate: %v, want ErrConfig", err)
	}
	if err := p.Ping(ctx); err != nil {
		t.Errorf("the caller's pool after a failed New: %v", err)
	}
	unused := newPool(t)
	c, err := New(unused, &Options{Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if n := unused.Stat().NewConnsCount(); n != 0 {
		t.Errorf("New with Lazy made %d connections, want 0", n)
	}
}
