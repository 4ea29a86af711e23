package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLSAndACL runs against a Redis that accepts only TLS clients with a
// certificate from its CA, logging in as an ACL user (the default user is
// off): through the URL (rediss://USER:PASSWORD@...?cacert=&cert=&key=)
// and through the user's own go-redis client given to New.
func TestTLSAndACL(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{TLS: true, User: user, Password: pw})

	// Roundtrip stays although the conformance suite covers the same
	// operations: the suite runs in plain text, this is TLS with an ACL
	// user, through the URL's TLS parameters and through New.
	securitytest.RoundtripURLAndNew(t, srv.URL(), func(t *testing.T) (*claim.Client, error) {
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Username: user, Password: pw, TLSConfig: backendtest.ClientTLS(t, srv), MaxRetries: -1})
		t.Cleanup(func() { rdb.Close() })
		return redis.New(rdb, nil)
	})

	// No client certificate, an unknown CA, no TLS at all, a wrong
	// password, and no user (the default user is off).
	good := backendtest.WithQuery(t, srv.URL(), "dial_timeout", "2s", "read_timeout", "2s")
	refused := securitytest.TLSRefusals(t, good, "redis")
	refused["default user"] = strings.Replace(good, user+":", ":", 1)
	securitytest.Refused(t, refused, pw, 10*time.Second)
	// Those the client can tell for sure are configuration errors: an
	// untrusted certificate (checked by the client itself) and the
	// credentials. (No client certificate: the server's alert may arrive
	// as a reset. Plain text: the server just closes the connection.)
	for _, name := range []string{"system roots", "wrong password", "default user"} {
		c, err := claim.Open(context.Background(), refused[name])
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, claim.ErrConfig) {
			t.Errorf("%s: Open: %v, want ErrConfig", name, err)
		}
	}
}

// TestLimits: on a server whose proto-max-bulk-len is exactly
// MaxValueLen, the conformance suite's TooLarge check passes (a value of
// MaxValueLen bytes goes through the scripts, one more is ErrTooLarge) and
// the server itself refuses one byte more: Features.MaxValueLen, which the
// Client enforces, is the server's limit, neither stricter nor looser.
// Redis itself has no notify payload limit (PUBLISH carries a fixed word).
func TestLimits(t *testing.T) {
	const limit = 1 << 20 // Redis's smallest proto-max-bulk-len
	srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Args: []string{"--proto-max-bulk-len", fmt.Sprint(limit)}})
	h := backendtest.Harness(srv, func(string) string {
		return backendtest.WithQuery(t, srv.URL(), "maxvalue", fmt.Sprint(limit))
	})
	if err := conformance.Test(context.Background(), h, "TooLarge"); err != nil {
		t.Error(err)
	}
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer rdb.Close()
	if err := rdb.Set(context.Background(), "raw", make([]byte, limit+1), 0).Err(); err == nil {
		t.Errorf("Redis accepted %d bytes with proto-max-bulk-len %d", limit+1, limit)
	}
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	securitytest.Hostile(t, backendtest.Open(t, srv.URL()))
}

// FuzzKeyNames: the hash tag of every name derived from a key (lock,
// fence, value, channel) is at most 256 bytes without braces, and two
// keys never share a name. Its seeds cross the 255/256-byte boundary
// between readable and hashed keys (Redis has no key length limit of its
// own; long keys on the server: the conformance suite's Keys check).
func FuzzKeyNames(f *testing.F) {
	securitytest.FuzzKeys(f, 255, func(t *testing.T, k1, k2 string) {
		tags := func(k string) []string {
			var out []string
			for _, n := range redis.NamesForTest("p", k) {
				open, close := strings.IndexByte(n, '{'), strings.IndexByte(n, '}')
				if open < 0 || close < open || strings.Count(n, "{") != 1 || strings.Count(n, "}") != 1 {
					t.Fatalf("name %q of key %q: want exactly one {hash tag}", n, k)
				}
				out = append(out, n[open+1:close])
			}
			return out[:1] // every name of a key has the same tag
		}
		securitytest.CheckEncoding(t, k1, k2, tags, 256, func(c byte) bool { return c != '{' && c != '}' })
		securitytest.CheckEncoding(t, k1, k2, func(k string) []string { return redis.NamesForTest("p", k) }, 0, nil)
	}, "{a}", "a", "a}:lock", "a")
}

// TestNoHang: on a server that accepts connections and never answers,
// Open fails with ErrUnavailable within the operation timeout (the Ping's
// connection set-up goes unanswered), and a lazily opened Client's every
// method, Subscribe included, and Close return within it too.
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "redis://"+securitytest.Unresponsive(t)+"/0")
}

// TestConfigRefused: a wrong password (WRONGPASS) and none at all
// (NOAUTH) fail Open with ErrConfig; opened lazily, Get fails so too, and
// a flight cache never runs its loader (it does not fail open).
func TestConfigRefused(t *testing.T) {
	const pw = "cfg-S3cret"
	srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Password: pw})
	t.Run("wrong password", func(t *testing.T) {
		securitytest.ConfigRefused(t, "redis://:wrong-"+pw+"@"+srv.Addr()+"/0", "wrong-"+pw)
	})
	t.Run("no password", func(t *testing.T) {
		securitytest.ConfigRefused(t, "redis://"+srv.Addr()+"/0", "")
	})
}

