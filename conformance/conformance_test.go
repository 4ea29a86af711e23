package conformance_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/hub"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func memHarness() conformance.Harness {
	sp := memory.NewSpace(nil)
	return conformance.Harness{Open: func(context.Context) (claim.Backend, error) { return memory.New(sp, nil) }}
}

// The reference backend passes every check.
func TestMemory(t *testing.T) { conformance.Run(t, memHarness()) }

func TestMemoryWithLimit(t *testing.T) {
	sp := memory.NewSpace(&memory.SpaceOptions{MaxValueLen: 1000})
	err := conformance.Test(context.Background(), conformance.Harness{
		Open: func(context.Context) (claim.Backend, error) { return memory.New(sp, nil) },
	}, "TooLarge", "Store")
	if err != nil {
		t.Fatal(err)
	}
}

// Each broken backend must be caught by the named checks.
func TestCatchesBrokenBackends(t *testing.T) {
	cases := []struct {
		bug    bug
		checks []string // each of these must fail
	}{
		{nonAtomicClaim, []string{"MutualExclusion"}},
		{releaseWithoutTokenCheck, []string{"StaleHolder", "ReleaseTwice"}},
		{commitWithoutTokenCheck, []string{"StaleHolder"}},
		{dropsWakeups, []string{"NoLostWakeup"}},
		{repeatsTokens, []string{"TokensIncrease", "ClaimHeld"}},
		{neverExpires, []string{"ExpiryTakeover", "TokensIncrease"}},
		{wakesOneWaiter, []string{"WakeEveryWaiter"}},
		{ignoresLocalDeadline, []string{"LocalDeadline"}},
		{noLimit, []string{"TooLarge"}},
		{ignoresClose, []string{"Closed"}},
		{commitReleaseWithoutTokenCheck, []string{"CommitRelease"}},
		{commitReleaseDropsWakeups, []string{"CommitRelease"}},
		{claimReadMissesValue, []string{"ClaimRead"}},
		{claimReadReturnsExpired, []string{"ClaimRead"}},
		{releasesExpired, []string{"ReleaseExpired"}},
	}
	for _, c := range cases {
		t.Run(c.bug.String(), func(t *testing.T) {
			t.Parallel()
			sp := newNaive(c.bug)
			h := conformance.Harness{
				Open:    func(context.Context) (claim.Backend, error) { return sp.client(), nil },
				Timeout: 20 * time.Second,
			}
			for _, name := range c.checks {
				err := conformance.Test(context.Background(), h, name)
				if err == nil {
					t.Errorf("check %s passed a backend with bug %q", name, c.bug)
					continue
				}
				t.Logf("%s caught it: %.300s", name, firstLine(err))
			}
		})
	}
	// The naive backend without bugs passes the checks used above, so
	// each failure is the bug's doing.
	t.Run("none", func(t *testing.T) {
		t.Parallel()
		sp := newNaive(0)
		h := conformance.Harness{Open: func(context.Context) (claim.Backend, error) { return sp.client(), nil }}
		if err := conformance.Test(context.Background(), h); err != nil {
			t.Fatalf("bug-free naive backend failed: %v", err)
		}
	})
}

// A backend without the optional interfaces passes: their checks do not
// apply.
func TestOptionalNotApplicable(t *testing.T) {
	sp := memory.NewSpace(nil)
	h := conformance.Harness{Open: func(context.Context) (claim.Backend, error) {
		b, err := memory.New(sp, nil)
		return plain{b}, err
	}}
	if err := conformance.Test(context.Background(), h, "ClaimRead", "CommitRelease"); err != nil {
		t.Fatal(err)
	}
}

// plain hides a backend's optional interfaces.
type plain struct{ claim.Backend }

func TestNames(t *testing.T) {
	err := conformance.Test(context.Background(), memHarness(), "NoSuchCheck")
	if err == nil || !strings.Contains(err.Error(), "NoSuchCheck") {
		t.Errorf("unknown check name: err = %v", err)
	}
}

func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

type bug int

const (
	nonAtomicClaim bug = 1 << iota
	releaseWithoutTokenCheck
	commitWithoutTokenCheck
	dropsWakeups
	repeatsTokens
	neverExpires
	wakesOneWaiter
	ignoresLocalDeadline
	noLimit
	ignoresClose
	commitReleaseWithoutTokenCheck
	commitReleaseDropsWakeups
	claimReadMissesValue
	claimReadReturnsExpired
	releasesExpired
)

func (b bug) String() string {
	return map[bug]string{
		nonAtomicClaim: "non-atomic claim", releaseWithoutTokenCheck: "release without token check",
		commitWithoutTokenCheck: "commit without token check", dropsWakeups: "notify drops wake-ups",
		repeatsTokens: "tokens repeat", neverExpires: "leases never expire", wakesOneWaiter: "wakes one waiter",
		ignoresLocalDeadline: "ignores local deadline", noLimit: "no value limit", ignoresClose: "ignores Close",
		commitReleaseWithoutTokenCheck: "commit-release without token check", commitReleaseDropsWakeups: "commit-release wakes nobody",
		claimReadMissesValue: "claim-read misses the value", claimReadReturnsExpired: "claim-read returns expired values",
		releasesExpired: "releases expired leases",
	}[b]
}

