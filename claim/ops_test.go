package claim_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// stuck is what a server that accepts and never answers does to a call
// that honours its context.
func stuck(ctx context.Context, _ string) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// Every backend call is bounded by the operation timeout, even under
// context.Background(), and its failure reads ErrUnavailable; a caller's
// own earlier deadline ends it with the context's error alone.
func TestOpTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, tc := range []struct {
			name string
			opt  *claim.Options
			ctx  func() (context.Context, context.CancelFunc)
			want time.Duration
			unav bool
		}{
			{"default", nil, background, claim.DefaultOpTimeout, true},
			{"option", &claim.Options{OpTimeout: time.Second}, background, time.Second, true},
			{"caller's deadline", nil, func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 100*time.Millisecond)
			}, 100 * time.Millisecond, false},
		} {
			s := newScript(t)
			s.get = stuck
			c := claim.NewClient(s, tc.opt)
			ctx, cancel := tc.ctx()
			start := time.Now()
			_, err := c.Get(ctx, "k")
			cancel()
			if d := time.Since(start); d != tc.want {
				t.Errorf("%s: Get returned after %s, want %s", tc.name, d, tc.want)
			}
			if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, claim.ErrUnavailable) != tc.unav {
				t.Errorf("%s: Get: %v, want DeadlineExceeded, ErrUnavailable %v", tc.name, err, tc.unav)
			}
			c.Close()
		}
	})
}

func background() (context.Context, context.CancelFunc) { return context.Background(), func() {} }

// A call that must undo something after a failure (here Publish through
// the topic log: it holds the log key's lease when its read fails) never
// waits past the caller's ctx for it: the release goes on in the
// background, bounded by the operation timeout, and Close waits for it.
// (Before, the release ran on a context without the caller's deadline:
// Invalidate given 5 s took 10 s in the soak.)
func TestCleanupWithinCallersContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		s.get = stuck
		released := make(chan error, 1)
		s.release = func(ctx context.Context, l driver.Lease) error {
			time.Sleep(time.Second) // a slow server
			err := s.Driver.Release(ctx, l)
			released <- err
			return err
		}
		c := claim.NewClient(s, &claim.Options{OpTimeout: 5 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := c.Publish(ctx, "topic", []byte("m"))
		if d := time.Since(start); d != 100*time.Millisecond {
			t.Errorf("Publish returned after %s, want 100ms (the caller's deadline)", d)
		}
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Publish: %v, want the caller's deadline", err)
		}
		if err := <-released; err != nil {
			t.Errorf("the log key's lease, released in the background: %v", err)
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
}

// Close waits for a background cleanup, within its own bound.
func TestCloseWaitsForCleanup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newScript(t)
		s.get = stuck
		s.release = func(ctx context.Context, l driver.Lease) error {
			time.Sleep(time.Second) // a slow server
			return s.Driver.Release(ctx, l)
		}
		c := claim.NewClient(s, &claim.Options{OpTimeout: 5 * time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		c.Publish(ctx, "topic", []byte("m"))
		start := time.Now()
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Errorf("Close returned after %s, want 1s (the release's)", d)
		}
	})
}

// Driver errors are classified: sentinels stay what they are, a
// configuration error is ErrConfig only, the caller's cancellation is the
// context's error only, anything else is ErrUnavailable.
func TestErrorClasses(t *testing.T) {
	boom := errors.New("connection refused")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, tc := range []struct {
		name     string
		err      error
		ctx      context.Context
		is, isnt []error
	}{
		{"outage", boom, context.Background(), []error{claim.ErrUnavailable, boom}, []error{claim.ErrConfig}},
		{"config", driver.Misconfigured(boom), context.Background(), []error{claim.ErrConfig, boom}, []error{claim.ErrUnavailable}},
		{"not found", claim.ErrNotFound, context.Background(), []error{claim.ErrNotFound}, []error{claim.ErrUnavailable}},
		{"cancelled", boom, ctx, []error{context.Canceled, boom}, []error{claim.ErrUnavailable}},
	} {
		s := newScript(t)
		s.get = func(context.Context, string) ([]byte, error) {
			if tc.ctx == ctx {
				cancel()
			}
			return nil, tc.err
		}
		c := claim.NewClient(s, nil)
		_, err := c.Get(tc.ctx, "k")
		for _, e := range tc.is {
			if !errors.Is(err, e) {
				t.Errorf("%s: %v is not %v", tc.name, err, e)
			}
		}
		for _, e := range tc.isnt {
			if errors.Is(err, e) {
				t.Errorf("%s: %v is %v", tc.name, err, e)
			}
		}
		if !strings.HasPrefix(err.Error(), `claim: get "k": `) {
			t.Errorf("%s: %q", tc.name, err)
		}
		c.Close()
	}
	if err := driver.Misconfigured(nil); err != nil {
		t.Errorf("Misconfigured(nil) = %v", err)
	}
}

