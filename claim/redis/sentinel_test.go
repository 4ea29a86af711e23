package redis_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestSentinelURL: master=NAME makes HOST:PORT (default port 26379) and
// addrs the Sentinels, and sentinel_user / sentinel_password their
// credentials; wait_replicas and wait_timeout set the WAIT mode.
func TestSentinelURL(t *testing.T) {
	u, _ := url.Parse("redis://u:pw@s1/2?master=mymaster&addrs=s2:26380,s3:26381&sentinel_user=su&sentinel_password=sp&wait_replicas=1&wait_timeout=250ms")
	o, opt, err := redis.ParseUniversalForTest(u)
	if err != nil {
		t.Fatal(err)
	}
	if o.MasterName != "mymaster" || strings.Join(o.Addrs, ",") != "s1:26379,s2:26380,s3:26381" ||
		o.SentinelUsername != "su" || o.SentinelPassword != "sp" || o.Username != "u" || o.Password != "pw" || o.DB != 2 {
		t.Fatalf("parsed %+v", o)
	}
	if opt.WaitReplicas != 1 || opt.WaitTimeout != 250*time.Millisecond {
		t.Fatalf("WAIT mode: %d replicas, timeout %v", opt.WaitReplicas, opt.WaitTimeout)
	}
	u, _ = url.Parse("redis://h?wait_replicas=2")
	if _, opt, err = redis.ParseUniversalForTest(u); err != nil || opt.WaitReplicas != 2 || opt.WaitTimeout != 0 {
		t.Fatalf("wait_replicas=2: %+v, %v", opt, err)
	}
}

// TestSentinelURLErrors: bad Sentinel and WAIT parameters fail Open with
// an error naming the parameter, and no password.
func TestSentinelURLErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ url, want string }{
		{"redis://u:s3cret@h/0?master=", "master: want the Sentinels' name"},
		{"redis://u:s3cret@h/0?master=m&cluster=true", "exclude each other"},
		{"redis://u:s3cret@h/0?sentinel_password=s3cret", "need master=NAME"},
		{"redis://u:s3cret@h/0?sentinel_user=x", "need master=NAME"},
		{"redis://u:s3cret@h/0?addrs=h:1", "cluster=true or master=NAME"},
		{"redis://u:s3cret@h/0?master=m&addrs=nope", "HOST:PORT"},
		{"redis://u:s3cret@h/0?wait_timeout=1s", "wait_timeout needs wait_replicas"},
		{"redis://u:s3cret@h/0?wait_replicas=-1", "wait_replicas"},
		{"redis://u:s3cret@h/0?wait_replicas=x", "wait_replicas"},
		{"redis://u:s3cret@h/0?wait_replicas=1&wait_timeout=-1s", "wait_timeout"},
		{"redis://u:s3cret@h/0?wait_replicas=1&wait_timeout=100us", "at least 1ms"},
		{"redis://u:s3cret@h/0?wait_replicas=1&wait_timeout=5s", "below the client's ReadTimeout"},
		{"redis://u:s3cret@h/0?wait_replicas=1&wait_timeout=2s&read_timeout=1s", "below the client's ReadTimeout"},
		{"redis://u:s3cret@h/0?cluster=true&wait_replicas=1", "not supported with cluster=true"},
	} {
		c, err := claim.Open(ctx, tc.url)
		if err == nil {
			c.Close()
			t.Errorf("%s: no error", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want it to mention %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%s: the error shows the password: %v", tc.url, err)
		}
	}
}

// sentinelHarness is the conformance harness on a Sentinel set, clients
// opened through the Sentinels (each client on another first Sentinel)
// with extra URL parameters.
func sentinelHarness(tb testing.TB, c *testserver.RedisSentinel, params ...string) conformance.Harness {
	var n atomic.Int64
	opener := func(ns string) func(context.Context) (*claim.Client, error) {
		return func(ctx context.Context) (*claim.Client, error) {
			u := backendtest.WithQuery(tb, c.URL(int(n.Add(1))), append([]string{"maxvalue", "1048576"}, params...)...)
			if ns != "" {
				u = backendtest.WithQuery(tb, u, "prefix", redis.DefaultPrefix+":"+ns)
			}
			return claim.Open(ctx, u)
		}
	}
	return conformance.Harness{Open: opener(""), OpenIsolated: opener("isolated")}
}

