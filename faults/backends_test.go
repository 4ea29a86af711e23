package faults

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/consul"
	_ "github.com/stampede-go/stampede/claim/dynamo"
	_ "github.com/stampede-go/stampede/claim/etcd"
	_ "github.com/stampede-go/stampede/claim/memcache"
	_ "github.com/stampede-go/stampede/claim/memory"
	_ "github.com/stampede-go/stampede/claim/mysql"
	_ "github.com/stampede-go/stampede/claim/nats"
	_ "github.com/stampede-go/stampede/claim/postgres"
	_ "github.com/stampede-go/stampede/claim/redis"
	_ "github.com/stampede-go/stampede/claim/zookeeper"
	"github.com/stampede-go/stampede/internal/testserver"
)

// backend is one row of the table of backends every fault runs against.
type backend struct {
	name string
	// kind is the server testserver starts; "" for the in-process memory
	// backend, which has no server, no network and no second process:
	// faults that need one of those do not apply to it (na says why).
	kind testserver.Kind
	// params are URL query parameters added for the fault tests: health
	// checks and dial timeouts, so that a fault is noticed in seconds.
	params string
	// io returns the URL parameters that set the client's own I/O timeout
	// to d, for clients whose calls can outlast their context (nil: the
	// client's calls end with their context).
	io func(d time.Duration) string
	// ioBound: a call in flight ends at the client's own I/O timeout, not
	// at its context's deadline (gomemcache takes no context).
	ioBound bool
	// ttl is the lease the fault tests ask for (at least the backend's
	// MinTTL, a multiple of its TTLGranularity, on the test server).
	ttl time.Duration
	// slack is how long past its TTL the lease of a dead holder may still
	// block the key, as the backend documents it (etcd's revoke loop and
	// whole-second Remaining, memcached's lock kept TTL+2s, the
	// clock-skew allowance of Consul and DynamoDB).
	slack time.Duration
	// pool are URL parameters that shrink the client's connection pool to
	// one connection; "" when the client has no pool of its own to starve.
	pool string
	// durable: fencing tokens and leases survive kill -9 and restart of the
	// test server (testserver's configuration; see durability notes).
	durable bool
	// restartNote says what a restart of the test server loses.
	restartNote string
}

var backends = []backend{
	{name: "memory"},
	{
		name: "redis", kind: testserver.Redis,
		params: "health_check=500ms&dial_timeout=1s",
		io:     func(d time.Duration) string { return "read_timeout=" + d.String() + "&write_timeout=" + d.String() },
		ttl:    time.Second, pool: "pool_size=1",
		restartNote: "without persistence every lock and fence counter is lost (tokens restart at 1); with AOF (appendfsync always) nothing is lost",
	},
	{
		name: "postgres", kind: testserver.Postgres,
		params: "connect_timeout=5",
		ttl:    time.Second, pool: "pool_max_conns=1", durable: true,
	},
	{
		name: "etcd", kind: testserver.Etcd,
		params: "dial_timeout=2s",
		ttl:    time.Second, slack: time.Second, durable: true,
	},
	{
		name: "consul", kind: testserver.Consul,
		params: "wait=2s",
		ttl:    time.Second, slack: 50 * time.Millisecond, pool: "maxconns=1&maxwatches=1",
		restartNote: "the test server is `consul agent -dev` (state in memory): a restart loses every lock, and raft indexes (tokens) start over; a server with a data directory keeps them",
	},
	{
		name: "dynamo", kind: testserver.Dynamo,
		params: "create_table=true",
		ttl:    time.Second, slack: 100 * time.Millisecond, durable: true,
	},
	{
		name: "memcache", kind: testserver.Memcache,
		io: func(d time.Duration) string { return "io_timeout=" + d.String() }, ioBound: true,
		ttl: time.Second, slack: 2 * time.Second, pool: "max_idle_conns=1",
		restartNote: "every lock and counter is lost; tokens still increase (a recreated counter starts at the current Unix time in µs)",
	},
	// zookeeper: backends_zookeeper_test.go, built without -race.
	{
		name: "nats", kind: testserver.NATS,
		params: "dial_timeout=2s",
		ttl:    time.Second, slack: 100 * time.Millisecond, durable: true,
	},
	{
		name: "mysql", kind: testserver.MySQL,
		params: "dial_timeout=2s",
		ttl:    time.Second, pool: "max_conns=1", durable: true,
	},
}

// forEach runs f for every backend as a parallel subtest. A backend that
// fails applies(b) is skipped with the reason it returns.
func forEach(t *testing.T, applies func(b backend) string, f func(t *testing.T, b backend)) {
	t.Parallel()
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			if applies != nil {
				if why := applies(b); why != "" {
					t.Skip("N/A: " + why)
				}
			}
			t.Parallel()
			f(t, b)
		})
	}
}

