package redis_test

import (
	"context"
	"fmt"
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
