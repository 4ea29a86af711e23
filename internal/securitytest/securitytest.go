// Package securitytest holds the bad-input and isolation checks every
// backend's tests run against its real server: limits at limit−1, limit
// and limit+1 (over-limit refused before any I/O), long keys that stay
// distinct, two key prefixes on one server that never touch each other,
// hostile L2 values that read as misses, a round trip over TLS and
// authentication (through the URL and through New), the clients such a
// server must refuse, errors that never show a password, and the fuzz
// targets of key encodings (injective, within the substrate's limit, only
// allowed bytes) and of URL parsers.
//
// It is imported by tests only.
package securitytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// Timeout bounds every server round trip of these checks.
const Timeout = 30 * time.Second

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	t.Cleanup(cancel)
	return ctx
}

// Unique returns a key prefix unique to this test run, so checks on a
// shared server (and -count=N) never see each other's keys.
func Unique(t testing.TB) string {
	sum := sha256.Sum256([]byte(fmt.Sprint(t.Name(), time.Now().UnixNano())))
	return fmt.Sprintf("sec-%x-", sum[:5])
}

// Pattern returns n bytes that differ with n and seed, so a truncated or
// mixed-up value never compares equal.
func Pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7+int(seed)) ^ byte(i>>8)
	}
	return b
}

// Roundtrip claims, commits, reads, notifies and releases one key: proof
// that a client opened with TLS and credentials really talks to its
// server.
func Roundtrip(t testing.TB, b *claim.Client) {
	t.Helper()
	ctx := ctxT(t)
	key := Unique(t) + "roundtrip"
	sub, err := b.Subscribe(ctx, key)
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()
	l, err := b.TryClaim(ctx, key, 10*time.Second)
	if err != nil {
		t.Fatalf("TryClaim: %v", err)
	}
	if err := b.Commit(ctx, l, []byte("over TLS"), time.Minute); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if v, err := b.Get(ctx, key); err != nil || string(v) != "over TLS" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Fatalf("Release: %v", err)
	}
	select {
	case <-sub.C():
	case <-ctx.Done():
		t.Fatalf("Release did not wake the subscriber")
	}
	if err := b.Delete(ctx, key); err != nil {
		t.Fatalf("Delete: %v", err)
	}
}

// ValueLimit stores values of limit−1, limit and limit+1 bytes with Set
// and Commit: up to limit they round-trip byte for byte through the real
// server (so limit is not more than the substrate accepts), limit+1 is
// ErrTooLarge.
func ValueLimit(t *testing.T, b *claim.Client, limit int) {
	t.Helper()
	if limit <= 0 {
		t.Fatalf("ValueLimit: no limit (%d)", limit)
	}
	ctx := ctxT(t)
	base := Unique(t)
	for i, n := range []int{limit - 1, limit, limit + 1} {
		v := Pattern(n, byte(i))
		for _, op := range []string{"Set", "Commit"} {
			key := fmt.Sprintf("%svalue-%s-%d", base, op, n)
			var err error
			if op == "Set" {
				err = b.Set(ctx, key, v, time.Minute)
			} else {
				l, cerr := b.TryClaim(ctx, key, 20*time.Second)
				if cerr != nil {
					t.Fatalf("TryClaim: %v", cerr)
				}
				err = b.Commit(ctx, l, v, time.Minute)
				if rerr := b.Release(ctx, l); rerr != nil {
					t.Errorf("Release: %v", rerr)
				}
			}
			if n > limit {
				if !errors.Is(err, claim.ErrTooLarge) {
					t.Errorf("%s of %d bytes (limit %d): err = %v, want ErrTooLarge", op, n, limit, err)
				}
				if _, gerr := b.Get(ctx, key); !errors.Is(gerr, claim.ErrNotFound) {
					t.Errorf("%s of %d bytes (limit %d) refused, but Get says %v, want ErrNotFound", op, n, limit, gerr)
				}
				continue
			}
			if err != nil {
				t.Errorf("%s of %d bytes (limit %d): %v", op, n, limit, err)
				continue
			}
			got, err := b.Get(ctx, key)
			if err != nil || !bytes.Equal(got, v) {
				t.Errorf("%s of %d bytes (limit %d): Get returned %d bytes, equal %v, err %v", op, n, limit, len(got), bytes.Equal(got, v), err)
			}
			_ = b.Delete(ctx, key)
		}
	}
}

