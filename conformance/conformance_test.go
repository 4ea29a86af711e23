package conformance_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/claim/memory"
	"github.com/stampede-go/stampede/conformance"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func memHarness() conformance.Harness {
	sp := memory.NewSpace(nil)
	return conformance.Harness{
		Open:         func(context.Context) (*claim.Client, error) { return memory.New(sp, nil) },
		OpenIsolated: func(context.Context) (*claim.Client, error) { return memory.New(memory.NewSpace(nil), nil) },
	}
}

// The reference backend passes every check.
func TestMemory(t *testing.T) { conformance.Run(t, memHarness()) }

func TestMemoryWithLimit(t *testing.T) {
	sp := memory.NewSpace(&memory.SpaceOptions{MaxValueLen: 1000})
	err := conformance.Test(context.Background(), conformance.Harness{
		Open: func(context.Context) (*claim.Client, error) { return memory.New(sp, nil) },
	}, "TooLarge", "Store")
	if err != nil {
		t.Fatal(err)
	}
}

// Each broken driver must be caught by the named checks.
func TestCatchesBrokenBackends(t *testing.T) {
	cases := []struct {
		bug    bug
		checks []string // each of these must fail
	}{
		{nonAtomicClaim, []string{"MutualExclusion"}},
		{releaseWithoutTokenCheck, []string{"StaleHolder", "ReleaseTwice"}},
		{commitWithoutTokenCheck, []string{"StaleHolder"}},
		{dropsWakeups, []string{"NoLostWakeup", "ElectionObserve"}},
		{repeatsTokens, []string{"TokensIncrease", "ClaimHeld", "ElectionOneLeader", "SemaphoreLimit"}},
		{neverExpires, []string{"ExpiryTakeover", "TokensIncrease", "ElectionTakeover", "SemaphoreTakeover"}},
		{wakesOneWaiter, []string{"WakeEveryWaiter"}},
		{commitReleaseWithoutTokenCheck, []string{"CommitRelease"}},
		{commitReleaseDropsWakeups, []string{"CommitRelease"}},
		{claimReadMissesValue, []string{"ClaimRead"}},
		{claimReadReturnsExpired, []string{"ClaimRead"}},
		{releasesExpired, []string{"ReleaseExpired"}},
		{acceptsServerExpired, []string{"ServerExpiry"}},
		{wakesBeforeChange, []string{"WakeAfterChange"}},
		{appliesCancelled, []string{"CancelledContext"}},
		{releaseReadThenDelete, []string{"ConcurrentRelease"}},
		{remainingWrongUnit, []string{"ClaimHeld"}},
		{subscribeNotLive, []string{"SubscribeLive"}},
		{unsubscribeIgnored, []string{"Unsubscribe"}},
		{busDeliversNowhere, []string{"Broadcast"}},
		{falseAtomicCommit, []string{"AtomicCommit"}},
		{falseMinTTL, []string{"GrantedTTL"}},
		{falseMaxValue, []string{"TooLarge"}},
		{fencesLostOnRestart, []string{"DurableFence"}},
		{sharedNamespace, []string{"Isolation"}},
		{revokeKeepsLease, []string{"Revoke", "RevokeSet", "RevokeWakes"}},
		{revokeResetsFence, []string{"Revoke", "RevokeSet"}},
		{revokeWakesNobody, []string{"RevokeWakes"}},
		{claimReadReadsFirst, []string{"RevokeRace"}},
		{claimManyIgnoresHeld, []string{"Batch"}},
		{commitManyWithoutTokenCheck, []string{"Batch"}},
		{getManyShifted, []string{"Batch", "BatchWait"}},
		{releaseManyWithoutTokenCheck, []string{"ReleaseMany"}},
		{grantsLIFO, []string{"FairOrder"}},
		{grantsDeadWaiters, []string{"FairSkipsDead"}},
		{grantKeepsToken, []string{"FairOrder", "FairFence"}},
		{dropsGrants, []string{"FairOrder", "FairFence", "FairTakeover"}},
	}
	for _, c := range cases {
		t.Run(c.bug.String(), func(t *testing.T) {
			t.Parallel()
			h := newNaive(c.bug).harness()
			h.Timeout = 20 * time.Second
			for _, name := range c.checks {
				err := conformance.Test(context.Background(), h, name)
				if err == nil {
					t.Errorf("check %s passed a driver with bug %q", name, c.bug)
					continue
				}
				t.Logf("%s caught it: %.300s", name, firstLine(err))
			}
		})
	}
	// The naive driver without bugs passes every check, so each failure
	// above is the bug's doing.
	t.Run("none", func(t *testing.T) {
		t.Parallel()
		if err := conformance.Test(context.Background(), newNaive(0).harness()); err != nil {
			t.Fatalf("bug-free naive driver failed: %v", err)
		}
	})
}

