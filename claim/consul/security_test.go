package consul_test

import (
	"context"
	"errors"
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
	t.Run("URL", func(t *testing.T) {
		securitytest.Roundtrip(t, backendtest.Open(t, srv.URL()))
	})
	t.Run("New", func(t *testing.T) {
		cfg := capi.DefaultConfig()
		cfg.Address, cfg.Scheme, cfg.Token = srv.Addr(), "https", token
		cfg.TLSConfig = capi.TLSConfig{CAFile: srv.TLS().CAFile, CertFile: srv.TLS().CertFile, KeyFile: srv.TLS().KeyFile}
		c, err := capi.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		b, err := consul.New(c, &consul.Options{Prefix: "tls-new"})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		securitytest.Roundtrip(t, b)
	})
	u, _ := url.Parse(srv.URL())
	q := u.Query()
	with := func(scheme string, params url.Values) string {
		v := *u
		v.Scheme = scheme
		v.RawQuery = params.Encode()
		return v.String()
	}
	drop := func(names ...string) url.Values {
		p := url.Values{}
		for k, v := range q {
			p[k] = v
		}
		for _, n := range names {
			p.Del(n)
		}
		return p
	}
	wrong := drop()
	wrong.Set("token", "wrong-"+token)
	withServerName := func(p url.Values, name string) url.Values {
		p.Set("servername", name)
		return p
	}
	for name, raw := range map[string]string{
		"no token":              with("consuls", drop("token")),
		"wrong token":           with("consuls", wrong),
		"no client certificate": with("consuls", drop("cert", "key")),
		"system roots":          with("consuls", drop("cacert")),
		"wrong server name":     with("consuls", withServerName(drop(), "other.example")),
		"plain text":            with("consul", url.Values{"token": {token}}),
	} {
		t.Run(name, func(t *testing.T) {
			b := backendtest.Open(t, raw)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := b.TryClaim(ctx, "k", time.Second)
			if err == nil || errors.Is(err, claim.ErrHeld) {
				t.Fatalf("TryClaim: %v, want a TLS or permission error", err)
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error shows the token: %v", err)
			}
		})
	}
}

// TestHostileValues: bytes written into L2 by someone else read as misses.
func TestHostileValues(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	securitytest.Hostile(t, backendtest.Open(t, uniq(t, srv)))
}

// FuzzKeyNames: the encoded key in every KV key is one path segment of at
// most 256 bytes that needs no escaping, and two keys never share a KV key.
func FuzzKeyNames(f *testing.F) {
	f.Add("a", "b")
	f.Add("a/b", "a_b")
	f.Add("=a", "a")
	f.Add("..", "%2e")
	f.Add(strings.Repeat("k", 255), strings.Repeat("k", 256))
	c, err := capi.NewClient(capi.DefaultConfig())
	if err != nil {
		f.Fatal(err)
	}
	b, err := consul.New(c, &consul.Options{Prefix: "p"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
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
	})
}