// naive is a small in-process backend written the obvious way, with
// switchable bugs. It is independent of claim/memory on purpose.
type naive struct {
	bugs   bug
	mu     sync.Mutex
	locks  map[string]claim.Lease
	exp    map[string]time.Time
	fence  map[string]uint64
	vals   map[string][]byte
	vexp   map[string]time.Time
	subs   map[string][]*naiveClient
	holder int
}

func newNaive(b bug) *naive {
	return &naive{bugs: b, locks: map[string]claim.Lease{}, exp: map[string]time.Time{}, fence: map[string]uint64{},
		vals: map[string][]byte{}, vexp: map[string]time.Time{}, subs: map[string][]*naiveClient{}}
}

const naiveLimit = 1 << 16

type naiveClient struct {
	n      *naive
	hub    *hub.Hub
	mu     sync.Mutex
	closed bool
}

func (n *naive) client() *naiveClient {
	c := &naiveClient{n: n}
	c.hub = hub.New(naiveSub{c})
	return c
}

type naiveSub struct{ c *naiveClient }

func (s naiveSub) Subscribe(_ context.Context, key string) error {
	s.c.n.mu.Lock()
	defer s.c.n.mu.Unlock()
	s.c.n.subs[key] = append(s.c.n.subs[key], s.c)
	return nil
}

func (s naiveSub) Unsubscribe(key string) {
	s.c.n.mu.Lock()
	defer s.c.n.mu.Unlock()
	l := s.c.n.subs[key]
	for i, c := range l {
		if c == s.c {
			s.c.n.subs[key] = append(l[:i], l[i+1:]...)
			break
		}
	}
}

func (c *naiveClient) pre(ctx context.Context, key string) error {
	if key == "" {
		return claim.ErrInvalidKey
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed && c.n.bugs&ignoresClose == 0 {
		return claim.ErrClosed
	}
	return ctx.Err()
}

func (c *naiveClient) Features() claim.Features {
	f := claim.Features{Name: "naive", Notify: claim.Push, AtomicCommit: true, DurableFence: true, MaxValueLen: naiveLimit}
	return f
}

// live reports whether key's lease is live; n.mu held.
func (n *naive) live(key string) bool {
	_, ok := n.locks[key]
	return ok && (n.bugs&neverExpires != 0 || time.Now().Before(n.exp[key]))
}

func (c *naiveClient) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	if err := c.pre(ctx, key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("bad ttl")
	}
	start := time.Now()
	n := c.n
	n.mu.Lock()
	if n.live(key) {
		rem := max(time.Until(n.exp[key]), 0)
		n.mu.Unlock()
		return claim.Lease{}, &claim.HeldError{Key: key, Remaining: rem}
	}
	if n.bugs&nonAtomicClaim != 0 {
		// Check, then act: the gap lets two claimers in.
		n.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		n.mu.Lock()
	}
	n.fence[key]++
	n.holder++
	l := claim.Lease{Key: key, Holder: fmt.Sprint(n.holder), Token: n.fence[key], TTL: ttl, Deadline: start.Add(ttl)}
	if n.bugs&repeatsTokens != 0 {
		l.Token = 1
	}
	n.locks[key] = l
	n.exp[key] = time.Now().Add(ttl)
	n.mu.Unlock()
	return l, nil
}

func (n *naive) current(l claim.Lease) bool {
	cur, ok := n.locks[l.Key]
	return ok && n.live(l.Key) && cur.Holder == l.Holder && cur.Token == l.Token
}

func (c *naiveClient) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := c.pre(ctx, l.Key); err != nil {
		return claim.Lease{}, err
	}
	start := time.Now()
	if l.Expired(start) && c.n.bugs&ignoresLocalDeadline == 0 {
		return claim.Lease{}, claim.ErrLost
	}
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.current(l) {
		return claim.Lease{}, claim.ErrLost
	}
	n.exp[l.Key] = time.Now().Add(ttl)
	l.TTL, l.Deadline = ttl, start.Add(ttl)
	return l, nil
}

func (c *naiveClient) Release(ctx context.Context, l claim.Lease) error {
	if err := c.pre(ctx, l.Key); err != nil {
		return err
	}
	n := c.n
	n.mu.Lock()
	cur, held := n.locks[l.Key]
	expiredOwn := n.bugs&releasesExpired != 0 && held && cur.Holder == l.Holder && cur.Token == l.Token
	if !n.current(l) && !(n.bugs&releaseWithoutTokenCheck != 0 && n.live(l.Key)) && !expiredOwn {
		n.mu.Unlock()
		return claim.ErrLost
	}
	delete(n.locks, l.Key)
	subs := append([]*naiveClient(nil), n.subs[l.Key]...)
	n.mu.Unlock()
	c.n.wake(l.Key, subs)
	return nil
}