// closeStuck is a driver whose Close does not return until released.
type closeStuck struct {
	*script
	release chan struct{}
}

func (c closeStuck) Close() error {
	<-c.release
	return c.script.Close()
}

// Close returns within the operation timeout even if the backend's does
// not.
func TestCloseBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := closeStuck{newScript(t), make(chan struct{})}
		c := claim.NewClient(d, &claim.Options{OpTimeout: 2 * time.Second})
		start := time.Now()
		err := c.Close()
		if d := time.Since(start); d != 2*time.Second {
			t.Errorf("Close returned after %s", d)
		}
		if !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("Close: %v, want ErrUnavailable", err)
		}
		if _, err := c.Get(context.Background(), "k"); !errors.Is(err, claim.ErrClosed) {
			t.Errorf("Get after Close: %v", err)
		}
		close(d.release)
		synctest.Wait()
	})
}

// pinger is a script driver with a Pinger whose answer a test sets.
type pinger struct {
	*script
	ping   error
	pinged int
	closed bool
}

func (p *pinger) Ping(context.Context) error { p.pinged++; return p.ping }
func (p *pinger) Close() error               { p.closed = true; return p.script.Close() }

var (
	openerMu sync.Mutex
	opened   []*url.URL
	next     *pinger
)

type testOpener struct{}

func (testOpener) OpenURL(_ context.Context, u *url.URL) (driver.Driver, error) {
	openerMu.Lock()
	defer openerMu.Unlock()
	opened = append(opened, u)
	return next, nil
}

func init() { claim.Register("optest", testOpener{}) }

// Open reads op_timeout and lazy, leaves lazy for the driver, checks the
// server unless lazy, and closes the driver when the check fails.
func TestOpenChecks(t *testing.T) {
	ctx := context.Background()
	open := func(t *testing.T, raw string, ping error) (*pinger, *claim.Client, error) {
		openerMu.Lock()
		next = &pinger{script: newScript(t), ping: ping}
		p := next
		openerMu.Unlock()
		c, err := claim.Open(ctx, raw)
		return p, c, err
	}

	p, c, err := open(t, "optest://x?op_timeout=2s&a=1", nil)
	if err != nil || p.pinged != 1 {
		t.Fatalf("Open: %v, pinged %d", err, p.pinged)
	}
	if q := opened[len(opened)-1].RawQuery; q != "a=1" {
		t.Errorf("the driver got query %q", q)
	}
	c.Close()

	p, _, err = open(t, "optest://u:hunter2@x", driver.Misconfigured(errors.New("WRONGPASS")))
	if !errors.Is(err, claim.ErrConfig) || !p.closed {
		t.Errorf("Open on a refusing server: %v (driver closed %v)", err, p.closed)
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows the password: %v", err)
	}

	p, c, err = open(t, "optest://x?lazy=true", driver.Misconfigured(errors.New("WRONGPASS")))
	if err != nil || p.pinged != 0 {
		t.Fatalf("Open lazy: %v, pinged %d", err, p.pinged)
	}
	if q := opened[len(opened)-1].RawQuery; q != "lazy=true" {
		t.Errorf("the driver got query %q, want lazy=true kept", q)
	}
	if err := c.Ping(ctx); !errors.Is(err, claim.ErrConfig) || !strings.HasPrefix(err.Error(), "claim: ping: ") {
		t.Errorf("Ping: %v", err)
	}
	c.Close()

	for _, raw := range []string{"optest://x?op_timeout=0s", "optest://x?op_timeout=soon", "optest://x?lazy=maybe"} {
		if _, _, err := open(t, raw, nil); err == nil {
			t.Errorf("Open(%q) succeeded", raw)
		}
	}
}

// Without a Pinger, Ping reads a key nobody writes: a miss is health.
func TestPingWithoutPinger(t *testing.T) {
	s := newScript(t)
	var got string
	s.get = func(ctx context.Context, key string) ([]byte, error) {
		got = key
		return s.Driver.Get(ctx, key)
	}
	c, err := claim.Connect(context.Background(), s, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.HasPrefix(got, "\x00stampede:") {
		t.Errorf("Ping read %q", got)
	}
}
