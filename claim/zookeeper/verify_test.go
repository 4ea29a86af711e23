package zookeeper

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestNoHang: on a server that accepts connections and never answers,
// Open fails and every method and Close return within the operation
// timeout (go-zk's calls take no context, and its session handshake
// waits 20/3 × the session timeout).
func TestNoHang(t *testing.T) {
	securitytest.NoHang(t, "zookeeper://"+securitytest.Unresponsive(t))
}

// TestOtherServer: a server of another kind at the address (PostgreSQL's
// test server, which answers the session handshake with an error
// message; a listener that answers like an HTTP server) is a
// configuration error: Open, a lazily opened Client's calls and Subscribe
// fail with ErrConfig, at once, flight never loads. With two addresses,
// one of them ZooKeeper's, the Client works.
func TestOtherServer(t *testing.T) {
	refused := func(t *testing.T, addr string) {
		u := "zookeeper://" + addr + "/other"
		start := time.Now()
		securitytest.ConfigRefused(t, u, "")
		securitytest.SubscribeRefused(t, u)
		if d := time.Since(start); d > claim.DefaultOpTimeout {
			t.Errorf("took %s: refused by a timeout, not by the answer", d.Round(time.Millisecond))
		}
	}
	httpLike := securitytest.AnswersHTTP(t)
	t.Run("HTTP", func(t *testing.T) { refused(t, httpLike) })
	t.Run("PostgreSQL", func(t *testing.T) { refused(t, testserver.Shared(t, testserver.Postgres).Addr()) })
	srv := testserver.Shared(t, testserver.ZooKeeper)
	mixed := "zookeeper://" + httpLike + "," + strings.TrimPrefix(srv.URL(), "zookeeper://") + chroot(t, "mixed")
	securitytest.Roundtrip(t, backendtest.Open(t, mixed))
}

// TestSubscribeWrongPassword: Subscribe on a Client whose password the
// prefix's ACL refuses fails with ErrConfig rather than waiting (or
// watching a node it cannot use).
func TestSubscribeWrongPassword(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	host := strings.TrimPrefix(srv.URL(), "zookeeper://")
	backendtest.Open(t, "zookeeper://carol:c4r0l-S3cret@"+host+chroot(t, "wrong-pw")) // creates the prefix, carol's only
	securitytest.SubscribeRefused(t, "zookeeper://carol:wrong@"+host+chroot(t, "wrong-pw"))
}

// TestLostConnectionWakes: when the connection of an established
// subscription is lost and cannot be re-established at once, the
// subscriber is woken, and its re-check sees the outage (ErrUnavailable);
// once the connection is back, the subscription still delivers. Through
// a URL (session events) and through New (pollSession).
func TestLostConnectionWakes(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	check := func(t *testing.T, c *claim.Client, p *securitytest.Proxy) {
		ctx := backendtest.Context(t)
		other := open(t, srv, "lost")
		s := backendtest.Subscribe(t, c, "k")
		p.Cut()
		if !backendtest.Woken(s, 10*time.Second) {
			t.Fatal("subscriber not woken while the connection is down")
		}
		if _, err := c.TryClaim(ctx, "k", time.Minute); !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("TryClaim while the connection is down: %v, want ErrUnavailable", err)
		}
		p.Restore()
		// Calls fail fast (no server) until go-zk has reconnected.
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			err := c.Set(ctx, "after", []byte("v"), 0)
			if err == nil {
				break
			}
			if !errors.Is(err, claim.ErrUnavailable) || time.Now().After(deadline) {
				t.Fatalf("Set after the outage: %v", err)
			}
		}
		select {
		case <-s.C(): // a wake-up for the outage may follow the first
		default:
		}
		if err := other.Notify(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if !backendtest.Woken(s, 10*time.Second) {
			t.Error("subscription does not deliver after the outage")
		}
	}
	t.Run("URL", func(t *testing.T) {
		c, p := openCut(t, srv, "lost")
		check(t, c, p)
	})
	t.Run("New", func(t *testing.T) {
		p := securitytest.NewProxy(t, srv.Addr())
		conn, _, err := zk.Connect([]string{p.Addr()}, 10*time.Second, zk.WithLogger(quiet), zk.WithLogInfo(false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Close)
		c, err := New(conn, &Options{Prefix: chroot(t, "lost")[1:] + "/" + DefaultPrefix})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		check(t, c, p)
	})
}
