package securitytest

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// Unresponsive starts a loopback listener that accepts connections, reads
// what it is sent and never answers: the server of PITFALLS.md's hangs.
// It returns its address, host:port; it is closed when the test ends.
func Unresponsive(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// noHangSlack is what NoHang allows past the operation timeout.
const noHangSlack = time.Second

// NoHang checks that a Client never hangs its caller on a server that
// accepts connections and never answers, under context.Background()
// (rawURL names such a server, Unresponsive): claim.Open fails within
// claim.DefaultOpTimeout + 1 s with an error wrapping ErrUnavailable;
// then, opened with lazy=true (or, where the driver must dial to open,
// failing as fast), every method of the Client (all at once) and Close
// return within claim.DefaultOpTimeout + 1 s of their start, each failing
// with ErrUnavailable (Subscribe on a poll backend, which needs no round
// trip, may succeed).
func NoHang(t *testing.T, rawURL string) {
	t.Helper()
	bound := claim.DefaultOpTimeout + noHangSlack
	ctx := context.Background()
	within := func(t *testing.T, what string, start time.Time) {
		t.Helper()
		if d := time.Since(start); d > bound {
			t.Errorf("%s took %s, bound %s", what, d.Round(time.Millisecond), bound)
		}
	}

	start := time.Now()
	c, err := claim.Open(ctx, rawURL)
	within(t, "Open", start)
	if err == nil {
		c.Close()
		t.Fatal("Open succeeded on a server that never answers")
	}
	if !errors.Is(err, claim.ErrUnavailable) {
		t.Errorf("Open: %v, want ErrUnavailable", err)
	}

	sep := "?"
	if strings.Contains(rawURL, "?") {
		sep = "&"
	}
	start = time.Now()
	c, err = claim.Open(ctx, rawURL+sep+"lazy=true")
	within(t, "Open lazy=true", start)
	if err != nil {
		if !errors.Is(err, claim.ErrUnavailable) {
			t.Errorf("Open lazy=true: %v, want ErrUnavailable", err)
		}
		t.Logf("Open lazy=true fails (the driver dials to open): %v", err)
		return
	}
	poll := c.Features().Notify == claim.Poll
	now := time.Now()
	l := claim.Lease{Key: "k", Holder: "000000000000000000000000", Token: 1, TTL: time.Minute, Deadline: now.Add(time.Minute)}
	ops := map[string]func() error{
		"TryClaim": func() error { _, err := c.TryClaim(ctx, "k", time.Second); return err },
		"TryClaimRead": func() error {
			_, _, _, err := c.TryClaimRead(ctx, "k", time.Second)
			return err
		},
		"Acquire": func() error { _, err := c.Acquire(ctx, "k", time.Second); return err },
		"GetOrAcquire": func() error {
			_, err := c.GetOrAcquire(ctx, "k", time.Second, nil)
			return err
		},
		"Extend":        func() error { _, err := c.Extend(ctx, l, time.Second); return err },
		"Release":       func() error { return c.Release(ctx, l) },
		"Commit":        func() error { return c.Commit(ctx, l, []byte("v"), 0) },
		"CommitRelease": func() error { return c.CommitRelease(ctx, l, []byte("v"), 0) },
		"Get":           func() error { _, err := c.Get(ctx, "k"); return err },
		"Set":           func() error { return c.Set(ctx, "k", []byte("v"), 0) },
		"Delete":        func() error { return c.Delete(ctx, "k") },
		"Notify":        func() error { return c.Notify(ctx, "k") },
		"Publish":       func() error { return c.Publish(ctx, "t", []byte("m")) },
		"Ping":          func() error { return c.Ping(ctx) },
		"Subscribe": func() error {
			s, err := c.Subscribe(ctx, "k2")
			if err == nil {
				s.Close()
			}
			return err
		},
		"SubscribeTopic": func() error {
			stop, err := c.SubscribeTopic(ctx, "t2", func([]byte, bool) {})
			if err == nil {
				stop()
			}
			return err
		},
	}
	var wg sync.WaitGroup
	for name, op := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := op()
			within(t, name, start)
			switch {
			case err == nil && poll && strings.HasPrefix(name, "Subscribe"):
			case err == nil:
				t.Errorf("%s succeeded on a server that never answers", name)
			case !errors.Is(err, claim.ErrUnavailable):
				t.Errorf("%s: %v, want ErrUnavailable", name, err)
			}
		}()
	}
	wg.Wait()
	start = time.Now()
	_ = c.Close()
	within(t, "Close", start)
}

// AnswersHTTP starts a loopback listener that answers the first bytes of
// every connection the way an HTTP server refuses a request it cannot
// parse, and closes it: a server of another kind for a backend's URL. It returns its
// address, host:port; it is closed when the test ends.
func AnswersHTTP(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				// Like an HTTP server: read (part of) the request, then
				// refuse it. Every client of ours speaks first.
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				_, _ = c.Read(make([]byte, 4096))
				_, _ = c.Write([]byte("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}
