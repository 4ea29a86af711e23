package consul_test

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
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

// TestNoHang: against a server that accepts connections and never
// answers, Open fails with ErrUnavailable within the operation timeout,
// and every method of a Client opened with lazy=true (every request
// carries its call's context) returns within it.
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "consul://"+securitytest.Unresponsive(t)+"/?prefix=nohang")
}

// aclServer starts an agent with ACLs on (default deny, management token
// mgmt) and returns it with a management client.
func aclServer(t *testing.T, mgmt string) (*testserver.Server, *capi.Client) {
	t.Helper()
	srv := testserver.RequireWith(t, testserver.Consul, &testserver.Options{Password: mgmt})
	cfg := capi.DefaultConfig()
	cfg.Address, cfg.Token = srv.Addr(), mgmt
	c, err := capi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return srv, c
}

// token makes an ACL token whose policy has rules, and returns its
// secret.
func token(t *testing.T, mgmt *capi.Client, name, rules string) string {
	t.Helper()
	if _, _, err := mgmt.ACL().PolicyCreate(&capi.ACLPolicy{Name: name, Rules: rules}, nil); err != nil {
		t.Fatal(err)
	}
	tok, _, err := mgmt.ACL().TokenCreate(&capi.ACLToken{Policies: []*capi.ACLTokenPolicyLink{{Name: name}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}

// TestConfigRefused: a token the agent does not know (403 "ACL not
// found") fails Open with ErrConfig; opened lazily, Get does, and a
// flight cache on it returns the error without loading.
func TestConfigRefused(t *testing.T) {
	const mgmt = "mgmt-S3cret-token"
	srv, _ := aclServer(t, mgmt)
	securitytest.ConfigRefused(t, backendtest.WithQuery(t, srv.URL(), "token", "wrong-"+mgmt, "prefix", "refused"), "wrong-"+mgmt)
}

// TestConfigErrors: every configuration error Consul has fails Open with
// ErrConfig: no token on an agent that denies by default, a token
// without read access to the prefix (403 "Permission denied"), an HTTP
// server of another kind (404 without X-Consul-Index, 200 with no JSON,
// 400 to every request), a server that does not speak HTTP. Opened
// lazily, Subscribe and Set meet the same errors.
func TestConfigErrors(t *testing.T) {
	const mgmt = "mgmt-S3cret-token"
	srv, admin := aclServer(t, mgmt)
	others := token(t, admin, "others", `key_prefix "other/" { policy = "write" }`)

	notFound := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(notFound.Close)
	text := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello") }))
	t.Cleanup(text.Close)
	notHTTP := lineServer(t, "-ERR unknown command\r\n")

	withToken := func(tok string) string { return backendtest.WithQuery(t, srv.URL(), "token", tok, "prefix", "mine") }
	for name, u := range map[string]string{
		"no token":            backendtest.WithQuery(t, withToken(""), "token", ""),
		"no permission":       withToken(others),
		"an HTTP 404 server":  "consul://" + notFound.Listener.Addr().String() + "/?prefix=mine",
		"an HTTP text server": "consul://" + text.Listener.Addr().String() + "/?prefix=mine",
		"not an HTTP server":  "consul://" + notHTTP + "/?prefix=mine",
		"an HTTP 400 server":  "consul://" + securitytest.AnswersHTTP(t) + "/?prefix=mine",
	} {
		t.Run(name, func(t *testing.T) {
			ctx := backendtest.Context(t)
			c, err := claim.Open(ctx, u)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, claim.ErrConfig) || strings.Contains(err.Error(), others) {
				t.Errorf("Open: %v, want ErrConfig (without the token)", err)
			}
			securitytest.SubscribeRefused(t, u)
			c = backendtest.Open(t, backendtest.WithQuery(t, u, "lazy", "true"))
			if err := c.Set(ctx, "k", []byte("v"), 0); !errors.Is(err, claim.ErrConfig) {
				t.Errorf("Set: %v, want ErrConfig", err)
			}
		})
	}
	// The token's own prefix works.
	c := backendtest.Open(t, backendtest.WithQuery(t, withToken(others), "prefix", "other"))
	if err := c.Set(backendtest.Context(t), "k", []byte("v"), 0); err != nil {
		t.Errorf("Set under the prefix the token may write: %v", err)
	}
}

// lineServer starts a TCP server that answers every connection's first
// bytes with line and closes it: a server of another kind.
func lineServer(t *testing.T, line string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Read(make([]byte, 512))
			_, _ = io.WriteString(c, line)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

// TestReadOnlyToken: Ping checks read access only (Consul has no dry run
// for a write), so a token that can read the prefix but not write it
// opens; its first claim or write fails with ErrConfig.
func TestReadOnlyToken(t *testing.T) {
	const mgmt = "mgmt-S3cret-token"
	srv, admin := aclServer(t, mgmt)
	ro := token(t, admin, "ro", `key_prefix "ro/" { policy = "read" }`)
	c := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "token", ro, "prefix", "ro"))
	ctx := backendtest.Context(t)
	if _, err := c.Get(ctx, "k"); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("Get: %v, want ErrNotFound", err)
	}
	if _, err := c.TryClaim(ctx, "k", time.Second); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("TryClaim: %v, want ErrConfig", err)
	}
	if err := c.Set(ctx, "k", []byte("v"), 0); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("Set: %v, want ErrConfig", err)
	}
}