// OverLimitNoIO calls every limited method with limit+1 bytes on a backend
// whose server is gone (stopped, or cut off by [Proxy]): each call must
// return ErrTooLarge, not a network error, and must not wait for the
// network. lease is a lease the backend issued before its server went
// away (or a zero Lease: Commit is then skipped). payloadLimit > 0 checks
// Publish with a message of that many bytes + 1 as well.
func OverLimitNoIO(t *testing.T, dead *claim.Client, limit int, lease claim.Lease, payloadLimit int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v := make([]byte, limit+1)
	start := time.Now()
	if err := dead.Set(ctx, "k", v, time.Minute); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set of limit+1 bytes with the server gone: err = %v, want ErrTooLarge", err)
	}
	if lease.Key != "" {
		if err := dead.Commit(ctx, lease, v, time.Minute); !errors.Is(err, claim.ErrTooLarge) {
			t.Errorf("Commit of limit+1 bytes with the server gone: err = %v, want ErrTooLarge", err)
		}
		if err := dead.CommitRelease(ctx, lease, v, time.Minute); !errors.Is(err, claim.ErrTooLarge) {
			t.Errorf("CommitRelease of limit+1 bytes with the server gone: err = %v, want ErrTooLarge", err)
		}
	}
	if payloadLimit > 0 {
		if err := dead.Publish(ctx, "topic", make([]byte, payloadLimit+1)); !errors.Is(err, claim.ErrTooLarge) {
			t.Errorf("Publish of limit+1 bytes with the server gone: err = %v, want ErrTooLarge", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("over-limit calls took %v: they waited for the network", d)
	}
}

// PublishLimit publishes messages of limit−1, limit and limit+1 bytes on a
// live Broadcaster, where limit is limitFor(topic) (the limit may depend on
// the topic's length): up to limit they are delivered intact to a
// subscriber in another client, limit+1 is ErrTooLarge.
func PublishLimit(t *testing.T, pub, sub *claim.Client, limitFor func(topic string) int) {
	t.Helper()
	ctx := ctxT(t)
	topic := Unique(t) + "topic"
	limit := limitFor(topic)
	got := make(chan []byte, 4)
	stop, err := sub.SubscribeTopic(ctx, topic, func(msg []byte, reset bool) {
		if !reset {
			got <- bytes.Clone(msg)
		}
	})
	if err != nil {
		t.Fatalf("SubscribeTopic: %v", err)
	}
	defer stop()
	for i, n := range []int{limit - 1, limit, limit + 1} {
		m := Pattern(n, byte(i))
		err := pub.Publish(ctx, topic, m)
		if n > limit {
			if !errors.Is(err, claim.ErrTooLarge) {
				t.Errorf("Publish of %d bytes (limit %d): err = %v, want ErrTooLarge", n, limit, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Publish of %d bytes (limit %d): %v", n, limit, err)
			continue
		}
		select {
		case g := <-got:
			if !bytes.Equal(g, m) {
				t.Errorf("Publish of %d bytes: received %d bytes, equal %v", n, len(g), bytes.Equal(g, m))
			}
		case <-ctx.Done():
			t.Fatalf("Publish of %d bytes: not delivered", n)
		}
	}
}

// LongKeys subscribes to, claims, stores and releases keys of each given
// length, and for each a second key that differs only in its last byte:
// every key works, wake-ups included (long keys are hashed, never refused
// or truncated), and the two never collide.
func LongKeys(t *testing.T, b *claim.Client, lengths []int) {
	t.Helper()
	ctx := ctxT(t)
	base := Unique(t)
	for _, n := range lengths {
		if n <= len(base) {
			n = len(base) + 1
		}
		k1 := base + strings.Repeat("k", n-len(base))
		k2 := k1[:n-1] + "j"
		for i, k := range []string{k1, k2} {
			sub, err := b.Subscribe(ctx, k)
			if err != nil {
				t.Errorf("Subscribe to a %d-byte key (#%d): %v", n, i, err)
				continue
			}
			l, err := b.TryClaim(ctx, k, 20*time.Second)
			if err != nil {
				sub.Close()
				t.Errorf("TryClaim of a %d-byte key (#%d): %v", n, i, err)
				continue
			}
			if err := b.Commit(ctx, l, []byte(fmt.Sprint("value-", i)), time.Minute); err != nil {
				t.Errorf("Commit of a %d-byte key (#%d): %v", n, i, err)
			}
			if err := b.Release(ctx, l); err != nil {
				t.Errorf("Release of a %d-byte key (#%d): %v", n, i, err)
			}
			select {
			case <-sub.C():
			case <-ctx.Done():
				t.Errorf("Release of a %d-byte key (#%d) woke no subscriber", n, i)
			}
			sub.Close()
		}
		for i, k := range []string{k1, k2} {
			v, err := b.Get(ctx, k)
			if want := fmt.Sprint("value-", i); err != nil || string(v) != want {
				t.Errorf("Get of a %d-byte key (#%d) = %q, %v; want %q (keys collide or were truncated)", n, i, v, err, want)
			}
			_ = b.Delete(ctx, k)
		}
	}
}

// Isolation checks two clients of one server with different key prefixes
// (namespaces): the same user key claimed in both at once succeeds in
// both; values, Release, Commit, Extend, Delete and Notify in one never
// touch the other; a lease of one is ErrLost in the other.
func Isolation(t *testing.T, a, b *claim.Client) {
	t.Helper()
	ctx := ctxT(t)
	key := Unique(t) + "shared-name"
	subA, err := a.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer subA.Close()
	subB, err := b.Subscribe(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer subB.Close()

	la, err := a.TryClaim(ctx, key, 20*time.Second)
	if err != nil {
		t.Fatalf("TryClaim in A: %v", err)
	}
	lb, err := b.TryClaim(ctx, key, 20*time.Second)
	if err != nil {
		t.Fatalf("TryClaim in B while A holds the same key: %v", err)
	}
	if err := a.Commit(ctx, la, []byte("A"), time.Minute); err != nil {
		t.Fatalf("Commit in A: %v", err)
	}
	if err := b.Commit(ctx, lb, []byte("B"), time.Minute); err != nil {
		t.Fatalf("Commit in B: %v", err)
	}
	wantValue := func(c *claim.Client, name, want string) {
		t.Helper()
		v, err := c.Get(ctx, key)
		if want == "" {
			if !errors.Is(err, claim.ErrNotFound) {
				t.Errorf("Get in %s = %q, %v; want ErrNotFound", name, v, err)
			}
			return
		}
		if err != nil || string(v) != want {
			t.Errorf("Get in %s = %q, %v; want %q", name, v, err, want)
		}
	}
	wantValue(a, "A", "A")
	wantValue(b, "B", "B")

	// A's lease means nothing to B: B can neither commit, extend nor
	// release with it (whatever the lease's handle names).
	if err := b.Commit(ctx, la, []byte("A-in-B"), time.Minute); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Commit in B with A's lease: %v, want ErrLost", err)
	}
	if _, err := b.Extend(ctx, la, 20*time.Second); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Extend in B with A's lease: %v, want ErrLost", err)
	}
	if err := b.Release(ctx, la); !errors.Is(err, claim.ErrLost) {
		t.Errorf("Release in B with A's lease: %v, want ErrLost", err)
	}
	wantValue(b, "B", "B")
	if _, err := a.TryClaim(ctx, key, time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("A's claim after B's attempts: TryClaim in A = %v, want ErrHeld", err)
	}

	if _, err := b.Extend(ctx, lb, 20*time.Second); err != nil {
		t.Errorf("Extend in B: %v", err)
	}

	// From here on only A acts. A poll backend's subscriber may still be
	// woken by B's own claim and extension above, a moment later: let
	// that happen, then forget it.
	time.Sleep(300 * time.Millisecond)
	drain := func(s *claim.Subscription) {
		for {
			select {
			case <-s.C():
			default:
				return
			}
		}
	}
	drain(subA)
	drain(subB)
	// Release in A wakes A's subscriber, not B's; B still holds its lease.
	if err := a.Release(ctx, la); err != nil {
		t.Fatalf("Release in A: %v", err)
	}
	select {
	case <-subA.C():
	case <-ctx.Done():
		t.Fatal("Release in A did not wake A's subscriber")
	}
	// Notify in A wakes A's subscriber only.
	if err := a.Notify(ctx, key); err != nil {
		t.Fatal(err)
	}
	select {
	case <-subA.C():
	case <-ctx.Done():
		t.Fatal("Notify in A did not wake A's subscriber")
	}
	// Delete and Set in A leave B's value alone.
	if err := a.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	wantValue(a, "A", "")
	wantValue(b, "B", "B")
	if err := a.Set(ctx, key, []byte("A2"), time.Minute); err != nil {
		t.Fatal(err)
	}
	wantValue(b, "B", "B")
	if _, err := b.TryClaim(ctx, key, time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("B's claim after A's Release: TryClaim in B = %v, want ErrHeld", err)
	}
	// B has seen nothing of all that. A wake-up may lag the event, so
	// give one a moment to arrive (a false pass is possible, a false
	// failure is not).
	select {
	case <-subB.C():
		t.Error("B's subscriber was woken by A's Release or Notify")
	case <-time.After(300 * time.Millisecond):
	}
	if err := b.Release(ctx, lb); err != nil {
		t.Errorf("Release in B: %v", err)
	}
	select {
	case <-subB.C():
	case <-ctx.Done():
		t.Fatal("Release in B did not wake B's subscriber")
	}
	wantValue(a, "A", "A2")
	_ = a.Delete(ctx, key)
	_ = b.Delete(ctx, key)
}

// CheckEncoding is the property a key encoding must have, for fuzz
// targets: names(k) returns every substrate name derived from key k
// (lock, value, channel, ...). Each name is at most maxLen bytes (0: no
// limit) and made of allowed bytes only (nil: any), and names of
// different keys never coincide.
func CheckEncoding(t *testing.T, k1, k2 string, names func(string) []string, maxLen int, allowed func(byte) bool) {
	t.Helper()
	n1, n2 := names(k1), names(k2)
	seen := map[string]bool{}
	for _, n := range n1 {
		seen[n] = true
	}
	for _, ns := range [][]string{n1, n2} {
		for _, n := range ns {
			if maxLen > 0 && len(n) > maxLen {
				t.Fatalf("name %q is %d bytes, over the limit %d", n, len(n), maxLen)
			}
			if allowed != nil {
				for i := 0; i < len(n); i++ {
					if !allowed(n[i]) {
						t.Fatalf("name %q has byte %#x, not allowed", n, n[i])
					}
				}
			}
		}
	}
	if k1 == k2 {
		if fmt.Sprint(n1) != fmt.Sprint(n2) {
			t.Fatalf("key %q encoded two ways: %q, %q", k1, n1, n2)
		}
		return
	}
	for _, n := range n2 {
		if seen[n] {
			t.Fatalf("keys %q and %q both map to %q", k1, k2, n)
		}
	}
}

// FuzzKeys makes f the fuzz target of a backend's key encoding: check
// gets every pair of non-empty keys (the Client refuses empty ones) and
// calls CheckEncoding on the names the backend derives from them. The
// seeds are two plain keys, a key and its look-alike with the escape byte
// ("=a" and "a"), keys of readable and readable+1 bytes (on either side
// of the length where the backend's readable keys give way to hashed
// ones), and seeds, the backend's own pairs (k1, k2, k1, k2, ...).
func FuzzKeys(f *testing.F, readable int, check func(t *testing.T, k1, k2 string), seeds ...string) {
	f.Helper()
	if len(seeds)%2 != 0 {
		f.Fatalf("FuzzKeys: %d seeds, want pairs", len(seeds))
	}
	seeds = append([]string{"a", "b", "=a", "a", strings.Repeat("k", readable), strings.Repeat("k", readable+1)}, seeds...)
	for i := 0; i < len(seeds); i += 2 {
		f.Add(seeds[i], seeds[i+1])
	}
	f.Fuzz(func(t *testing.T, k1, k2 string) {
		if k1 == "" || k2 == "" {
			return
		}
		check(t, k1, k2)
	})
}

// Proxy forwards TCP connections to a server until cut: Cut closes every
// connection and refuses new ones (accepted and closed at once), so the
// server looks gone to clients that dialled through it; Restore lets
// connections through again.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	cut    bool
	n      int // connections accepted
	wg     sync.WaitGroup
}

// Accepted returns how many connections the proxy has forwarded.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

// NewProxy starts a proxy to target on a loopback port; it is closed when
// the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.n++
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, s)
		go p.pipe(s, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// Cut closes every connection and refuses new ones until Restore.
// Idempotent.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// Restore lets new connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}
