package nats

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// userConn is a NATS connection of the user's own, closed when the test
// ends.
func userConn(t *testing.T, addr string, opts ...natsgo.Option) *natsgo.Conn {
	t.Helper()
	nc, err := natsgo.Connect("nats://"+addr, append(opts, natsgo.Timeout(5*time.Second))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestTLSAndAuth runs against a server that accepts only TLS clients with
// a certificate from its CA (--tlsverify) and a user and password:
// through the URL (nats://USER:PASSWORD@...?tls=true&cacert=&cert=&key=)
// and through the user's own connection given to New. The round trips
// prove that TLS and authentication carry the traffic (the conformance
// suite runs on a plain server). Without the client certificate, with the
// system roots, in plain text or with a wrong password, the server
// refuses the client.
func TestTLSAndAuth(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.NATS, &testserver.Options{TLS: true, User: user, Password: pw})
	securitytest.RoundtripURLAndNew(t, uniq(t, srv, "url"), func(t *testing.T) (*claim.Client, error) {
		nc := userConn(t, srv.Addr(), natsgo.Secure(backendtest.ClientTLS(t, srv)), natsgo.UserInfo(user, pw))
		return New(nc, &Options{Prefix: prefix(t) + ".new"})
	})
	refused := securitytest.TLSRefusals(t, srv.URL(), "nats")
	securitytest.Refused(t, refused, pw, 10*time.Second)
	for name, raw := range refused {
		t.Run(name+" is ErrConfig", func(t *testing.T) {
			securitytest.ConfigRefused(t, raw, pw)
		})
	}
}

// TestToken: a server that wants a token accepts it as token=, and
// refuses a wrong one or none with ErrConfig, never showing it. A token
// in the URL's user (NATS's own convention) is refused: errors print a
// URL's user name.
func TestToken(t *testing.T) {
	const token = "tok-S3cret"
	srv := testserver.RequireWith(t, testserver.NATS, &testserver.Options{Password: token})
	securitytest.Roundtrip(t, backendtest.Open(t, uniq(t, srv, "")))
	nc := userConn(t, srv.Addr(), natsgo.Token(token))
	c, err := New(nc, &Options{Prefix: prefix(t) + ".new"})
	if err != nil {
		t.Fatal(err)
	}
	securitytest.Roundtrip(t, c)
	c.Close()
	t.Run("wrong token", func(t *testing.T) {
		securitytest.ConfigRefused(t, "nats://"+srv.Addr()+"?token=wrong-"+token, "wrong-"+token)
	})
	t.Run("no token", func(t *testing.T) {
		securitytest.ConfigRefused(t, "nats://"+srv.Addr(), "")
		securitytest.SubscribeRefused(t, "nats://"+srv.Addr())
	})
	t.Run("token as user", func(t *testing.T) {
		securitytest.OpenFails(t, "", "nats://"+token+"@"+srv.Addr())
	})
}

// TestRights: users the server gives fewer rights are refused with
// ErrConfig at Open (the JetStream API denied; the bucket's subjects
// denied; no right to create the bucket, which does not exist), and a
// bucket of the wrong kind too (memory storage, a TTL). A user with
// every right works.
func TestRights(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "auth.conf")
	const cfg = `authorization {
  users = [
    {user: full, password: full}
    {user: nojs, password: nojs, permissions: {publish: {deny: ["$JS.API.>"]}}}
    {user: nokv, password: nokv, permissions: {publish: {deny: ["$KV.>"]}}}
    {user: nocreate, password: nocreate, permissions: {publish: {deny: ["$JS.API.STREAM.CREATE.>"]}}}
  ]
}
`
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := testserver.RequireWith(t, testserver.NATS, &testserver.Options{Args: []string{"-c", conf}})
	at := func(user string, params ...string) string {
		return backendtest.WithQuery(t, fmt.Sprintf("nats://%s:%s@%s", user, user, srv.Addr()), params...)
	}
	securitytest.Roundtrip(t, backendtest.Open(t, at("full", "prefix", "full")))
	t.Run("no JetStream API", func(t *testing.T) {
		securitytest.ConfigRefused(t, at("nojs", "op_timeout", "2s"), "")
	})
	t.Run("no bucket to create", func(t *testing.T) {
		securitytest.ConfigRefused(t, at("nocreate", "bucket", "other", "op_timeout", "2s"), "")
	})
	t.Run("create=false", func(t *testing.T) {
		securitytest.ConfigRefused(t, at("full", "bucket", "missing", "create", "false"), "")
	})
	t.Run("no writes", func(t *testing.T) {
		c := backendtest.Open(t, at("nokv", "op_timeout", "2s"))
		_, err := c.TryClaim(backendtest.Context(t), "k", time.Second)
		if !errors.Is(err, claim.ErrConfig) {
			t.Errorf("TryClaim of a user who may not write the bucket: %v, want ErrConfig", err)
		}
	})
	nc := userConn(t, srv.Addr(), natsgo.UserInfo("full", "full"))
	js, _ := nc.JetStream()
	for name, kc := range map[string]*natsgo.KeyValueConfig{
		"memory": {Bucket: "mem", Storage: natsgo.MemoryStorage},
		"ttl":    {Bucket: "ttl", TTL: time.Hour},
	} {
		if _, err := js.CreateKeyValue(kc); err != nil {
			t.Fatal(err)
		}
		t.Run("bucket "+name, func(t *testing.T) {
			securitytest.ConfigRefused(t, at("full", "bucket", kc.Bucket), "")
		})
	}
}