// Reasons a fault does not apply to the memory backend.
func needsNetwork(b backend) string {
	if b.kind == "" {
		return "the memory backend has no network and no server"
	}
	return ""
}

func needsProcesses(b backend) string {
	if b.kind == "" {
		return "a memory Space cannot be shared by two processes"
	}
	return ""
}

// ioTimeout is the clients' own I/O timeout in the fault tests.
const ioTimeout = time.Second

// sharedURL returns the URL of the test binary's shared server of b's kind,
// with b's fault parameters (for memory: a Space of its own).
func (b backend) sharedURL(t testing.TB) string {
	return b.sharedURLIO(t, ioTimeout)
}

// sharedURLIO is sharedURL with the client's own I/O timeout set to io.
func (b backend) sharedURLIO(t testing.TB, io time.Duration) string {
	if b.kind == "" {
		return "mem://faults-" + randHex(8)
	}
	return b.urlOf(testserver.Shared(t, b.kind).URL(), io)
}

// callBound is how long a call with a context timeout of d may take
// under a fault: d, or the client's own I/O timeout io for a client that
// does not end calls in flight at their context's deadline, plus
// errorGrace for scheduling on a loaded machine.
func (b backend) callBound(d, io time.Duration) time.Duration {
	if b.ioBound {
		d = max(d, io)
	}
	return d + errorGrace
}

// urlOf adds b's fault parameters to a server URL.
func (b backend) urlOf(raw string, io time.Duration) string {
	u := withParams(raw, b.params)
	if b.io != nil {
		u = withParams(u, b.io(io))
	}
	return u
}

// withParams appends query parameters to a URL.
func withParams(raw, params string) string {
	if params == "" {
		return raw
	}
	if strings.Contains(raw, "?") {
		return raw + "&" + params
	}
	return raw + "?" + params
}

// serverAddr returns the host:port a backend URL connects to (for dynamo,
// the endpoint parameter's).
func serverAddr(t testing.TB, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse URL: %v", err)
	}
	if ep := u.Query().Get("endpoint"); ep != "" {
		eu, err := url.Parse(ep)
		if err != nil {
			t.Fatalf("parse endpoint: %v", err)
		}
		return eu.Host
	}
	return u.Host
}

// viaProxy rewrites a backend URL to connect to addr instead of its
// server (for dynamo, the endpoint parameter's host:port).
func viaProxy(t testing.TB, raw, addr string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatalf("parse URL: %v", err)
	}
	q := u.Query()
	if ep := q.Get("endpoint"); ep != "" {
		eu, err := url.Parse(ep)
		if err != nil {
			t.Fatalf("parse endpoint: %v", err)
		}
		eu.Host = addr
		q.Set("endpoint", eu.String())
		u.RawQuery = q.Encode()
		return u.String()
	}
	u.Host = addr
	return u.String()
}

// open opens a client (as if in another process), closed by t.Cleanup.
func open(t testing.TB, raw string) *claim.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var c *claim.Client
	var err error
	for try := 0; try < 3; try++ { // opening may dial (and time out on a loaded machine)
		if c, err = claim.Open(ctx, raw); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("open %s: %v", claim.RedactURL(raw), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// key returns a key unique to this call.
func key(t testing.TB, what string) string {
	return "faults/" + t.Name() + "/" + what + "/" + randHex(6)
}

func randHex(n int) string {
	p := make([]byte, n)
	_, _ = rand.Read(p)
	return hex.EncodeToString(p)
}

// ctxFor returns a context bounded by d, cancelled by t.Cleanup.
func ctxFor(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// call runs f with a context bounded by d.
func call[T any](d time.Duration, f func(ctx context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return f(ctx)
}

func call0(d time.Duration, f func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return f(ctx)
}

// definitive repeats f (with a 2 s bound each) until it returns nil or an
// error wrapping ErrLost, ErrHeld or ErrNotFound (an answer from the
// substrate rather than a transport failure), or until limit passes; it
// returns the last error.
func definitive(limit time.Duration, f func(ctx context.Context) error) error {
	end := time.Now().Add(limit)
	for {
		err := call0(5*time.Second, f)
		if err == nil || isAnswer(err) || time.Now().After(end) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// do runs f (5 s per attempt) until it returns nil or an answer, for at
// most 30 s: for setup and checks where the outcome matters, not the
// latency (a loaded machine can make any single call time out).
func do[T any](f func(ctx context.Context) (T, error)) (T, error) {
	var v T
	err := definitive(30*time.Second, func(ctx context.Context) (err error) { v, err = f(ctx); return err })
	return v, err
}

func do0(f func(ctx context.Context) error) error { return definitive(30*time.Second, f) }

// isAnswer reports whether err is one of the portable answers of a
// backend (as opposed to a transport failure or a timeout).
func isAnswer(err error) bool {
	return errors.Is(err, claim.ErrLost) || errors.Is(err, claim.ErrHeld) || errors.Is(err, claim.ErrNotFound)
}
