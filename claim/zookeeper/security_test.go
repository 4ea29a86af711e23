package zookeeper

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestDigestAuthNew: digest authentication on the user's own connection
// given to New, with creator-only ACLs, works; New on an anonymous
// connection on the same prefix fails with ErrConfig, and made lazily it
// can read and write nothing; creator-only ACLs on an anonymous
// connection are ErrConfig too. (TestAuth does the same through the URL.)
func TestDigestAuthNew(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	prefix := chroot(t, "digest-new")[1:]
	conn, _, err := zk.Connect([]string{srv.Addr()}, 10*time.Second, zk.WithLogInfo(false), zk.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.AddAuth("digest", []byte("bob:b0b-S3cret")); err != nil {
		t.Fatal(err)
	}
	b, err := New(conn, &Options{Prefix: prefix, ACL: zk.AuthACL(zk.PermAll)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.Roundtrip(t, b) // on a digest-authenticated session
	ctx := backendtest.Context(t)
	if err := b.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	anonConn := raw(t, srv)
	if c, err := New(anonConn, &Options{Prefix: prefix}); !errors.Is(err, claim.ErrConfig) {
		if err == nil {
			c.Close()
		}
		t.Errorf("New on an anonymous connection: %v, want ErrConfig", err)
	}
	if _, _, err := anonConn.Exists("/"); err != nil {
		t.Errorf("the caller's connection after a failed New: %v", err)
	}
	// Creator-only ACLs need credentials on the session (zk.ErrInvalidACL).
	if c, err := New(anonConn, &Options{Prefix: chroot(t, "digest-new-acl")[1:], ACL: zk.AuthACL(zk.PermAll)}); !errors.Is(err, claim.ErrConfig) || !errors.Is(err, zk.ErrInvalidACL) {
		if err == nil {
			c.Close()
		}
		t.Errorf("New with an auth ACL on an anonymous connection: %v, want ErrConfig (zk.ErrInvalidACL)", err)
	}
	anon, err := New(anonConn, &Options{Prefix: prefix, Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Get(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("anonymous Get: %v, want ErrConfig", err)
	}
	if _, err := anon.TryClaim(ctx, "k2", time.Second); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("anonymous TryClaim: %v, want ErrConfig", err)
	}
}

// TestLimits: Publish'd messages up to DefaultMaxValueLen go through a
// default server (jute.maxbuffer 1 MiB), one byte more is ErrTooLarge,
// before any I/O: the Client does not check messages, the driver does.
// Values are checked by the conformance suite (TooLarge), keys by Keys.
func TestLimits(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	b, b2 := open(t, srv, "limits"), open(t, srv, "limits")
	securitytest.PublishLimit(t, b, b2, func(string) int { return DefaultMaxValueLen })
	dead, p := openCut(t, srv, "limits-dead")
	p.Cut()
	securitytest.OverLimitNoIO(t, dead, DefaultMaxValueLen, claim.Lease{}, DefaultMaxValueLen)
}

// TestNestedIsolation: a namespace nested in another's lock directory
// (a chroot under /CHROOT/stampede/l) never touches it. (Two sibling
// prefixes are checked by the conformance suite: Isolation.)
func TestNestedIsolation(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	nest := srv.URL() + chroot(t, "nest")
	securitytest.Isolation(t, backendtest.Open(t, nest), backendtest.Open(t, nest+"/stampede/l"))
}

// TestHostileValues: bytes written into L2 by someone else read as misses
// (the backend's own value header included: a value node that is not in
// its format must not panic the backend).
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	securitytest.Hostile(t, open(t, srv, "hostile"))
}

// FuzzKeyNames: the encoded key is one valid znode name (at most 255
// bytes of printable ASCII, no '/', never "." or ".."), and two keys never
// share a znode.
func FuzzKeyNames(f *testing.F) {
	securitytest.FuzzKeys(f, 254, func(t *testing.T, k1, k2 string) {
		names := func(k string) []string {
			e := keys.Encode(k)
			if e == "." || e == ".." || e == "zookeeper" {
				t.Fatalf("key %q encodes to the reserved name %q", k, e)
			}
			return []string{e}
		}
		securitytest.CheckEncoding(t, k1, k2, names, maxKeyLen, func(c byte) bool { return safeName(c) })
	}, ".", "..", "a/b", "a_b", "zookeeper", "=zookeeper")
}

// TestTLS runs against a ZooKeeper whose client port speaks only TLS
// (Netty, secureClientPort) and requires a client certificate from its
// CA: through the URL (tls=true&cacert=&cert=&key=, or skip_verify=true
// instead of cacert) and through the user's own connection (zk.WithDialer
// with a TLS dialer) given to New; plain text, no client certificate and
// an unknown CA are refused.
func TestTLS(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.ZooKeeper, &testserver.Options{TLS: true})
	// A fresh server's first TLS handshakes can take about go-zk's fixed
	// 1s dial timeout on a loaded machine: allow more.
	securitytest.RoundtripURLAndNew(t, backendtest.WithQuery(t, srv.URL(), "dial_timeout", "10s"), func(t *testing.T) (*claim.Client, error) {
		tc := backendtest.ClientTLS(t, srv)
		dial := func(network, addr string, timeout time.Duration) (net.Conn, error) {
			return tls.DialWithDialer(&net.Dialer{Timeout: max(timeout, 10*time.Second)}, network, addr, tc)
		}
		conn, _, err := zk.Connect([]string{srv.Addr()}, 10*time.Second, zk.WithDialer(dial), zk.WithLogInfo(false), zk.WithLogger(quiet))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		return New(conn, &Options{Prefix: chroot(t, "tls-new")[1:]})
	})
	refused := securitytest.TLSRefusals(t, srv.URL(), "zookeeper")
	t.Run("skip_verify", func(t *testing.T) {
		// What the system roots refuse, skip_verify takes.
		raw := backendtest.WithQuery(t, refused["system roots"], "skip_verify", "true", "dial_timeout", "10s", "prefix", chroot(t, "tls-skip")[1:])
		securitytest.Roundtrip(t, backendtest.Open(t, raw))
	})
	securitytest.Refused(t, refused, "", 3*time.Second)
}