// TestNoHang: Open, every method and Close return within the operation
// timeout (+1 s) on a server that accepts connections and never answers.
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "nats://"+securitytest.Unresponsive(t))
}

// TestOtherServer: an HTTP server at the address is ErrConfig.
func TestOtherServer(t *testing.T) {
	securitytest.ConfigRefused(t, "nats://"+securitytest.AnswersHTTP(t), "")
}

// TestURLs: malformed URLs and parameters are refused at Open, without
// showing secrets.
func TestURLs(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	securitytest.OpenFails(t, "S3cret",
		"nats://"+srv.Addr()+"/path",
		"nats://"+srv.Addr()+"?nosuch=1",
		"nats://"+srv.Addr()+"?bucket=a.b",
		"nats://"+srv.Addr()+"?prefix=a..b",
		"nats://"+srv.Addr()+"?prefix=a%3Db",
		"nats://"+srv.Addr()+"?cacert=/x",
		"nats://:S3cret@"+srv.Addr(),
		"nats://"+srv.Addr()+"?token=S3cret&clock_skew=x",
		"nats://"+srv.Addr()+"?token=S3cret&ping_interval=1ms",
		"nats://"+srv.Addr()+"?token=S3cret&ping_interval=x",
		"nats://"+srv.Addr()+"?token=S3cret&max_pings_out=0",
	)
}

// TestLimits: a value of DefaultMaxValueLen goes through every write path
// of a default server (max_payload 1 MiB) under a long prefix and a long
// readable key; Publish takes messages up to the same limit.
func TestLimits(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	ctx := backendtest.Context(t)
	long := backendtest.WithQuery(t, srv.URL(), "prefix", strings.Repeat("p", MaxPrefixLen))
	c := backendtest.Open(t, long)
	u := securitytest.Unique(t)
	key := u + strings.Repeat("k", 255-len(u))
	v := securitytest.Pattern(DefaultMaxValueLen, 1)
	if err := c.Set(ctx, key, v, time.Minute); err != nil {
		t.Errorf("Set of DefaultMaxValueLen: %v", err)
	}
	for _, commit := range []func(claim.Lease) error{
		func(l claim.Lease) error { return c.Commit(ctx, l, v, time.Minute) },
		func(l claim.Lease) error { return c.CommitRelease(ctx, l, v, time.Minute) },
	} {
		l, err := c.TryClaim(ctx, key, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := commit(l); err != nil {
			t.Errorf("Commit or CommitRelease of DefaultMaxValueLen: %v", err)
		}
		_ = c.Release(ctx, l)
	}
	securitytest.PublishLimit(t, c, backendtest.Open(t, long), func(string) int { return DefaultMaxValueLen })
}

// TestIsolation: a prefix and one nested in it never touch each other.
func TestIsolation(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	securitytest.Isolation(t, backendtest.Open(t, uniq(t, srv, "nest")), backendtest.Open(t, uniq(t, srv, "nest.c")))
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	securitytest.Hostile(t, backendtest.Open(t, uniq(t, srv, "")))
}

// TestLongKeys: long keys are hashed, never refused, and do not collide.
func TestLongKeys(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	securitytest.LongKeys(t, backendtest.Open(t, uniq(t, srv, "")), []int{1, 255, 256, 1000, 100000})
}

// FuzzRecord: decodeRecord never panics, and what encode writes decodes
// to the same record.
func FuzzRecord(f *testing.F) {
	f.Add(record{op: opClaim, holder: "h", leaseExp: 5, leaseTTL: 3, queue: []entry{{"w", 1, 2, true}}, sighted: true, hasValue: true, value: []byte("v")}.encode())
	f.Add([]byte{1, 1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ok := decodeRecord(b, 7)
		if !ok {
			return
		}
		r2, ok := decodeRecord(r.encode(), 7)
		if !ok || r2.holder != r.holder || r2.token != r.token || string(r2.value) != string(r.value) || len(r2.queue) != len(r.queue) ||
			(r.holder != "" && r2.sighted != r.sighted) {
			t.Fatalf("round trip: %+v -> %+v", r, r2)
		}
	})
}

var _ = context.Background

// TestMaxValueOverPayload: a maxvalue the server's max_payload cannot
// carry is a configuration error at Open.
func TestMaxValueOverPayload(t *testing.T) {
	srv := testserver.Shared(t, testserver.NATS)
	securitytest.ConfigRefused(t, backendtest.WithQuery(t, srv.URL(), "maxvalue", "2000000"), "")
}
