package coord

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// DefaultTTL is the lease of a leader or a holder when the options leave
// it zero.
const DefaultTTL = 10 * time.Second

// historyLen is how many announcements an election's record keeps, so an
// observer that was slow to read it still sees every change in order.
const historyLen = 32

// Errors.
var (
	// ErrNoLeader: the election has no leader announced (never had one, or
	// the last one resigned).
	ErrNoLeader = errors.New("coord: no leader")
	// ErrShape: another process uses the name with another shape (a
	// semaphore's count, a read/write lock's reader slots).
	ErrShape = errors.New("coord: the name is in use with another shape")
	// ErrNotHeld: the leadership, permit or lock was resigned, released or
	// lost already.
	ErrNotHeld = errors.New("coord: not held")
)

// ElectionOptions tune an Election. nil, and every zero field, means the
// default.
type ElectionOptions struct {
	// TTL is the leader's lease: a leader that dies is followed within
	// TTL (plus a round trip). Default DefaultTTL.
	TTL time.Duration
}

// Election is a named leader election among every process using the name
// on the backend. At most one leader holds it at a time; each leader's
// term is its lease's fencing token, strictly greater than every earlier
// term, so writes from a deposed leader can be fenced.
type Election struct {
	c    *claim.Client
	name string
	key  string
	ttl  time.Duration
}

// NewElection returns the election called name on c's backend. It does no
// I/O.
func NewElection(c *claim.Client, name string, opt *ElectionOptions) (*Election, error) {
	if name == "" {
		return nil, fmt.Errorf("coord: election: %w", claim.ErrInvalidKey)
	}
	e := &Election{c: c, name: name, key: "\x00coord:election:" + name, ttl: DefaultTTL}
	if opt != nil && opt.TTL > 0 {
		e.ttl = opt.TTL
	}
	return e, nil
}

// Leader is one announcement of an election: a leader elected (or its
// value changed by Proclaim), or its resignation.
type Leader struct {
	// Term is the leader's fencing token, strictly increasing across
	// leaders.
	Term uint64 `json:"t"`
	// ID and Value are what the leader campaigned (or proclaimed) with.
	ID    string `json:"id"`
	Value []byte `json:"v,omitempty"`
	// Resigned: the leader of Term resigned; the election has no leader
	// until the next one.
	Resigned bool `json:"r,omitempty"`
	// Rev numbers the election's announcements: one more at each, in the
	// order they happened.
	Rev uint64 `json:"n"`
	// At is when the announcement was made, by the announcer's clock.
	At time.Time `json:"at"`
}

// record is what an election stores under its key: its latest
// announcements, oldest first.
type record struct {
	History []Leader `json:"h"`
}

func (r *record) latest() (Leader, bool) {
	if len(r.History) == 0 {
		return Leader{}, false
	}
	return r.History[len(r.History)-1], true
}

func (r *record) add(l Leader) []byte {
	if last, ok := r.latest(); ok {
		l.Rev = last.Rev + 1
	} else {
		l.Rev = 1
	}
	r.History = append(r.History, l)
	if n := len(r.History); n > historyLen {
		r.History = r.History[n-historyLen:]
	}
	b, _ := json.Marshal(r)
	return b
}

// read gets the election's record (empty if none).
func (e *Election) read(ctx context.Context) (record, error) {
	v, err := e.c.Get(ctx, e.key)
	if errors.Is(err, claim.ErrNotFound) {
		return record{}, nil
	}
	if err != nil {
		return record{}, err
	}
	var r record
	if err := json.Unmarshal(v, &r); err != nil {
		return record{}, fmt.Errorf("coord: election %q: unreadable record: %w", e.name, err)
	}
	return r, nil
}

// Campaign blocks until the caller is the leader, announced with id and
// value, or ctx is done. It waits on wake-ups (the leader's resignation)
// and on the leader's lease (a leader that died is followed within its
// TTL). The leadership lasts until Resign, or until its lease is lost
// (Leadership.Context is cancelled then); ctx only bounds the wait.
func (e *Election) Campaign(ctx context.Context, id string, value []byte) (*Leadership, error) {
	l, err := e.c.Acquire(ctx, e.key, e.ttl)
	if err != nil {
		return nil, fmt.Errorf("coord: campaign %q: %w", e.name, err)
	}
	return e.lead(ctx, l, id, value)
}

// TryCampaign is Campaign without the wait: if another leader holds the
// election it returns an error wrapping claim.ErrHeld at once.
func (e *Election) TryCampaign(ctx context.Context, id string, value []byte) (*Leadership, error) {
	l, err := e.c.TryClaim(ctx, e.key, e.ttl)
	if err != nil {
		return nil, fmt.Errorf("coord: campaign %q: %w", e.name, err)
	}
	return e.lead(ctx, l, id, value)
}

