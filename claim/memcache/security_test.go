package memcache

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLS runs against a memcached (built with TLS, started with -Z) that
// requires a client certificate from its CA: through the URL
// (tls=true&cacert=&cert=&key=) and through the user's own client, whose
// DialContext hook wraps the connection in TLS. memcached's text protocol
// has no authentication (SASL is binary-protocol only and gomemcache does
// not speak it): TLS client certificates are the way to restrict it.
func TestTLS(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Memcache, &testserver.Options{TLS: true})
	securitytest.RoundtripURLAndNew(t, srv.URL(), func(t *testing.T) (*claim.Client, error) {
		c := gomemcache.New(srv.Addr())
		c.DialContext = (&tls.Dialer{Config: backendtest.ClientTLS(t, srv)}).DialContext
		t.Cleanup(func() { c.Close() })
		return New(c, nil)
	})
	securitytest.Refused(t, securitytest.TLSRefusals(t, srv.URL(), "memcache"), "", 10*time.Second)
}

// TestDialHook: a client given to New connects only through its own
// DialContext (here: to an in-test proxy, whatever address the client was
// given), so any transport the user needs (TLS, a tunnel, a sidecar) works.
func TestDialHook(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	p := securitytest.NewProxy(t, srv.Addr())
	c := gomemcache.New("192.0.2.1:11211") // TEST-NET-1: unreachable
	c.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, p.Addr())
	}
	defer c.Close()
	b, err := New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	securitytest.Roundtrip(t, b)
	if p.Accepted() == 0 {
		t.Error("the client did not dial through its DialContext")
	}
}

// TestLongKeys: keys around memcached's 250-byte limit (prefix and role
// included), where the readable form gives way to the hashed one, work
// against the server and stay distinct. (Value limits and very long keys:
// the conformance suite.)
func TestLongKeys(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	c := backendtest.Open(t, srv.URL())
	m := drv(c).enc.MaxLen
	securitytest.LongKeys(t, c, []int{m - 2, m - 1, m, m + 1, 249, 250, 251})
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	securitytest.Hostile(t, backendtest.Open(t, srv.URL()))
}

// FuzzKeyNames: every item key is at most 250 bytes of bytes memcached
// accepts (no space or control character), with the default prefix and
// with the longest prefix allowed, and two keys never share an item.
func FuzzKeyNames(f *testing.F) {
	short, _ := newBackend(gomemcache.New("127.0.0.1:1"), Options{})
	long, _ := newBackend(gomemcache.New("127.0.0.1:1"), Options{Prefix: strings.Repeat("p", 200)})
	f.Cleanup(func() { short.Close(); long.Close() })
	securitytest.FuzzKeys(f, 239, func(t *testing.T, k1, k2 string) {
		for _, b := range []*backend{short, long} {
			names := func(k string) []string {
				return []string{b.item('l', k), b.item('f', k), b.item('n', k), b.item('v', k)}
			}
			securitytest.CheckEncoding(t, k1, k2, names, maxKeyLen, safeByte)
		}
	}, "a b", "a_b", "\x00", "\n")
}
