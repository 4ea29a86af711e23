package redis_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
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
	ctx := context.Background()

	// Roundtrip stays although the conformance suite covers the same
	// operations: the suite runs in plain text, this is TLS with an ACL
	// user, through the URL's TLS parameters and through New.
	t.Run("URL", func(t *testing.T) {
		securitytest.Roundtrip(t, backendtest.Open(t, srv.URL()))
	})
	t.Run("New", func(t *testing.T) {
		tc, err := srv.TLS().ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		rdb := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Username: user, Password: pw, TLSConfig: tc, MaxRetries: -1})
		defer rdb.Close()
		c, err := redis.New(rdb, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		securitytest.Roundtrip(t, c)
	})

	u, _ := url.Parse(srv.URL())
	q := u.Query()
	bad := map[string]string{}
	// Wrong password, no user (the default user is off), no client
	// certificate, no TLS at all, an unknown CA.
	wrong := *u
	wrong.User = url.UserPassword(user, "wrong-"+pw)
	bad["wrong password"] = wrong.String()
	anon := *u
	anon.User = url.UserPassword("", pw)
	bad["default user"] = anon.String()
	nocert := *u
	nq := url.Values{"cacert": q["cacert"]}
	nocert.RawQuery = nq.Encode()
	bad["no client certificate"] = nocert.String()
	plain := *u
	plain.Scheme = "redis"
	plain.RawQuery = ""
	bad["plain text"] = plain.String()
	sysroots := *u
	sysroots.RawQuery = url.Values{"cert": q["cert"], "key": q["key"]}.Encode()
	bad["system roots"] = sysroots.String()
	for name, raw := range bad {
		t.Run(name, func(t *testing.T) {
			b := backendtest.Open(t, backendtest.WithQuery(t, raw, "dial_timeout", "2s", "read_timeout", "2s"))
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			_, err := b.TryClaim(cctx, "k", time.Second)
			if err == nil || errors.Is(err, claim.ErrHeld) {
				t.Fatalf("TryClaim: %v, want a TLS or authentication error", err)
			}
			if strings.Contains(err.Error(), pw) {
				t.Errorf("error shows the password: %v", err)
			}
		})
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
	f.Add("a", "b")
	f.Add("{a}", "a")
	f.Add("=a", "a")
	f.Add(strings.Repeat("k", 255), strings.Repeat("k", 256))
	f.Add("a}:lock", "a")
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
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
	})
}
