package mysql

import (
	"context"
	"database/sql"
	"errors"
	"net"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// countConn counts the commands a client sends: packets whose sequence
// number is 0 (a command starts a new sequence; the handshake's packets
// and a command's continuation packets do not).
type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c countConn) Write(p []byte) (int, error) {
	if len(p) >= 4 && p[3] == 0 {
		c.n.Add(1)
	}
	return c.Conn.Write(p)
}

// countingClient returns a Client (via New) on srv whose pool has one
// connection and counts the commands it sends. It never sweeps (a
// sweep's DELETE would be counted).
func countingClient(t *testing.T, srv *testserver.Server, prefix string) (*claim.Client, *atomic.Int64) {
	t.Helper()
	u, err := url.Parse(backendtest.WithQuery(t, srv.URL(), "prefix", prefix, "sweep", "0"))
	if err != nil {
		t.Fatal(err)
	}
	o, cfg, err := ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int64)
	var d net.Dialer
	cfg.DialFunc = sniffing(func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return countConn{Conn: c, n: n}, nil
	})
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	c, err := New(db, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, n
}

// TestOneRoundTrip: every operation the package documentation calls one
// round trip sends exactly one command to the server (counted on the
// wire; the pool's one connection is open already): claims, renewals,
// releases, commits (CommitRelease and Revoke are one compound statement
// each), the store, Notify, the fair queue's operations, and a GetMany
// of several keys.
func TestOneRoundTrip(t *testing.T) {
	srv := testserver.Shared(t, testserver.MySQL)
	c, n := countingClient(t, srv, "rt_")
	ctx := backendtest.Context(t)
	d := c.Driver()
	b := d.(*backend)
	var lease claim.Lease
	fair := claim.Lease{}
	steps := []struct {
		name string
		do   func() error
	}{
		{"TryClaim", func() (err error) { lease, err = d.TryClaim(ctx, "k1", lease1, time.Minute); return }},
		{"TryClaim held", func() error { _, err := d.TryClaim(ctx, "k1", lease2, time.Minute); return ignoreHeld(err) }},
		{"Extend", func() (err error) { lease, err = d.Extend(ctx, lease, time.Minute); return }},
		{"Commit", func() error { return d.Commit(ctx, lease, []byte("v"), time.Minute) }},
		{"Release", func() error { return d.Release(ctx, lease) }},
		{"TryClaimRead", func() (err error) { lease, _, _, err = b.TryClaimRead(ctx, "k1", lease2, time.Minute); return }},
		{"CommitRelease", func() error { return b.CommitRelease(ctx, lease, []byte("v2"), time.Minute) }},
		{"Get", func() error { _, err := d.Get(ctx, "k1"); return err }},
		{"Set", func() error { return d.Set(ctx, "k2", []byte("x"), 0) }},
		{"Delete", func() error { return d.Delete(ctx, "k2") }},
		{"Notify", func() error { return d.Notify(ctx, "k1") }},
		{"Revoke", func() error { return d.Revoke(ctx, "k1", []byte("r"), 0) }},
		{"Revoke delete", func() error { return d.Revoke(ctx, "k1", nil, 0) }},
		{"GetMany", func() error { _, err := b.GetMany(ctx, []string{"k1", "k2", "k3"}); return err }},
		{"Enqueue", func() (err error) { fair, err = b.Enqueue(ctx, "f", lease1, time.Minute); return }},
		{"Enqueue queued", func() error { _, err := b.Enqueue(ctx, "f", lease2, time.Minute); return ignoreHeld(err) }},
		{"HandOff", func() (err error) { fair, err = b.HandOff(ctx, fair); return }},
		{"Dequeue", func() error { return b.Dequeue(ctx, "f", lease2) }},
	}
	if err := c.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	for _, s := range steps {
		before := n.Load()
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := n.Load() - before; got != 1 {
			t.Errorf("%s: %d commands, want 1", s.name, got)
		}
	}
}

const (
	lease1 = "aaaaaaaaaaaaaaaaaaaaaaaa"
	lease2 = "bbbbbbbbbbbbbbbbbbbbbbbb"
)

func ignoreHeld(err error) error {
	if errors.Is(err, claim.ErrHeld) {
		return nil
	}
	return err
}
