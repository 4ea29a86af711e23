package etcd

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLSAndAuth runs against an etcd that accepts only TLS clients with a
// certificate from its CA (--client-cert-auth) and has authentication
// enabled (user alice with read-write access to every key): through the
// URL (etcds://USER:PASSWORD@...?cacert=&cert=&key=) and through the
// user's own client given to New. The round trips prove that TLS and
// etcd's authentication really carry the traffic (the conformance suite
// runs on a plain server).
func TestTLSAndAuth(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.Etcd, &testserver.Options{TLS: true, User: user, Password: pw})
	t.Run("URL", func(t *testing.T) {
		securitytest.Roundtrip(t, backendtest.Open(t, withPrefix(t, srv, "tls-url")))
	})
	t.Run("New", func(t *testing.T) {
		tc, err := srv.TLS().ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cli := userClient(t, clientv3.Config{Endpoints: []string{"https://" + srv.Addr()}, TLS: tc, Username: user, Password: pw})
		c, err := New(cli, &Options{Prefix: "tls-new"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		securitytest.Roundtrip(t, c)
	})
	u, _ := url.Parse(srv.URL())
	q := u.Query()
	with := func(scheme string, user *url.Userinfo, params url.Values) string {
		v := *u
		v.Scheme, v.User = scheme, user
		params.Set("dial_timeout", "3s")
		params.Set("minttl", "1s") // no lease grant at open: the first call fails instead
		v.RawQuery = params.Encode()
		return v.String()
	}
	for name, raw := range map[string]string{
		"wrong password":        with("etcds", url.UserPassword(user, "wrong-"+pw), q),
		"certificate, no user":  with("etcds", nil, q), // the certificate's CN is no etcd user
		"no client certificate": with("etcds", url.UserPassword(user, pw), url.Values{"cacert": q["cacert"]}),
		"system roots":          with("etcds", url.UserPassword(user, pw), url.Values{"cert": q["cert"], "key": q["key"]}),
		"plain text":            with("etcd", url.UserPassword(user, pw), url.Values{}),
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := claim.Open(ctx, raw)
			if err == nil {
				defer c.Close()
				_, err = c.TryClaim(ctx, "k", time.Second)
			}
			if err == nil || errors.Is(err, claim.ErrHeld) {
				t.Fatalf("TryClaim: %v, want a TLS or authentication error", err)
			}
			if strings.Contains(err.Error(), pw) {
				t.Errorf("error shows the password: %v", err)
			}
		})
	}
}

// TestLimits: a value of exactly DefaultMaxValueLen goes through a
// default etcd (1.5 MiB requests) in every write path even under the
// longest prefix and a 511-byte key, so the limit the Client enforces is
// not more than etcd accepts; Publish messages up to the same limit are
// delivered, one byte more is ErrTooLarge from the driver; and etcd itself
// refuses a request over RequestLimit.
func TestLimits(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	ctx := context.Background()
	long := withPrefix(t, srv, strings.Repeat("p", MaxPrefixLen))
	c := backendtest.Open(t, long)
	u := securitytest.Unique(t)
	key := u + strings.Repeat("k", maxKeyLen-1-len(u)) // the longest key kept readable
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
	if got, err := c.Get(ctx, key); err != nil || !bytes.Equal(got, v) {
		t.Errorf("Get of DefaultMaxValueLen: %d bytes, %v", len(got), err)
	}
	securitytest.PublishLimit(t, c, backendtest.Open(t, long), func(string) int { return DefaultMaxValueLen })
	if _, err := drv(c).cli.Put(ctx, "raw", strings.Repeat("x", RequestLimit)); err == nil {
		t.Errorf("etcd accepted a request over %d bytes: RequestLimit is not the server's", RequestLimit)
	}
}

// TestIsolation: a prefix and one nested in it ("nest" and "nest/c", whose
// keys share a beginning) never touch each other. (Two unrelated prefixes
// are the conformance suite's OpenIsolated.)
func TestIsolation(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	securitytest.Isolation(t, backendtest.Open(t, withPrefix(t, srv, "nest")), backendtest.Open(t, withPrefix(t, srv, "nest/c")))
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	securitytest.Hostile(t, backendtest.Open(t, withPrefix(t, srv, "hostile")))
}

// FuzzKeyNames: lock and value keys hold at most 512 bytes of encoded key
// without control characters after the prefix, and two keys never share
// a name.
func FuzzKeyNames(f *testing.F) {
	f.Add("a", "b")
	f.Add("a\x00", "a")
	f.Add("=a", "a")
	f.Add(strings.Repeat("k", 511), strings.Repeat("k", 512))
	f.Add("x/v/=y", "x")
	b := &backend{prefix: DefaultPrefix}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
		names := func(k string) []string { return []string{b.lockKey(k), b.valueKey(k)} }
		securitytest.CheckEncoding(t, k1, k2, names, len(DefaultPrefix)+3+maxKeyLen, func(c byte) bool { return c >= 0x20 && c != 0x7f })
	})
}