// A driver without the optional interfaces passes: the Client's fallbacks
// (claim then get, commit then release, the topic log) meet the contract.
func TestWithoutFastPaths(t *testing.T) {
	sp := memory.NewSpace(nil)
	plainClient := func(sp *memory.Space) (*claim.Client, error) {
		c, err := memory.New(sp, nil)
		if err != nil {
			return nil, err
		}
		return claim.NewClient(plain{c.Driver()}, nil), nil
	}
	h := conformance.Harness{
		Open:         func(context.Context) (*claim.Client, error) { return plainClient(sp) },
		OpenIsolated: func(context.Context) (*claim.Client, error) { return plainClient(memory.NewSpace(nil)) },
	}
	if err := conformance.Test(context.Background(), h); err != nil {
		t.Fatal(err)
	}
}

// plain hides a driver's optional interfaces.
type plain struct{ driver.Driver }

func (p plain) Features() driver.Features {
	f := p.Driver.Features()
	f.Broadcast = false
	return f
}

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
	commitReleaseWithoutTokenCheck
	commitReleaseDropsWakeups
	claimReadMissesValue
	claimReadReturnsExpired
	releasesExpired
	acceptsServerExpired
	wakesBeforeChange
	appliesCancelled
	releaseReadThenDelete
	remainingWrongUnit
	subscribeNotLive
	unsubscribeIgnored
	busDeliversNowhere
	falseAtomicCommit
	falseMinTTL
	falseMaxValue
	fencesLostOnRestart
	sharedNamespace
	revokeKeepsLease
	revokeResetsFence
	revokeWakesNobody
	claimReadReadsFirst
	claimManyIgnoresHeld
	commitManyWithoutTokenCheck
	getManyShifted
	releaseManyWithoutTokenCheck
	grantsLIFO
	grantsDeadWaiters
	grantKeepsToken
	dropsGrants
)

func (b bug) String() string {
	return map[bug]string{
		nonAtomicClaim: "non-atomic claim", releaseWithoutTokenCheck: "release without token check",
		commitWithoutTokenCheck: "commit without token check", dropsWakeups: "notify drops wake-ups",
		repeatsTokens: "tokens repeat", neverExpires: "leases never expire", wakesOneWaiter: "wakes one waiter",
		commitReleaseWithoutTokenCheck: "commit-release without token check", commitReleaseDropsWakeups: "commit-release wakes nobody",
		claimReadMissesValue: "claim-read misses the value", claimReadReturnsExpired: "claim-read returns expired values",
		releasesExpired:              "releases expired leases",
		acceptsServerExpired:         "commit and extend not judged on the server's expiry",
		wakesBeforeChange:            "wakes before the release is visible",
		appliesCancelled:             "applies calls whose context is done",
		releaseReadThenDelete:        "release reads, then deletes",
		remainingWrongUnit:           "HeldError.Remaining in the wrong unit",
		subscribeNotLive:             "Subscribe returns before the subscription is live",
		unsubscribeIgnored:           "Unsubscribe keeps waking",
		busDeliversNowhere:           "declares Broadcast, delivers to nobody",
		falseAtomicCommit:            "declares AtomicCommit, checks then writes",
		falseMinTTL:                  "declares MinTTL, grants less",
		falseMaxValue:                "declares MaxValueLen, stores less",
		fencesLostOnRestart:          "declares DurableFence, loses fences on restart",
		sharedNamespace:              "namespaces share keys",
		revokeKeepsLease:             "revoke deletes the value, keeps the lease",
		revokeResetsFence:            "revoke resets the fence",
		revokeWakesNobody:            "revoke wakes nobody",
		claimReadReadsFirst:          "claim-read reads the value, then claims",
		claimManyIgnoresHeld:         "batched claim ignores held keys",
		commitManyWithoutTokenCheck:  "batched commit without token check",
		getManyShifted:               "batched read returns values out of order",
		releaseManyWithoutTokenCheck: "batched release without token check",
		grantsLIFO:                   "hand-over grants the last waiter",
		grantsDeadWaiters:            "hand-over grants expired waiters",
		grantKeepsToken:              "hand-over keeps the released token",
		dropsGrants:                  "grants reach nobody",
	}[b]
}

