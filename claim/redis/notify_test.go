package redis_test

import (
	"errors"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// lostBound bounds the wake-up a subscriber gets when its pub/sub
// connection is lost: generous, as upper bounds in tests are (the driver
// wakes as soon as a read fails, or after two health-check intervals on a
// silent connection).
const lostBound = 3 * time.Second

// topicResets subscribes c to topic and returns a channel that receives
// once for every reset delivered (none is lost while the test reads it).
func topicResets(t *testing.T, c *claim.Client, topic string) <-chan struct{} {
	t.Helper()
	resets := make(chan struct{}, 16)
	stop, err := c.SubscribeTopic(backendtest.Context(t), topic, func(_ []byte, reset bool) {
		if reset {
			select {
			case resets <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	return resets
}

// TestKilledServerWakesWaiter: Redis is killed while a waiter is
// subscribed (issue 13's outage mid-stampede). The waiter is woken within
// lostBound and its re-check fails at once with ErrUnavailable (so a
// flight can fail open now, not after the holder's lease); a topic
// subscriber gets a reset. Once the server is back, the subscription is
// rebuilt (another wake-up) and delivers again.
func TestKilledServerWakesWaiter(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Redis, nil) // a server of its own to kill
	ctx := backendtest.Context(t)
	waiter := backendtest.Open(t, srv.URL())
	holder := backendtest.Open(t, srv.URL())
	key := "killed/k"
	backendtest.Claim(t, holder, key, time.Minute)
	sub := backendtest.Subscribe(t, waiter, key)
	resets := topicResets(t, waiter, "killed/topic")

	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if !backendtest.Woken(sub, lostBound) {
		t.Fatalf("not woken within %s of the server's death", lostBound)
	}
	select {
	case <-resets:
	case <-time.After(lostBound):
		t.Fatalf("no topic reset within %s of the server's death", lostBound)
	}
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrUnavailable) {
		t.Fatalf("re-check with the server down: %v, want ErrUnavailable", err)
	}

	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "the subscription rebuilt after the restart")
	if err := holder.Notify(ctx, key); err != nil {
		t.Fatal(err)
	}
	waitWake(t, sub, "notify after the restart")
}

// TestCutWakesWaiter: the network path to Redis is cut (a proxy closes
// every connection and refuses new ones) while a waiter is subscribed and
// the holder releases on the other side. The waiter is woken within
// lostBound and its re-check fails with ErrUnavailable; when the path is
// restored it is woken again, and its re-check finds the key released.
func TestCutWakesWaiter(t *testing.T) {
	srv := testserver.Shared(t, testserver.Redis)
	ctx := backendtest.Context(t)
	p := securitytest.NewProxy(t, srv.Addr())
	waiter := backendtest.Open(t, "redis://"+p.Addr()+"/0?prefix=cut")
	holder := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "prefix", "cut"))
	key := "cut/" + securitytest.Unique(t) // the server is shared
	l := backendtest.Claim(t, holder, key, time.Minute)
	sub := backendtest.Subscribe(t, waiter, key)

	p.Cut()
	if !backendtest.Woken(sub, lostBound) {
		t.Fatalf("not woken within %s of the cut", lostBound)
	}
	if _, err := waiter.TryClaim(ctx, key, time.Minute); !errors.Is(err, claim.ErrUnavailable) {
		t.Fatalf("re-check during the cut: %v, want ErrUnavailable", err)
	}
	if err := holder.Release(ctx, l); err != nil { // published to nobody
		t.Fatal(err)
	}
	p.Restore()
	waitWake(t, sub, "the subscription rebuilt after the cut")
	l2, err := waiter.TryClaim(ctx, key, time.Minute)
	if err != nil {
		t.Fatalf("re-check after the cut: %v, want the lease (released during the cut)", err)
	}
	if err := waiter.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
}

// TestSubscribeRefused: Subscribe and SubscribeTopic on a client the
// server refuses return an error wrapping ErrConfig, not an
// ErrUnavailable at the operation timeout: a wrong password (refused when
// go-redis connects), no password at all (go-redis connects, and the
// server answers the SUBSCRIBE with NOAUTH: go-redis alone would retry
// that for ever), an ACL user without SUBSCRIBE, and one without the
// driver's channels (NOPERM).
func TestSubscribeRefused(t *testing.T) {
	const pw = "sub-S3cret"
	locked := testserver.RequireWith(t, testserver.Redis, &testserver.Options{Password: pw})
	srv := testserver.RequireWith(t, testserver.Redis, nil) // ACL users of its own
	admin := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer admin.Close()
	ctx := backendtest.Context(t)
	for _, acl := range [][]any{
		{"ACL", "SETUSER", "nosub", "on", ">x", "~*", "&*", "+@all", "-subscribe"},
		{"ACL", "SETUSER", "nochan", "on", ">x", "~*", "resetchannels", "+@all"},
	} {
		if err := admin.Do(ctx, acl...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for name, u := range map[string]string{
		"wrong password": "redis://:wrong-" + pw + "@" + locked.Addr() + "/0",
		"no password":    "redis://" + locked.Addr() + "/0",
		"no SUBSCRIBE":   "redis://nosub:x@" + srv.Addr() + "/0",
		"no channels":    "redis://nochan:x@" + srv.Addr() + "/0",
	} {
		t.Run(name, func(t *testing.T) {
			c := backendtest.Open(t, u+"?lazy=true")
			if _, err := c.Subscribe(ctx, "k"); !errors.Is(err, claim.ErrConfig) {
				t.Errorf("Subscribe: %v, want ErrConfig", err)
			}
			if _, err := c.SubscribeTopic(ctx, "t", func([]byte, bool) {}); !errors.Is(err, claim.ErrConfig) {
				t.Errorf("SubscribeTopic: %v, want ErrConfig", err)
			}
			if n := c.Subscriptions(); n != 0 {
				t.Errorf("%d subscriptions left after the refusals", n)
			}
		})
	}
}