// TestSubscribeBadToken: Subscribe on a Client opened lazily with a token
// the agent does not know, or with none on an agent that denies by
// default, returns an error wrapping ErrConfig.
func TestSubscribeBadToken(t *testing.T) {
	const mgmt = "mgmt-S3cret-token"
	srv, _ := aclServer(t, mgmt)
	t.Run("wrong token", func(t *testing.T) {
		securitytest.SubscribeRefused(t, backendtest.WithQuery(t, srv.URL(), "token", "wrong-"+mgmt))
	})
	t.Run("no token", func(t *testing.T) {
		securitytest.SubscribeRefused(t, "consul://"+srv.Addr())
	})
}

// TestSubscriptionCut: an established subscription whose connection to
// the agent is cut wakes its subscriber at once (no wake-up can come
// through it); once the agent is reachable again the re-read wakes it
// again, and a release reaches it.
func TestSubscriptionCut(t *testing.T) {
	srv := testserver.Shared(t, testserver.Consul)
	p := securitytest.NewProxy(t, srv.Addr())
	waiter := backendtest.Open(t, strings.Replace(uniq(t, srv), srv.Addr(), p.Addr(), 1))
	holder := backendtest.Open(t, uniq(t, srv))
	s := backendtest.Subscribe(t, waiter, "k")
	p.Cut()
	expectWake(t, s, "the cut", true)
	p.Restore()
	expectWake(t, s, "the re-read after the cut", true)
	l := backendtest.Claim(t, holder, "k", time.Minute)
	if err := holder.Release(backendtest.Context(t), l); err != nil {
		t.Fatal(err)
	}
	expectWake(t, s, "the release after the cut", true)
}

// TestNewVerifies: New checks the agent (ErrUnavailable for one that is
// down, ErrConfig for a token it refuses) and leaves the caller's client
// usable when it fails; with Lazy it does no I/O.
func TestNewVerifies(t *testing.T) {
	const mgmt = "mgmt-S3cret-token"
	srv, _ := aclServer(t, mgmt)
	client := func(addr, tok string) *capi.Client {
		cfg := capi.DefaultConfig()
		cfg.Address, cfg.Token = addr, tok
		c, err := capi.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cfg.Transport.CloseIdleConnections)
		return c
	}
	fast := &claim.Options{OpTimeout: 500 * time.Millisecond}
	if _, err := consul.New(client("127.0.0.1:1", ""), &consul.Options{Client: fast}); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("New on a closed port: %v, want ErrUnavailable", err)
	}
	c, err := consul.New(client("127.0.0.1:1", ""), &consul.Options{Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatalf("New with Lazy: %v", err)
	}
	c.Close()
	anon := client(srv.Addr(), "")
	if _, err := consul.New(anon, nil); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("New without a token: %v, want ErrConfig", err)
	}
	if _, err := anon.Status().Leader(); err != nil {
		t.Errorf("the caller's client after a failed New: %v", err)
	}
	c, err = consul.New(client(srv.Addr(), mgmt), &consul.Options{Prefix: "newverifies"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(backendtest.Context(t)); err != nil {
		t.Errorf("Ping: %v", err)
	}
}