// naive is a small in-process driver's server, written the obvious way,
// with switchable bugs. It is independent of claim/memory on purpose.
type naive struct {
	bugs   bug
	mu     sync.Mutex
	locks  map[string]driver.Lease
	exp    map[string]time.Time
	fence  map[string]uint64
	vals   map[string][]byte
	vexp   map[string]time.Time
	subs   map[string]map[*naiveDriver]func()
	topics map[string]map[*naiveDriver]func([]byte, bool)

	queues    map[string][]naiveWaiter                       // fair_test.go
	grantSubs map[string]map[*naiveDriver]func(driver.Lease) // fair_test.go
}

func newNaive(b bug) *naive {
	return &naive{bugs: b, locks: map[string]driver.Lease{}, exp: map[string]time.Time{}, fence: map[string]uint64{},
		vals: map[string][]byte{}, vexp: map[string]time.Time{}, subs: map[string]map[*naiveDriver]func(){},
		topics: map[string]map[*naiveDriver]func([]byte, bool){}, queues: map[string][]naiveWaiter{},
		grantSubs: map[string]map[*naiveDriver]func(driver.Lease){}}
}

func (n *naive) harness() conformance.Harness {
	return conformance.Harness{
		Open: func(context.Context) (*claim.Client, error) { return claim.NewClient(n.driver(""), nil), nil },
		OpenIsolated: func(context.Context) (*claim.Client, error) {
			if n.bugs&sharedNamespace != 0 {
				return claim.NewClient(n.driver(""), nil), nil
			}
			return claim.NewClient(n.driver("isolated/"), nil), nil
		},
		Restart: func(context.Context) error {
			n.mu.Lock()
			defer n.mu.Unlock()
			clear(n.locks)
			if n.bugs&fencesLostOnRestart != 0 {
				clear(n.fence)
			}
			return nil
		},
	}
}

const (
	naiveLimit   = 1 << 16
	naiveMinTTL  = 10 * time.Millisecond
	naiveMaxWait = 20 * time.Millisecond // the width of the racy bugs' windows
)

// naiveDriver is one client: a driver.Driver with every optional
// interface, under a namespace ns.
type naiveDriver struct {
	n  *naive
	ns string
}

func (n *naive) driver(ns string) *naiveDriver { return &naiveDriver{n: n, ns: ns} }

func (d *naiveDriver) ctx(ctx context.Context) error {
	if d.n.bugs&appliesCancelled != 0 {
		return nil
	}
	return ctx.Err()
}

func (d *naiveDriver) Features() driver.Features {
	return driver.Features{Name: "naive", Notify: driver.Push, AtomicCommit: true, DurableFence: true,
		MinTTL: naiveMinTTL, MaxValueLen: naiveLimit, Broadcast: true}
}

func (d *naiveDriver) Close() error {
	n := d.n
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.subs {
		delete(m, d)
	}
	for _, m := range n.topics {
		delete(m, d)
	}
	for _, m := range n.grantSubs {
		delete(m, d)
	}
	return nil
}

// live reports whether key's lease is live; n.mu held.
func (n *naive) live(key string) bool {
	_, ok := n.locks[key]
	return ok && (n.bugs&neverExpires != 0 || time.Now().Before(n.exp[key]))
}

