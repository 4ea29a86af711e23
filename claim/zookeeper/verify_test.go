package zookeeper

import (
	"strings"
	"testing"
	"time"

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
