package testserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
)

// RequireEnv is the environment variable that turns a missing server from
// a skip into a failure when set to 1 (make test and CI set it).
const RequireEnv = "STAMPEDE_TEST_REQUIRE"

// Require returns a server of the given kind for the test t. When
// STAMPEDE_TEST_<KIND>_URL is set it returns that server (only URL and Addr
// are set, Stop is a no-op, Kill and Restart fail with [ErrExternal]);
// otherwise it starts one with [Start] and stops it with t.Cleanup, logging
// the tail of its log first if the test failed. When the server is not
// installed it skips the test with a hint (scripts/install-backends), or
// fails it when STAMPEDE_TEST_REQUIRE=1.
func Require(t testing.TB, kind Kind) *Server {
	t.Helper()
	if s := fromEnv(t, kind); s != nil {
		return s
	}
	return RequireWith(t, kind, nil)
}

// RequireWith is [Require] for a server with options, or one a test may
// Kill and Restart: it always starts a server of its own, whatever
// STAMPEDE_TEST_<KIND>_URL says.
func RequireWith(t testing.TB, kind Kind, opts *Options) *Server {
	t.Helper()
	s, err := Start(context.Background(), kind, opts)
	if err != nil {
		failStart(t, kind, err)
		return nil
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testserver: %s at %s, log tail:\n%s", kind, s.Addr(), s.logTail(50))
		}
		if err := s.Stop(); err != nil {
			t.Errorf("testserver: stop %s: %v", kind, err)
		}
	})
	return s
}

func failStart(t testing.TB, kind Kind, err error) {
	t.Helper()
	if errors.Is(err, ErrMissing) {
		msg := fmt.Sprintf("%v\n(install with scripts/install-backends, or point %s at a running server, e.g. from docker-compose.test.yml)", err, kind.EnvVar())
		if os.Getenv(RequireEnv) == "1" {
			t.Fatalf("%s is set to 1 but: %s", RequireEnv, msg)
		}
		t.Skipf("skipping: %s", msg)
	}
	t.Fatalf("%v", err)
}

func fromEnv(t testing.TB, kind Kind) *Server {
	t.Helper()
	u := os.Getenv(kind.EnvVar())
	if u == "" {
		return nil
	}
	s, err := External(kind, u)
	if err != nil {
		t.Fatalf("%s: %v", kind.EnvVar(), err)
	}
	return s
}

// External returns a Server for an existing server at rawURL (a URL in the
// stampede format of its kind), as Require does for
// STAMPEDE_TEST_<KIND>_URL.
func External(kind Kind, rawURL string) (*Server, error) {
	if _, ok := specs[kind]; !ok {
		return nil, fmt.Errorf("testserver: unknown kind %q", kind)
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("testserver: %s URL: %v", kind, err) // url.Error holds the URL: acceptable, it came from the environment
	}
	host := u.Host
	if kind == Dynamo {
		ep, err := url.Parse(u.Query().Get("endpoint"))
		if err != nil || ep.Host == "" {
			return nil, fmt.Errorf("testserver: dynamo URL %s has no endpoint parameter", u.Redacted())
		}
		host = ep.Host
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		return nil, fmt.Errorf("testserver: %s URL %s: want host:port: %v", kind, u.Redacted(), err)
	}
	return &Server{kind: kind, url: rawURL, addr: host, external: true}, nil
}

var shared struct {
	mu sync.Mutex
	m  map[Kind]*sharedEntry
}

type sharedEntry struct {
	once sync.Once
	s    *Server
	err  error
}

// Shared returns the test binary's one server of the given kind, starting
// it on first use (an external one when STAMPEDE_TEST_<KIND>_URL is set).
// Missing servers skip or fail the test as in [Require]. Call [StopShared]
// from TestMain after m.Run (see the package doc); tests must not stop,
// kill or restart a shared server.
func Shared(t testing.TB, kind Kind) *Server {
	t.Helper()
	if s := fromEnv(t, kind); s != nil {
		return s
	}
	shared.mu.Lock()
	if shared.m == nil {
		shared.m = map[Kind]*sharedEntry{}
	}
	e := shared.m[kind]
	if e == nil {
		e = &sharedEntry{}
		shared.m[kind] = e
	}
	shared.mu.Unlock()
	e.once.Do(func() { e.s, e.err = Start(context.Background(), kind, nil) })
	if e.err != nil {
		failStart(t, kind, e.err)
		return nil
	}
	return e.s
}

// StopShared stops every server started by [Shared] and removes their
// directories; a later Shared starts new ones. Call it from TestMain after
// m.Run.
func StopShared() {
	shared.mu.Lock()
	m := shared.m
	shared.m = nil
	shared.mu.Unlock()
	for _, e := range m {
		if e.s != nil {
			e.s.Stop()
		}
	}
}