// lead announces the holder of l as leader: the record gains the new term
// (a commit fenced by l, so a deposed leader's late write cannot land),
// observers are woken, and the lease is kept alive.
func (e *Election) lead(ctx context.Context, l claim.Lease, id string, value []byte) (*Leadership, error) {
	fail := func(err error) (*Leadership, error) {
		_ = e.c.Release(context.WithoutCancel(ctx), l)
		return nil, fmt.Errorf("coord: campaign %q: %w", e.name, err)
	}
	r, err := e.read(ctx)
	if err != nil {
		return fail(err)
	}
	me := Leader{Term: l.Token, ID: id, Value: value, At: time.Now()}
	data := r.add(me)
	if err := e.c.Commit(ctx, l, data, 0); err != nil {
		return fail(err)
	}
	if err := e.c.Notify(ctx, e.key); err != nil {
		return fail(err)
	}
	me, _ = r.latest()
	ld := &Leadership{e: e, rec: r, me: me}
	ld.keeper = e.c.KeepAlive(context.WithoutCancel(ctx), l, nil)
	return ld, nil
}

// Leader returns the latest announcement: the current leader, or
// ErrNoLeader if there is none (never elected, or resigned). A leader that
// died without resigning is returned until its successor is announced,
// within one TTL.
func (e *Election) Leader(ctx context.Context) (Leader, error) {
	r, err := e.read(ctx)
	if err != nil {
		return Leader{}, err
	}
	last, ok := r.latest()
	if !ok || last.Resigned {
		return last, ErrNoLeader
	}
	return last, nil
}

// Observe streams the election's announcements, in order, from the
// latest one at the time of the call, until ctx is done (then the channel
// is closed). Announcements are pushed by the backend's notifier (polled
// on poll backends); an observer that falls behind still gets every one
// of the last 32 in order. The channel is buffered; a reader that never
// reads holds up nobody but itself.
func (e *Election) Observe(ctx context.Context) (<-chan Leader, error) {
	sub, err := e.c.Subscribe(ctx, e.key)
	if err != nil {
		return nil, fmt.Errorf("coord: observe %q: %w", e.name, err)
	}
	r, err := e.read(ctx)
	if err != nil {
		sub.Close()
		return nil, fmt.Errorf("coord: observe %q: %w", e.name, err)
	}
	out := make(chan Leader, historyLen)
	go func() {
		defer close(out)
		defer sub.Close()
		var last uint64
		if l, ok := r.latest(); ok {
			last = l.Rev - 1
		}
		send := func(r record) bool {
			for _, l := range r.History {
				if l.Rev <= last {
					continue
				}
				select {
				case out <- l:
					last = l.Rev
				case <-ctx.Done():
					return false
				}
			}
			return true
		}
		for {
			if !send(r) {
				return
			}
			select {
			case _, ok := <-sub.C():
				if !ok {
					return
				}
			case <-ctx.Done():
				return
			}
			nr, err := e.read(ctx)
			if err != nil {
				// Retried at the next wake-up; meanwhile a short pause
				// so a backend that is down is not hammered.
				select {
				case <-time.After(100 * time.Millisecond):
				case <-ctx.Done():
					return
				}
				continue
			}
			r = nr
		}
	}()
	return out, nil
}

// Leadership is one term of leadership. Its lease is kept alive in the
// background until Resign or loss.
type Leadership struct {
	e      *Election
	keeper *claim.Keeper
	mu     sync.Mutex
	rec    record
	me     Leader
	done   bool
}

// Term is the leadership's fencing token.
func (l *Leadership) Term() uint64 { return l.me.Term }

// Context is cancelled the moment the leadership is lost (its lease
// refused or run out) or resigned.
func (l *Leadership) Context() context.Context { return l.keeper.Context() }

// Lost is closed when the leadership is lost (not when it is resigned).
func (l *Leadership) Lost() <-chan struct{} { return l.keeper.Lost() }

// Leader is the announcement that made this leadership (updated by
// Proclaim).
func (l *Leadership) Leader() Leader {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.me
}

// Proclaim changes the leader's announced value, fenced by the term
// (ErrNotHeld, or an error wrapping claim.ErrLost, if the leadership is
// gone), and wakes the observers.
func (l *Leadership) Proclaim(ctx context.Context, value []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return ErrNotHeld
	}
	me := l.me
	me.Value, me.At = value, time.Now()
	data := l.rec.add(me)
	if err := l.e.c.Commit(ctx, l.keeper.Lease(), data, 0); err != nil {
		return fmt.Errorf("coord: proclaim %q: %w", l.e.name, err)
	}
	l.me, _ = l.rec.latest()
	if err := l.e.c.Notify(ctx, l.e.key); err != nil {
		return fmt.Errorf("coord: proclaim %q: %w", l.e.name, err)
	}
	return nil
}

// Resign ends the leadership: the resignation is announced (fenced by the
// term) and the lease released in one step, waking the observers and the
// other candidates. Resigning twice returns ErrNotHeld.
func (l *Leadership) Resign(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return ErrNotHeld
	}
	l.done = true
	lease := l.keeper.Stop()
	me := l.me
	me.Resigned, me.Value, me.At = true, nil, time.Now()
	data := l.rec.add(me)
	if err := l.e.c.CommitRelease(ctx, lease, data, 0); err != nil {
		return fmt.Errorf("coord: resign %q: %w", l.e.name, err)
	}
	return nil
}