// TestSentinelConformance runs the suite through Sentinel (a primary, one
// replica, three Sentinels), plain and in the WAIT mode (one replica,
// which has no fair queue: AcquireFair is unsupported there).
func TestSentinelConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a primary, a replica and three Sentinels")
	}
	c := testserver.RequireRedisSentinel(t, 1, nil)
	t.Run("plain", func(t *testing.T) { conformance.Run(t, sentinelHarness(t, c)) })
	t.Run("wait", func(t *testing.T) { conformance.Run(t, sentinelHarness(t, c, "wait_replicas", "1")) })
}

// TestWaitMode: with the replica reachable every write is acknowledged;
// with it paused (SIGSTOP) WAIT times out, and the claim is not reported
// as held (a *ReplicationError, ErrUnavailable to the client) and is
// released; a renewal fails without ErrLost; commit, revoke and set fail
// the same way. AcquireFair is unsupported in the WAIT mode.
func TestWaitMode(t *testing.T) {
	c := testserver.RequireRedisSentinel(t, 1, nil)
	ctx := backendtest.Context(t)
	plain := backendtest.Open(t, c.URL(0))
	w := backendtest.Open(t, backendtest.WithQuery(t, c.URL(1), "wait_replicas", "1", "wait_timeout", "200ms"))
	if _, err := w.AcquireFair(ctx, "fair", time.Minute); !errors.Is(err, claim.ErrUnsupported) {
		t.Fatalf("AcquireFair in the WAIT mode: %v, want ErrUnsupported", err)
	}
	l, err := w.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, l, []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	if l, err = w.Extend(ctx, l, time.Minute); err != nil {
		t.Fatal(err)
	}
	p, err := c.WaitPrimary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	replica := 1 - p
	if err := c.Pause(replica); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			c.Resume(replica)
		}
	}()
	notReplicated := func(what string, err error) {
		t.Helper()
		var re *redis.ReplicationError
		if !errors.As(err, &re) || !errors.Is(err, claim.ErrUnavailable) || errors.Is(err, claim.ErrLost) {
			t.Fatalf("%s with the replica paused: %v; want a *ReplicationError, ErrUnavailable, not ErrLost", what, err)
		}
		if re.Acked != 0 || re.Wanted != 1 {
			t.Fatalf("%s: %+v", what, re)
		}
	}
	_, err = w.Extend(ctx, l, time.Minute)
	notReplicated("extend", err)
	notReplicated("commit", w.Commit(ctx, l, []byte("v2"), 0))
	if err := w.Release(ctx, l); err != nil { // no WAIT: it succeeds
		t.Fatalf("release with the replica paused: %v", err)
	}
	_, err = w.TryClaim(ctx, "k", time.Minute)
	notReplicated("claim", err)
	// The claim was released: the key is free at once.
	l2, err := plain.TryClaim(ctx, "k", time.Minute)
	if err != nil {
		t.Fatalf("claim after a claim that was not replicated: %v (not released?)", err)
	}
	if err := plain.Release(ctx, l2); err != nil {
		t.Fatal(err)
	}
	res, err := w.TryClaimMany(ctx, []string{"m1", "m2"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		notReplicated("batch claim "+string(rune('1'+i)), r.Err)
	}
	notReplicated("revoke", w.Revoke(ctx, "k"))
	notReplicated("set", w.Set(ctx, "s", []byte("x"), 0))
	if err := c.Resume(replica); err != nil {
		t.Fatal(err)
	}
	resumed = true
	// The replica catches up; the WAIT mode works again (unless the
	// Sentinels took the pause for a failure: then the new primary's
	// replica must link first).
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err = w.TryClaim(ctx, "m1", time.Minute)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("claim after the replica resumed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := w.CommitRelease(ctx, l, []byte("v3"), 0); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkWait: the cost of the WAIT mode, on a Sentinel set on
// loopback (a primary, one replica): a claim (TryClaim) then a
// CommitRelease of a small value, one after the other, plain and with
// wait_replicas=1 (both writes wait; their WAIT goes in the same round
// trip as the script).
func BenchmarkWait(b *testing.B) {
	c := testserver.RequireRedisSentinel(b, 1, nil)
	for _, mode := range []struct {
		name   string
		params []string
	}{
		{"plain", nil},
		{"wait_replicas=1", []string{"wait_replicas", "1"}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			cl := backendtest.Open(b, backendtest.WithQuery(b, c.URL(0), mode.params...))
			ctx := context.Background()
			i := 0
			for b.Loop() {
				i++
				l, err := cl.TryClaim(ctx, "bench"+strconv.Itoa(i%64), time.Minute)
				if err != nil {
					b.Fatal(err)
				}
				if err := cl.CommitRelease(ctx, l, []byte("v"), 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