func (d *naiveDriver) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := d.ctx(ctx); err != nil {
		return driver.Lease{}, err
	}
	if d.n.bugs&falseMinTTL == 0 {
		ttl = max(ttl, naiveMinTTL)
	}
	n, k := d.n, d.ns+key
	n.mu.Lock()
	if n.live(k) {
		rem := max(time.Until(n.exp[k]), 0)
		n.mu.Unlock()
		if n.bugs&remainingWrongUnit != 0 {
			rem /= 1000
		}
		return driver.Lease{}, &driver.HeldError{Remaining: rem}
	}
	if n.bugs&nonAtomicClaim != 0 {
		// Check, then act: the gap lets two claimers in.
		n.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		n.mu.Lock()
	}
	n.fence[k]++
	l := driver.Lease{Key: key, Holder: holder, Token: n.fence[k], TTL: ttl}
	if n.bugs&repeatsTokens != 0 {
		l.Token = 1
	}
	n.locks[k] = l
	n.exp[k] = time.Now().Add(ttl)
	n.mu.Unlock()
	return l, nil
}

// current reports whether l is k's live lease; n.mu held.
func (n *naive) current(k string, l driver.Lease) bool {
	cur, ok := n.locks[k]
	return ok && n.live(k) && cur.Holder == l.Holder && cur.Token == l.Token
}

// currentForWrite is current, but without the expiry for the bug that
// trusts the lease's holder to know it.
func (n *naive) currentForWrite(k string, l driver.Lease) bool {
	if n.bugs&acceptsServerExpired != 0 {
		cur, ok := n.locks[k]
		return ok && cur.Holder == l.Holder && cur.Token == l.Token
	}
	return n.current(k, l)
}

func (d *naiveDriver) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	if err := d.ctx(ctx); err != nil {
		return driver.Lease{}, err
	}
	ttl = max(ttl, naiveMinTTL)
	n, k := d.n, d.ns+l.Key
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.currentForWrite(k, l) {
		return driver.Lease{}, driver.ErrLost
	}
	n.exp[k] = time.Now().Add(ttl)
	l.TTL = ttl
	return l, nil
}

func (d *naiveDriver) Release(ctx context.Context, l driver.Lease) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	n, k := d.n, d.ns+l.Key
	n.mu.Lock()
	cur, held := n.locks[k]
	expiredOwn := n.bugs&releasesExpired != 0 && held && cur.Holder == l.Holder && cur.Token == l.Token
	if !n.current(k, l) && !(n.bugs&releaseWithoutTokenCheck != 0 && n.live(k)) && !expiredOwn {
		n.mu.Unlock()
		return driver.ErrLost
	}
	if n.bugs&releaseReadThenDelete != 0 {
		// Compared, then deleted in another step: a retried copy of this
		// release can delete the next holder's lease.
		n.mu.Unlock()
		time.Sleep(naiveMaxWait)
		n.mu.Lock()
	}
	subs := n.wakesLocked(k)
	if n.bugs&wakesBeforeChange != 0 {
		n.mu.Unlock()
		n.wake(subs)
		time.Sleep(naiveMaxWait)
		n.mu.Lock()
		delete(n.locks, k)
		n.mu.Unlock()
		return nil
	}
	delete(n.locks, k)
	n.mu.Unlock()
	n.wake(subs)
	return nil
}

func (n *naive) wakesLocked(k string) []func() {
	var out []func()
	for _, w := range n.subs[k] {
		out = append(out, w)
	}
	return out
}

func (n *naive) wake(subs []func()) {
	if n.bugs&dropsWakeups != 0 {
		return
	}
	if n.bugs&wakesOneWaiter != 0 && len(subs) > 1 {
		subs = subs[:1]
	}
	for _, w := range subs {
		w()
	}
}

func (d *naiveDriver) Commit(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	n, k := d.n, d.ns+l.Key
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.currentForWrite(k, l) && n.bugs&commitWithoutTokenCheck == 0 {
		return driver.ErrLost
	}
	if n.bugs&falseAtomicCommit != 0 {
		n.mu.Unlock()
		time.Sleep(2 * naiveMaxWait)
		n.mu.Lock()
	}
	return n.set(k, v, ttl)
}

// set stores a value; n.mu held.
func (n *naive) set(k string, v []byte, ttl time.Duration) error {
	if n.bugs&falseMaxValue != 0 && len(v) > naiveLimit/2 {
		return &driver.TooLargeError{What: "value", Size: len(v), Limit: naiveLimit / 2}
	}
	n.vals[k] = append([]byte{}, v...)
	if ttl > 0 {
		n.vexp[k] = time.Now().Add(ttl)
	} else {
		delete(n.vexp, k)
	}
	return nil
}

