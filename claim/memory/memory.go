package memory

import (
	"context"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// Scheme is the URL scheme this package registers.
const Scheme = "mem"

func init() { claim.Register(Scheme, &URLOpener{}) }

// SpaceOptions configure a Space. nil means defaults.
type SpaceOptions struct {
	// Clock returns the current time; nil means time.Now. Expiry of leases
	// and values is judged by it.
	Clock func() time.Time
	// MaxValueLen limits values (0: unlimited).
	MaxValueLen int
}

// Space is the shared state of one simulated server: leases, fence
// counters, values and subscriptions. It is safe for concurrent use.
type Space struct {
	now    func() time.Time
	maxVal int

	mu     sync.Mutex
	locks  map[string]lock
	fences map[string]uint64
	values map[string]value
	queues map[string][]waiter          // key -> its fair queue (driver.Queuer), first first
	subs   registry[func([]byte)]       // key -> subscribed clients' wake (with a CommitRelease's value)
	grants registry[func(driver.Lease)] // key -> subscribed clients' grant
	topics registry[func([]byte, bool)] // topic -> subscribed clients' deliver
}

type lock struct {
	holder  string
	token   uint64
	expires time.Time
}

type value struct {
	data    []byte
	expires time.Time // zero: never
}

// NewSpace returns an empty Space.
func NewSpace(opt *SpaceOptions) *Space {
	s := &Space{
		now:    time.Now,
		locks:  map[string]lock{},
		fences: map[string]uint64{},
		values: map[string]value{},
		queues: map[string][]waiter{},
		subs:   registry[func([]byte)]{},
		grants: registry[func(driver.Lease)]{},
		topics: registry[func([]byte, bool)]{},
	}
	if opt != nil {
		if opt.Clock != nil {
			s.now = opt.Clock
		}
		s.maxVal = opt.MaxValueLen
	}
	return s
}

var (
	spacesMu sync.Mutex
	spaces   = map[string]*Space{}
)

// NamedSpace returns the process-wide Space called name, creating it with
// default options on first use. mem://NAME URLs open it.
func NamedSpace(name string) *Space {
	spacesMu.Lock()
	defer spacesMu.Unlock()
	s := spaces[name]
	if s == nil {
		s = NewSpace(nil)
		spaces[name] = s
	}
	return s
}

// Options configure one Client of a Space. nil means defaults.
type Options struct {
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one client of a Space (one simulated process): a
// driver.Driver with every optional interface.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	sp     *Space
	maxVal int
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.Broadcaster    = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.ValueNotifier  = (*backend)(nil)
	_ driver.Queuer         = (*backend)(nil)
)

// New returns a new Client of space (a fresh private Space if nil), as if
// in another process.
func New(space *Space, opt *Options) (*claim.Client, error) {
	if opt == nil {
		opt = &Options{}
	}
	return claim.NewClient(newBackend(space), opt.Client), nil
}

func newBackend(space *Space) *backend {
	if space == nil {
		space = NewSpace(nil)
	}
	space.mu.Lock()
	defer space.mu.Unlock()
	b := &backend{sp: space, maxVal: space.maxVal}
	b.ClaimFunc = b.tryClaim
	b.CommitFunc = func(ctx context.Context, l driver.Lease, v []byte, ttl time.Duration, release bool) error {
		return b.commit(ctx, l, v, ttl, true, release)
	}
	return b
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:         Scheme,
		Notify:       driver.Push,
		AtomicCommit: true,
		DurableFence: true,
		MaxValueLen:  b.maxVal,
		Broadcast:    true,
	}
}

// Close implements driver.Driver: the Client's subscriptions leave the
// Space. Leases are not released: like a crashed process's, they expire
// by their TTL.
func (b *backend) Close() error {
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for k := range sp.subs {
		sp.subs.remove(k, b)
	}
	for k := range sp.grants {
		sp.grants.remove(k, b)
	}
	for t := range sp.topics {
		sp.topics.remove(t, b)
	}
	return nil
}
