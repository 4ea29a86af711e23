package etcd

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestNoHang: against a server that accepts connections and never
// answers, Open fails with ErrUnavailable within the operation timeout,
// and every method of a Client opened with lazy=true returns within it;
// with a user in the URL too (lazily, the first call connects and
// authenticates, within its own bound).
func TestNoHang(t *testing.T) {
	addr := securitytest.Unresponsive(t)
	t.Run("anonymous", func(t *testing.T) { securitytest.NoHang(t, "etcd://"+addr+"?prefix=nohang") })
	t.Run("user", func(t *testing.T) { securitytest.NoHang(t, "etcd://root:pw@"+addr+"?prefix=nohang") })
}

// authServer starts an etcd with authentication enabled (user root,
// password pw) and returns it with a root client.
func authServer(t *testing.T, pw string) (*testserver.Server, *clientv3.Client) {
	t.Helper()
	srv := testserver.RequireWith(t, testserver.Etcd, &testserver.Options{Password: pw})
	return srv, userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()}, Username: "root", Password: pw})
}

// TestConfigRefused: a wrong password fails Open with ErrConfig (clientv3
// authenticates when it connects); opened lazily, the first call does,
// and a flight cache on it returns the error without loading.
func TestConfigRefused(t *testing.T) {
	srv, _ := authServer(t, "rootpw")
	securitytest.ConfigRefused(t, "etcd://root:wr0ng-pw@"+srv.Addr()+"?prefix=refused", "wr0ng-pw")
}

// TestConfigErrors: every configuration error etcd has fails Open with
// ErrConfig: no user on a server with authentication (ErrUserEmpty), a
// user without read access to the prefix (ErrPermissionDenied), a server
// that does not speak gRPC (an HTTP/1 server, found by the first bytes it
// sends), and a gRPC server without etcd's services (Unimplemented).
// Opened lazily, Subscribe and Set meet the same errors.
func TestConfigErrors(t *testing.T) {
	srv, root := authServer(t, "rootpw")
	ctx := backendtest.Context(t)
	for _, step := range []func() error{
		func() error { _, err := root.RoleAdd(ctx, "others"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "others", "other/", clientv3.GetPrefixRangeEnd("other/"), clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "limited", "limited-pw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "limited", "others"); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	web := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(web.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)

	for name, u := range map[string]string{
		"no user":                            "etcd://" + srv.Addr() + "?prefix=mine&minttl=1s",
		"no permission":                      "etcd://limited:limited-pw@" + srv.Addr() + "?prefix=mine",
		"an HTTP/1 server":                   "etcd://" + strings.TrimPrefix(web.URL, "http://"),
		"a server that answers HTTP at once": "etcd://" + securitytest.AnswersHTTP(t),
		"a gRPC server":                      "etcd://" + ln.Addr().String(),
	} {
		t.Run(name, func(t *testing.T) {
			c, err := claim.Open(ctx, u)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, claim.ErrConfig) {
				t.Errorf("Open: %v, want ErrConfig", err)
			}
			securitytest.SubscribeRefused(t, u)
			c = backendtest.Open(t, backendtest.WithQuery(t, u, "lazy", "true"))
			if err := c.Set(ctx, "k", []byte("v"), 0); !errors.Is(err, claim.ErrConfig) {
				t.Errorf("Set: %v, want ErrConfig", err)
			}
		})
	}
	// The limited user's own prefix works.
	c := backendtest.Open(t, "etcd://limited:limited-pw@"+srv.Addr()+"?prefix=other")
	if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Errorf("Set under the prefix the user may write: %v", err)
	}
}

// TestSubscribeBadPassword: Subscribe on a Client opened lazily with a
// wrong password returns an error wrapping ErrConfig (etcd's "authentication
// failed"), without the password, not a silent retry; and so does one
// opened with a correct password whose user may not read the key (the
// watch is refused: permission denied).
func TestSubscribeBadPassword(t *testing.T) {
	srv, root := authServer(t, "rootpw")
	c := backendtest.Open(t, "etcd://root:wr0ng-pw@"+srv.Addr()+"?prefix=sub&lazy=true")
	s, err := c.Subscribe(backendtest.Context(t), "k")
	if err == nil {
		s.Close()
		t.Fatal("Subscribe with a wrong password succeeded")
	}
	if !errors.Is(err, claim.ErrConfig) || strings.Contains(err.Error(), "wr0ng-pw") {
		t.Errorf("Subscribe: %v, want ErrConfig (without the password)", err)
	}
	if _, err := root.UserAdd(backendtest.Context(t), "nobody", "nobody-pw"); err != nil {
		t.Fatal(err)
	}
	securitytest.SubscribeRefused(t, "etcd://nobody:nobody-pw@"+srv.Addr()+"?prefix=sub")
}

// TestNewVerifies: New checks the server (ErrUnavailable for one that is
// down, ErrConfig for a user without access to the prefix) and never
// closes the caller's client when it fails; with Lazy it does no I/O.
func TestNewVerifies(t *testing.T) {
	srv, _ := authServer(t, "rootpw")
	down := userClient(t, clientv3.Config{Endpoints: []string{"127.0.0.1:1"}})
	fast := &claim.Options{OpTimeout: 500 * time.Millisecond}
	if _, err := New(down, &Options{Client: fast}); !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("New on a closed port: %v, want ErrUnavailable", err)
	}
	if err := down.Ctx().Err(); err != nil {
		t.Errorf("a failed New closed the caller's client: %v", err)
	}
	c, err := New(down, &Options{Client: &claim.Options{Lazy: true}})
	if err != nil {
		t.Fatalf("New with Lazy: %v", err)
	}
	c.Close()

	root := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()}, Username: "root", Password: "rootpw"})
	ctx := backendtest.Context(t)
	if _, err := root.UserAdd(ctx, "nobody", "nobody-pw"); err != nil {
		t.Fatal(err)
	}
	nobody := userClient(t, clientv3.Config{Endpoints: []string{srv.Addr()}, Username: "nobody", Password: "nobody-pw"})
	if _, err := New(nobody, nil); !errors.Is(err, claim.ErrConfig) {
		t.Errorf("New for a user without permissions: %v, want ErrConfig", err)
	}
	if err := nobody.Ctx().Err(); err != nil {
		t.Errorf("a failed New closed the caller's client: %v", err)
	}
	c, err = New(root, &Options{Prefix: "newverifies"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

// TestLazyConnect: with lazy=true, Open neither connects nor
// authenticates (As has no client yet); the first call does, once for
// every caller.
func TestLazyConnect(t *testing.T) {
	srv, _ := authServer(t, "rootpw")
	c := backendtest.Open(t, "etcd://root:rootpw@"+srv.Addr()+"?prefix=lazy&lazy=true")
	var cli *clientv3.Client
	if c.As(&cli) {
		t.Error("a lazily opened Client has an etcd client before its first call")
	}
	if got := c.Features().MinTTL; got != DefaultMinTTL {
		t.Errorf("MinTTL opened lazily = %s, want DefaultMinTTL (the server is not asked)", got)
	}
	ctx := backendtest.Context(t)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() { errs <- c.Set(ctx, "k", []byte("v"), 0) }()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("Set: %v", err)
		}
	}
	if !c.As(&cli) || cli == nil {
		t.Error("no etcd client after the first call")
	}
	if err := c.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
}