// get reads a value; n.mu held.
func (n *naive) get(k string, expired bool) ([]byte, bool) {
	v, ok := n.vals[k]
	if e, has := n.vexp[k]; ok && has && !time.Now().Before(e) && !expired {
		ok = false
	}
	return append([]byte{}, v...), ok
}

func (d *naiveDriver) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	n := d.n
	if n.bugs&claimReadReadsFirst != 0 {
		// The value read, then the key claimed in another step: a
		// revocation in between leaves a live lease with the old value.
		n.mu.Lock()
		v, ok := n.get(d.ns+key, false)
		n.mu.Unlock()
		time.Sleep(naiveMaxWait)
		l, err := d.TryClaim(ctx, key, holder, ttl)
		return l, v, ok && err == nil, err
	}
	l, err := d.TryClaim(ctx, key, holder, ttl)
	if err != nil {
		return l, nil, false, err
	}
	// Not atomic with the claim, but in the safe order: a revocation in
	// the gap ends this lease, and the read sees what it left.
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.get(d.ns+key, n.bugs&claimReadReturnsExpired != 0)
	if !ok || n.bugs&claimReadMissesValue != 0 {
		return l, nil, false, nil
	}
	return l, v, true, nil
}

func (d *naiveDriver) CommitRelease(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	n, k := d.n, d.ns+l.Key
	n.mu.Lock()
	if !n.currentForWrite(k, l) && !(n.bugs&commitReleaseWithoutTokenCheck != 0 && n.live(k)) {
		n.mu.Unlock()
		return driver.ErrLost
	}
	if err := n.set(k, v, ttl); err != nil {
		n.mu.Unlock()
		return err
	}
	delete(n.locks, k)
	subs := n.wakesLocked(k)
	n.mu.Unlock()
	if n.bugs&commitReleaseDropsWakeups == 0 {
		n.wake(subs)
	}
	return nil
}

func (d *naiveDriver) Revoke(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	n, k := d.n, d.ns+key
	n.mu.Lock()
	if n.bugs&revokeKeepsLease == 0 {
		delete(n.locks, k)
	}
	if n.bugs&revokeResetsFence != 0 {
		delete(n.fence, k)
	}
	if v != nil {
		if err := n.set(k, v, ttl); err != nil {
			n.mu.Unlock()
			return err
		}
	} else {
		delete(n.vals, k)
	}
	subs := n.wakesLocked(k)
	n.mu.Unlock()
	if n.bugs&revokeWakesNobody == 0 {
		n.wake(subs)
	}
	return nil
}

func (d *naiveDriver) GetMany(ctx context.Context, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	for i, k := range keys {
		v, err := d.Get(ctx, k)
		switch {
		case errors.Is(err, driver.ErrNotFound):
		case err != nil:
			return nil, err
		default:
			out[i] = v
		}
	}
	if d.n.bugs&getManyShifted != 0 && len(out) > 1 {
		out = append(out[1:], out[0])
	}
	return out, nil
}

func (d *naiveDriver) TryClaimMany(ctx context.Context, keys, holders []string, ttl time.Duration) ([]driver.Claimed, error) {
	out := make([]driver.Claimed, len(keys))
	for i, k := range keys {
		o := &out[i]
		if d.n.bugs&claimManyIgnoresHeld != 0 {
			d.n.mu.Lock()
			delete(d.n.locks, d.ns+k)
			d.n.mu.Unlock()
		}
		o.Lease, o.Value, o.Found, o.Err = d.TryClaimRead(ctx, k, holders[i], ttl)
	}
	return out, nil
}

func (d *naiveDriver) CommitReleaseMany(ctx context.Context, commits []driver.Commit) ([]error, error) {
	errs := make([]error, len(commits))
	for i, c := range commits {
		if d.n.bugs&commitManyWithoutTokenCheck != 0 {
			d.n.mu.Lock()
			d.n.locks[d.ns+c.Lease.Key] = c.Lease
			d.n.exp[d.ns+c.Lease.Key] = time.Now().Add(time.Minute)
			d.n.mu.Unlock()
		}
		errs[i] = d.CommitRelease(ctx, c.Lease, c.Value, c.TTL)
	}
	return errs, nil
}

