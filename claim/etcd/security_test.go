package etcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLSAndAuth runs against an etcd that accepts only TLS clients with a
// certificate from its CA (--client-cert-auth) and has authentication
// enabled (user alice with read-write access to every key): through the
// URL (etcds://USER:PASSWORD@...?cacert=&cert=&key=) and through the
// user's own client given to New.
func TestTLSAndAuth(t *testing.T) {
	const user, pw = "alice", "alice-S3cret"
	srv := testserver.RequireWith(t, testserver.Etcd, &testserver.Options{TLS: true, User: user, Password: pw})
	t.Run("URL", func(t *testing.T) {
		u, _ := url.Parse(srv.URL())
		u.Path = "/tls-url"
		securitytest.Roundtrip(t, open(t, u.String()))
	})
	t.Run("New", func(t *testing.T) {
		tc, err := srv.TLS().ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints: []string{"https://" + srv.Addr()}, TLS: tc, Username: user, Password: pw,
			DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		})
		if err != nil {
			t.Fatal(err)
		}
		defer cli.Close()
		b, err := New(cli, &Options{Prefix: "tls-new"})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		securitytest.Roundtrip(t, b)
	})
	u, _ := url.Parse(srv.URL())
	q := u.Query()
	with := func(scheme string, user *url.Userinfo, params url.Values) string {
		v := *u
		v.Scheme, v.User = scheme, user
		params.Set("dialtimeout", "3s")
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
			b, err := claim.Open(ctx, raw)
			if err == nil {
				defer b.Close()
				_, err = b.TryClaim(ctx, "k", time.Second)
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

// TestLimits: values and Publish messages up to DefaultMaxValueLen go
// through a default etcd (1.5 MiB requests) even under the longest prefix,
// one byte more is ErrTooLarge before any I/O, and etcd itself refuses a
// request over its limit; keys around the 512-byte readable limit are
// hashed and stay distinct.
func TestLimits(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	b := open(t, srv.URL()+"/"+strings.Repeat("p", MaxPrefixLen))
	securitytest.ValueLimit(t, b, DefaultMaxValueLen)
	b2 := open(t, srv.URL()+"/"+strings.Repeat("p", MaxPrefixLen))
	securitytest.PublishLimit(t, b, b2, func(string) int { return DefaultMaxValueLen })
	securitytest.LongKeys(t, b, []int{510, 511, 512, 513, 100000})
	if _, err := b.cli.Put(context.Background(), "raw", strings.Repeat("x", RequestLimit)); err == nil {
		t.Errorf("etcd accepted a request over %d bytes: RequestLimit is not the server's", RequestLimit)
	}

	p := securitytest.NewProxy(t, srv.Addr())
	dead := open(t, fmt.Sprintf("etcd://%s/limits?dialtimeout=1s", p.Addr()))
	l, err := dead.TryClaim(context.Background(), securitytest.Unique(t)+"k", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p.Cut()
	securitytest.OverLimitNoIO(t, dead, DefaultMaxValueLen, l, DefaultMaxValueLen)
}

// TestIsolation: two prefixes on one cluster never touch each other, nor
// do a prefix and one nested in it.
func TestIsolation(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	securitytest.Isolation(t, open(t, srv.URL()+"/app-a"), open(t, srv.URL()+"/app-b"))
	securitytest.Isolation(t, open(t, srv.URL()+"/nest"), open(t, srv.URL()+"/nest/c"))
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Etcd)
	securitytest.Hostile(t, open(t, srv.URL()+"/hostile"))
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
	b := &Backend{prefix: DefaultPrefix}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
		names := func(k string) []string { return []string{b.lockKey(k), b.valueKey(k)} }
		securitytest.CheckEncoding(t, k1, k2, names, len(DefaultPrefix)+3+maxKeyLen, func(c byte) bool { return c >= 0x20 && c != 0x7f })
	})
}
