package postgres

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLSAndSCRAM runs against a PostgreSQL whose pg_hba.conf accepts TCP
// clients only over TLS (hostssl) and only by scram-sha-256: a round trip
// through the URL (sslmode=verify-full&sslrootcert=..., libpq's names) and
// through the user's own pool given to New; a wrong password is ErrConfig
// (securitytest.ConfigRefused), and every refused client is refused.
func TestTLSAndSCRAM(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.Postgres, &testserver.Options{TLS: true, User: user, Password: pw})
	securitytest.RoundtripURLAndNew(t, srv.URL(), func(t *testing.T) (*claim.Client, error) {
		cfg, err := pgxpool.ParseConfig(fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable", user, srv.Addr()))
		if err != nil {
			t.Fatal(err)
		}
		cfg.ConnConfig.TLSConfig = backendtest.ClientTLS(t, srv)
		cfg.ConnConfig.Password = pw
		pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return New(pool, nil)
	})
	u, _ := url.Parse(srv.URL())
	q := u.Query()
	with := func(user *url.Userinfo, params url.Values) string {
		v := *u
		v.User = user
		v.RawQuery = params.Encode() + "&connect_timeout=5"
		return v.String()
	}
	// A wrong password is a configuration error, at Open, at the first
	// call of a Client opened lazily, and at Subscribe (the LISTEN
	// connection's cause, not a timeout).
	t.Run("wrong password is ErrConfig", func(t *testing.T) {
		wrong := with(url.UserPassword(user, "wrong-"+pw), q)
		securitytest.ConfigRefused(t, wrong, pw)
		securitytest.SubscribeRefused(t, wrong)
	})
	securitytest.Refused(t, map[string]string{
		"wrong password": with(url.UserPassword(user, "wrong-"+pw), q),
		"no password":    with(url.User(user), q),
		"plain text":     with(url.UserPassword(user, pw), url.Values{"sslmode": {"disable"}}),
		"system roots":   with(url.UserPassword(user, pw), url.Values{"sslmode": {"verify-full"}}),
	}, pw, 15*time.Second)
}

// maxPublish is the longest message Publish accepts on topic.
func maxPublish(c *claim.Client, topic string) int {
	return maxMessage(c.Driver().(*backend).keys.Encode(topic))
}

// TestLimits: Publish payloads up to pg_notify's limit are delivered, one
// byte more is ErrTooLarge (never truncated), and the server's limit
// really is 7999 bytes. That limit is the driver's own (the Client knows
// none for Publish), so OverLimitNoIO checks it is applied before any I/O.
// Values: maxvalue reaches Features; conformance's TooLarge checks the
// limit on the server.
func TestLimits(t *testing.T) {
	const limit = 1 << 20
	b := backendtest.Open(t, serverURL(t, "prefix", "limits_", "maxvalue", fmt.Sprint(limit)))
	if f := b.Features(); f.MaxValueLen != limit {
		t.Errorf("maxvalue=%d: Features.MaxValueLen = %d", limit, f.MaxValueLen)
	}
	b2 := backendtest.Open(t, serverURL(t, "prefix", "limits_"))
	securitytest.PublishLimit(t, b, b2, func(topic string) int { return maxPublish(b, topic) })

	ctx := context.Background()
	pool := b.Driver().(*backend).pool
	if _, err := pool.Exec(ctx, `SELECT pg_notify('limits_probe', repeat('x', $1))`, maxPayload); err != nil {
		t.Errorf("pg_notify of %d bytes: %v", maxPayload, err)
	}
	if _, err := pool.Exec(ctx, `SELECT pg_notify('limits_probe', repeat('x', $1))`, maxPayload+1); err == nil {
		t.Errorf("pg_notify of %d bytes succeeded: maxPayload is too small", maxPayload+1)
	}

	srv := testserver.Shared(t, testserver.Postgres)
	p := securitytest.NewProxy(t, srv.Addr())
	dead := backendtest.Open(t, strings.Replace(serverURL(t, "prefix", "limits_", "maxvalue", fmt.Sprint(limit), "connect_timeout", "2"), srv.Addr(), p.Addr(), 1))
	p.Cut()
	securitytest.OverLimitNoIO(t, dead, limit, claim.Lease{}, maxPublish(dead, "topic"))
}

// TestChannelNames: LISTEN silently truncates channel names to 63 bytes,
// so two namespaces whose channel names would agree in their first 63
// bytes must still get different channels.
func TestChannelNames(t *testing.T) {
	seen := map[string]Options{}
	for _, o := range []Options{
		{Schema: strings.Repeat("s", 40), TablePrefix: strings.Repeat("p", 30) + "a_"},
		{Schema: strings.Repeat("s", 40), TablePrefix: strings.Repeat("p", 30) + "b_"},
		{Schema: "public", TablePrefix: "stampede_"},
		{Schema: "public.stampede", TablePrefix: "_"},
	} {
		b, err := newBackend(&pgxpool.Pool{}, &o)
		if err != nil {
			t.Fatal(err)
		}
		if len(b.channel) > maxIdent {
			t.Errorf("channel %q: %d bytes, over %d", b.channel, len(b.channel), maxIdent)
		}
		if prev, dup := seen[b.channel]; dup {
			t.Errorf("options %+v and %+v share channel %q", prev, o, b.channel)
		}
		seen[b.channel] = o
	}
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	securitytest.Hostile(t, backendtest.Open(t, serverURL(t, "prefix", "hostile_")))
}

// FuzzKeyNames: encoded keys are at most 256 bytes of printable ASCII
// without spaces (a text primary key, and a NOTIFY payload whose fields
// are separated by a space), and two keys never share one.
func FuzzKeyNames(f *testing.F) {
	b, err := newBackend(&pgxpool.Pool{}, nil)
	if err != nil {
		f.Fatal(err)
	}
	names := func(k string) []string { return []string{b.keys.Encode(k)} }
	securitytest.FuzzKeys(f, 255, func(t *testing.T, k1, k2 string) {
		securitytest.CheckEncoding(t, k1, k2, names, maxKeyLen, driver.PrintableASCII)
		if p := keyPayload(b.keys.Encode(k1)); len(p) > maxPayload {
			t.Fatalf("notify payload of %d bytes", len(p))
		}
	}, "a b", "a_b", "\x00", "ключ")
}
