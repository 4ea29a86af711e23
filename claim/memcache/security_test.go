package memcache

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
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

// TestNoHang: against a server that accepts connections and never
// answers, Open, every Client method and Close return within the
// operation timeout (+1 s), with ErrUnavailable: by gomemcache's own
// Timeout (io_timeout, 500 ms), and by the operation timeout when
// io_timeout is longer (the calls are then abandoned, see do).
func TestNoHang(t *testing.T) {
	t.Run("io_timeout", func(t *testing.T) {
		securitytest.NoHang(t, "memcache://"+securitytest.Unresponsive(t))
	})
	t.Run("io_timeout longer than op_timeout", func(t *testing.T) {
		securitytest.NoHang(t, "memcache://"+securitytest.Unresponsive(t)+"?io_timeout=20s")
	})
}

// httpServer starts a plain HTTP server (another kind of server at the
// address) and returns its host:port.
func httpServer(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestConfigRefused: what memcached's text protocol has for credentials
// (it has no authentication; TLS client certificates restrict it), and
// a server of another kind at the address, fail Open with ErrConfig; a
// lazily opened Client's Get too, and flight on it never runs its loader.
func TestConfigRefused(t *testing.T) {
	t.Run("not memcached", func(t *testing.T) {
		securitytest.ConfigRefused(t, "memcache://"+httpServer(t), "")
	})
	srv := testserver.RequireWith(t, testserver.Memcache, &testserver.Options{TLS: true})
	refusals := securitytest.TLSRefusals(t, srv.URL(), "memcache")
	for _, name := range []string{"no client certificate", "system roots"} {
		t.Run(name, func(t *testing.T) { securitytest.ConfigRefused(t, refusals[name], "") })
	}
}

// TestNewChecks: New checks the servers of the client it is given
// (unless lazy), and a failed check leaves that client usable.
func TestNewChecks(t *testing.T) {
	mc := gomemcache.New(httpServer(t))
	if _, err := New(mc, nil); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("New on a server of another kind: %v, want ErrConfig", err)
	}
	if c, err := New(mc, &Options{Client: &claim.Options{Lazy: true}}); err != nil {
		t.Errorf("New lazy: %v", err)
	} else {
		c.Close()
	}
	srv := testserver.Shared(t, testserver.Memcache)
	mc = gomemcache.New(srv.Addr())
	if _, err := New(mc, &Options{Client: &claim.Options{OpTimeout: time.Nanosecond}}); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("New with a check that cannot finish in time: %v, want ErrUnavailable", err)
	}
	if err := mc.Set(&gomemcache.Item{Key: "new-checks", Value: []byte("v")}); err != nil {
		t.Errorf("the client given to New, after New failed: %v", err)
	}
}

// TestSubscriptions: a subscription whose server goes away is woken (its
// poll fails), and the re-check meets ErrUnavailable; Subscribe on a
// server of another kind fails with ErrConfig instead of waiting.
func TestSubscriptions(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	p := securitytest.NewProxy(t, srv.Addr())
	c := backendtest.Open(t, "memcache://"+p.Addr())
	s := backendtest.Subscribe(t, c, "server-gone")
	p.Cut()
	if !backendtest.Woken(s, 15*time.Second) {
		t.Fatal("the subscriber was not woken when its server went away")
	}
	if _, err := c.Get(backendtest.Context(t), "server-gone"); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("Get with the server gone: %v, want ErrUnavailable", err)
	}

	bad := backendtest.Open(t, "memcache://"+httpServer(t)+"?lazy=true")
	if s, err := bad.Subscribe(backendtest.Context(t), "k"); !errors.Is(err, claim.ErrConfig) {
		if err == nil {
			s.Close()
		}
		t.Errorf("Subscribe on a server of another kind: %v, want ErrConfig", err)
	}
}
