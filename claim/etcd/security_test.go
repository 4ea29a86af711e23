package etcd

import (
	"bytes"
	"context"
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
	securitytest.RoundtripURLAndNew(t, withPrefix(t, srv, "tls-url"), func(t *testing.T) (*claim.Client, error) {
		cfg := clientv3.Config{Endpoints: []string{"https://" + srv.Addr()}, TLS: backendtest.ClientTLS(t, srv), Username: user, Password: pw}
		return New(userClient(t, cfg), &Options{Prefix: "tls-new"})
	})
	// No lease grant at open (minttl): the first call fails instead.
	good := backendtest.WithQuery(t, srv.URL(), "dial_timeout", "3s", "minttl", "1s")
	refused := securitytest.TLSRefusals(t, good, "etcd")
	// The client certificate's CN is no etcd user.
	refused["certificate, no user"] = strings.Replace(good, user+":"+pw+"@", "", 1)
	securitytest.Refused(t, refused, pw, 10*time.Second)
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
	if _, err := drv(c).cli.Load().Put(ctx, "raw", strings.Repeat("x", RequestLimit)); err == nil {
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
	b := &backend{prefix: DefaultPrefix}
	names := func(k string) []string { return []string{b.lockKey(k), b.valueKey(k)} }
	securitytest.FuzzKeys(f, 511, func(t *testing.T, k1, k2 string) {
		securitytest.CheckEncoding(t, k1, k2, names, len(DefaultPrefix)+3+maxKeyLen, func(c byte) bool { return c >= 0x20 && c != 0x7f })
	}, "a\x00", "a", "x/v/=y", "x")
}