func (d *naiveDriver) ReleaseMany(ctx context.Context, leases []driver.Lease) ([]error, error) {
	errs := make([]error, len(leases))
	for i, l := range leases {
		if d.n.bugs&releaseManyWithoutTokenCheck != 0 {
			d.n.mu.Lock()
			if cur, ok := d.n.locks[d.ns+l.Key]; ok {
				l = cur
			}
			d.n.mu.Unlock()
		}
		errs[i] = d.Release(ctx, l)
	}
	return errs, nil
}

func (d *naiveDriver) SubscribeMany(ctx context.Context, keys []string, wakes []func()) error {
	for i, k := range keys {
		if err := d.Subscribe(ctx, k, wakes[i]); err != nil {
			return err
		}
	}
	return nil
}

func (d *naiveDriver) Get(ctx context.Context, key string) ([]byte, error) {
	if err := d.ctx(ctx); err != nil {
		return nil, err
	}
	n := d.n
	n.mu.Lock()
	defer n.mu.Unlock()
	v, ok := n.get(d.ns+key, false)
	if !ok {
		return nil, driver.ErrNotFound
	}
	return v, nil
}

func (d *naiveDriver) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	return d.n.set(d.ns+key, v, ttl)
}

func (d *naiveDriver) Delete(ctx context.Context, key string) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	delete(d.n.vals, d.ns+key)
	return nil
}

func (d *naiveDriver) Subscribe(ctx context.Context, key string, wake func()) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	add := func() {
		d.n.mu.Lock()
		defer d.n.mu.Unlock()
		k := d.ns + key
		if d.n.subs[k] == nil {
			d.n.subs[k] = map[*naiveDriver]func(){}
		}
		d.n.subs[k][d] = wake
	}
	if d.n.bugs&subscribeNotLive != 0 {
		// Confirmed later, by the substrate, while the caller goes on.
		go func() {
			time.Sleep(naiveMaxWait)
			add()
		}()
		return nil
	}
	add()
	return nil
}

func (d *naiveDriver) Unsubscribe(key string) {
	if d.n.bugs&unsubscribeIgnored != 0 {
		return
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	delete(d.n.subs[d.ns+key], d)
}

func (d *naiveDriver) Notify(ctx context.Context, key string) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	d.n.mu.Lock()
	subs := d.n.wakesLocked(d.ns + key)
	d.n.mu.Unlock()
	d.n.wake(subs)
	return nil
}

func (d *naiveDriver) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	if d.n.bugs&busDeliversNowhere != 0 {
		return nil
	}
	d.n.mu.Lock()
	var ds []func([]byte, bool)
	for _, f := range d.n.topics[d.ns+topic] {
		ds = append(ds, f)
	}
	d.n.mu.Unlock()
	for _, f := range ds {
		f(append([]byte(nil), msg...), false)
	}
	return nil
}

func (d *naiveDriver) SubscribeTopic(ctx context.Context, topic string, deliver func([]byte, bool)) error {
	if err := d.ctx(ctx); err != nil {
		return err
	}
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	t := d.ns + topic
	if d.n.topics[t] == nil {
		d.n.topics[t] = map[*naiveDriver]func([]byte, bool){}
	}
	d.n.topics[t][d] = deliver
	return nil
}

func (d *naiveDriver) UnsubscribeTopic(topic string) {
	d.n.mu.Lock()
	defer d.n.mu.Unlock()
	delete(d.n.topics[d.ns+topic], d)
}

// A driver.ValueNotifier whose wake-ups carry a wrong value (or one where
// none is due) is caught by WakeValue.
func TestCatchesWrongWakeValue(t *testing.T) {
	sp := memory.NewSpace(nil)
	h := conformance.Harness{Open: func(context.Context) (*claim.Client, error) {
		c, err := memory.New(sp, nil)
		if err != nil {
			return nil, err
		}
		return claim.NewClient(wrongValue{c.Driver()}, nil), nil
	}}
	if err := conformance.Test(context.Background(), h, "WakeValue"); err == nil {
		t.Fatal("WakeValue passed a driver whose wake-ups carry a wrong value")
	}
}

// wrongValue carries "stale" in every wake-up.
type wrongValue struct{ driver.Driver }

func (w wrongValue) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	return w.Driver.Subscribe(ctx, key, func() { wake([]byte("stale")) })
}
