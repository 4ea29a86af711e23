package consul_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestTLSAndACL runs against a Consul agent that serves HTTPS only,
// requires a client certificate from its CA (verify_incoming), and has
// ACLs on with default policy deny: through the URL
// (consuls://...?token=&cacert=&cert=&key=) and through the user's own
// client given to New.
func TestTLSAndACL(t *testing.T) {
	const token = "mgmt-S3cret-token"
	srv := testserver.RequireWith(t, testserver.Consul, &testserver.Options{TLS: true, Password: token})
	securitytest.RoundtripURLAndNew(t, srv.URL(), func(t *testing.T) (*claim.Client, error) {
		cfg := capi.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token = srv.Addr(), "https", token
		cfg.TLSConfig = capi.TLSConfig{CAFile: srv.TLS().CAFile, CertFile: srv.TLS().CertFile, KeyFile: srv.TLS().KeyFile}
		c, err := capi.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return consul.New(c, &consul.Options{Prefix: "tls-new"})
	})
	refused := securitytest.TLSRefusals(t, srv.URL(), "consul")
	u, _ := url.Parse(srv.URL())
	q := u.Query()
	q.Del("token")
	u.RawQuery = q.Encode()
	refused["no token"] = u.String()
	refused["wrong token"] = backendtest.WithQuery(t, srv.URL(), "token", "wrong-"+token)
	refused["wrong server name"] = backendtest.WithQuery(t, srv.URL(), "servername", "other.example")
	securitytest.Refused(t, refused, token, 10*time.Second)
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	securitytest.Hostile(t, backendtest.Open(t, uniq(t, srv)))
}

// FuzzKeyNames: the encoded key in every KV key is one path segment of at
// most 256 bytes that needs no escaping, and two keys never share a KV key.
func FuzzKeyNames(f *testing.F) {
	c, err := capi.NewClient(capi.DefaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	b, err := consul.New(c, &consul.Options{Prefix: "p", Client: &claim.Options{Lazy: true}})
	if err != nil {
		f.Fatal(err)
	}
	securitytest.FuzzKeys(f, 255, func(t *testing.T, k1, k2 string) {
		segments := func(k string) []string {
			var out []string
			for _, n := range consul.NamesForTest(b, k) {
				parts := strings.Split(n, "/")
				if len(parts) < 3 || parts[0] != "p" {
					t.Fatalf("KV key %q of key %q: not under the prefix", n, k)
				}
				out = append(out, parts[2]) // p/c/ENC/lock, p/c/ENC/notify, p/v/ENC
			}
			return out[:1]
		}
		// Readable keys use safe bytes only; hashed ones start with '#',
		// which consul/api escapes in the request path (TestLimits and
		// conformance's Keys round-trip hashed keys through the agent).
		securitytest.CheckEncoding(t, k1, k2, segments, 256, func(c byte) bool { return consul.SafeKeyByte(c) || c == '#' })
		securitytest.CheckEncoding(t, k1, k2, func(k string) []string { return consul.NamesForTest(b, k) }, 0, nil)
	}, "a/b", "a_b", "..", "%2e")
}