// TestConfigErrors: every other configuration Open finds (the driver's
// Ping) fails with ErrConfig: ACL users without the prefix's keys,
// without write commands, without the channels; a read-only replica; a
// server without EVAL (renamed away, as on a server too old for a
// command); a database the server does not have; a cluster URL at a
// standalone server; a memcached server and an HTTP server at the
// address. On the replica, opened lazily, a claim is ErrUnavailable
// instead: outside Open and Ping, READONLY is a failover under way.
func TestConfigErrors(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Redis, nil) // ACL users of its own
	ctx := backendtest.Context(t)
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	for _, acl := range [][]any{
		{"ACL", "SETUSER", "otherkeys", "on", ">x", "~other:*", "&*", "+@all"},
		{"ACL", "SETUSER", "readonly", "on", ">x", "~*", "&*", "+@read", "+@scripting"},
		{"ACL", "SETUSER", "nochan", "on", ">x", "~*", "resetchannels", "+@all"},
	} {
		if err := admin.Do(ctx, acl...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// A replica of a master that is not there: reads answer, writes READONLY.
	replica := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Args: []string{"--replicaof", "127.0.0.1", "1"}})
	noEval := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Args: []string{"--rename-command", "EVAL", ""}})
	web := httptest.NewServer(http.NotFoundHandler())
	defer web.Close()

	open := func(t *testing.T, u string) {
		t.Helper()
		c, err := claim.Open(ctx, u)
		if err == nil {
			c.Close()
			t.Fatal("Open succeeded")
		}
		if !errors.Is(err, claim.ErrConfig) {
			t.Errorf("Open: %v, want ErrConfig", err)
		}
		if strings.Contains(err.Error(), ":x@") {
			t.Errorf("Open's error shows the password: %v", err)
		}
	}
	for name, u := range map[string]string{
		"keys outside the ACL":     "redis://otherkeys:x@" + srv.Addr() + "/0",
		"read-only ACL user":       "redis://readonly:x@" + srv.Addr() + "/0",
		"channels outside the ACL": "redis://nochan:x@" + srv.Addr() + "/0",
		"replica":                  "redis://" + replica.Addr() + "/0",
		"no EVAL":                  "redis://" + noEval.Addr() + "/0",
		"no such database":         "redis://" + srv.Addr() + "/9999",
		"cluster URL, standalone":  "redis://" + srv.Addr() + "/0?cluster=true",
		"HTTP server":              "redis://" + strings.TrimPrefix(web.URL, "http://") + "/0",
	} {
		t.Run(name, func(t *testing.T) { open(t, u) })
	}
	t.Run("memcached", func(t *testing.T) {
		open(t, "redis://"+testserver.Shared(t, testserver.Memcache).Addr()+"/0")
	})
	t.Run("replica, lazily", func(t *testing.T) {
		c := backendtest.Open(t, "redis://"+replica.Addr()+"/0?lazy=true")
		if _, err := c.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("TryClaim on a replica: %v, want ErrUnavailable (READONLY outside Open and Ping)", err)
		}
	})
}

// TestNewChecks: New checks the server (ErrConfig for a wrong password,
// ErrUnavailable for none there) and, failing, leaves the caller's client
// open even with CloseClient; with Lazy it does no I/O. A client that
// ignores its context's deadline (ContextTimeoutEnabled off, no read
// timeout) still has every call bounded by the operation timeout.
func TestNewChecks(t *testing.T) {
	const pw = "new-S3cret"
	srv := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Password: pw})
	ctx := backendtest.Context(t)
	rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "wrong-" + pw, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer rdb.Close()
	if _, err := redis.New(rdb, &redis.Options{CloseClient: true}); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("New with a wrong password: %v, want ErrConfig", err)
	}
	if err := rdb.Ping(ctx).Err(); errors.Is(err, goredis.ErrClosed) {
		t.Error("a failed New closed the caller's client")
	}
	lazy, err := redis.New(rdb, &redis.Options{Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatalf("New lazily: %v", err)
	}
	defer lazy.Close()
	if _, err := lazy.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Get on the lazy client: %v, want ErrConfig", err)
	}

	gone := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
	defer gone.Close()
	if _, err := redis.New(gone, nil); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("New with no server: %v, want ErrUnavailable", err)
	}

	const opTimeout = 300 * time.Millisecond
	deaf := goredis.NewClient(&goredis.Options{Addr: securitytest.Unresponsive(t), MaxRetries: -1, ReadTimeout: -1, WriteTimeout: -1})
	t.Cleanup(func() { deaf.Close() })
	for _, lazy := range []bool{false, true} {
		start := time.Now()
		c, err := redis.New(deaf, &redis.Options{Client: &claim.Options{OpTimeout: opTimeout, Lazy: lazy}})
		if err == nil {
			start = time.Now()
			_, err = c.Get(context.Background(), "k")
			c.Close()
		}
		if d := time.Since(start); !errors.Is(err, claim.ErrUnavailable) || d > opTimeout+time.Second {
			t.Errorf("lazy=%v: %v after %s, want ErrUnavailable within %s", lazy, err, d.Round(time.Millisecond), opTimeout+time.Second)
		}
	}
}