func (n *naive) wake(key string, subs []*naiveClient) {
	if n.bugs&dropsWakeups != 0 {
		// Only wakes what is already waiting: nothing is kept for a
		// subscriber that has not started receiving yet.
		return
	}
	if n.bugs&wakesOneWaiter != 0 && len(subs) > 1 {
		subs = subs[:1]
	}
	for _, s := range subs {
		s.hub.Wake(key)
	}
}

func (c *naiveClient) Commit(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	if err := c.pre(ctx, l.Key); err != nil {
		return err
	}
	if len(v) > naiveLimit && c.n.bugs&noLimit == 0 {
		return &claim.TooLargeError{What: "value", Size: len(v), Limit: naiveLimit}
	}
	if l.Expired(time.Now()) && c.n.bugs&ignoresLocalDeadline == 0 {
		return claim.ErrLost
	}
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.current(l) && n.bugs&commitWithoutTokenCheck == 0 {
		return claim.ErrLost
	}
	n.set(l.Key, v, ttl)
	return nil
}

func (n *naive) set(key string, v []byte, ttl time.Duration) {
	n.vals[key] = append([]byte{}, v...)
	if ttl > 0 {
		n.vexp[key] = time.Now().Add(ttl)
	} else {
		delete(n.vexp, key)
	}
}

func (c *naiveClient) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	l, err := c.TryClaim(ctx, key, ttl)
	if err != nil {
		return l, nil, false, err
	}
	// Not atomic with the claim: the conformance checks cannot see the
	// gap, so this backend's race is not one of its switchable bugs.
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.vals[key]
	if e, has := n.vexp[key]; ok && has && !time.Now().Before(e) && n.bugs&claimReadReturnsExpired == 0 {
		ok = false
	}
	if !ok || n.bugs&claimReadMissesValue != 0 {
		return l, nil, false, nil
	}
	return l, append([]byte{}, v...), true, nil
}

func (c *naiveClient) CommitRelease(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	if err := c.pre(ctx, l.Key); err != nil {
		return err
	}
	if len(v) > naiveLimit && c.n.bugs&noLimit == 0 {
		return &claim.TooLargeError{What: "value", Size: len(v), Limit: naiveLimit}
	}
	if l.Expired(time.Now()) && c.n.bugs&ignoresLocalDeadline == 0 {
		return claim.ErrLost
	}
	n := c.n
	n.mu.Lock()
	if !n.current(l) && !(n.bugs&commitReleaseWithoutTokenCheck != 0 && n.live(l.Key)) {
		n.mu.Unlock()
		return claim.ErrLost
	}
	n.set(l.Key, v, ttl)
	delete(n.locks, l.Key)
	subs := append([]*naiveClient(nil), n.subs[l.Key]...)
	n.mu.Unlock()
	if n.bugs&commitReleaseDropsWakeups == 0 {
		n.wake(l.Key, subs)
	}
	return nil
}

func (c *naiveClient) Get(ctx context.Context, key string) ([]byte, error) {
	if err := c.pre(ctx, key); err != nil {
		return nil, err
	}
	n := c.n
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.vals[key]
	if e, has := n.vexp[key]; ok && has && !time.Now().Before(e) {
		ok = false
	}
	if !ok {
		return nil, claim.ErrNotFound
	}
	return append([]byte{}, v...), nil
}

func (c *naiveClient) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	if err := c.pre(ctx, key); err != nil {
		return err
	}
	if len(v) > naiveLimit && c.n.bugs&noLimit == 0 {
		return &claim.TooLargeError{What: "value", Size: len(v), Limit: naiveLimit}
	}
	c.n.mu.Lock()
	defer c.n.mu.Unlock()
	c.n.set(key, v, ttl)
	return nil
}

func (c *naiveClient) Delete(ctx context.Context, key string) error {
	if err := c.pre(ctx, key); err != nil {
		return err
	}
	c.n.mu.Lock()
	defer c.n.mu.Unlock()
	delete(c.n.vals, key)
	return nil
}

func (c *naiveClient) Subscribe(ctx context.Context, key string) (*claim.Subscription, error) {
	if err := c.pre(ctx, key); err != nil {
		return nil, err
	}
	return c.hub.Subscribe(ctx, key)
}

func (c *naiveClient) Notify(ctx context.Context, key string) error {
	if err := c.pre(ctx, key); err != nil {
		return err
	}
	c.n.mu.Lock()
	subs := append([]*naiveClient(nil), c.n.subs[key]...)
	c.n.mu.Unlock()
	c.n.wake(key, subs)
	return nil
}

func (c *naiveClient) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	if c.n.bugs&ignoresClose == 0 {
		c.hub.Close()
	}
	return nil
}
