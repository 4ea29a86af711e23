package redis

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// notifier owns a driver's pub/sub connections (see Wake-ups in the
// package doc): a shard, one go-redis PubSub, per server or per master
// node on a cluster. A barrier is a PING with a numbered payload written
// after SUBSCRIBEs: its PONG confirms every channel queued before it; an
// error reply before it (NOAUTH, NOPERM) fails every channel not yet
// confirmed instead. When a connection fails (a read or write error, a
// health-check PING unanswered for a whole interval), the shard's
// receiver fires every live channel with reset at once, so waiters
// re-check (and meet the outage, or take over) instead of waiting for a
// push that cannot come, then rebuilds it; the barrier that ends the
// rebuild fires them again (anything may have been missed in between).
// After an unsolicited unsubscribe (a slot migration) the rebuild comes
// first: its barrier fires them, or its failure does.
//
// A channel's fire is called with n.mu held, and only while the channel is
// in n.chans: once leave has removed it, it is never called again.
type notifier struct {
	b      *backend
	health time.Duration
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu     sync.Mutex
	closed bool
	shards map[string]*shard     // by node address ("" when not a cluster)
	chans  map[string]*chanState // by channel name; its shard is st.sh
}

// chanState is one channel this driver subscribes to: a key's channel
// (fire calls the key's wake) or a topic's (fire is its deliver).
type chanState struct {
	name      string
	fire      func(payload []byte, reset bool)
	sh        *shard
	ready     chan struct{} // closed at the first confirmation, or on failure
	err       error
	confirmed bool // ready closed
}

// shard is one pub/sub connection: its channels are those of n.chans
// whose sh is the shard. n.mu guards every field but sem.
type shard struct {
	sem  chan struct{} // held while writing (un)subscriptions or rebuilding
	kick chan struct{} // ps is live: the idle receiver starts reading
	ps   *goredis.PubSub
	// live: ps has connected (a SUBSCRIBE was written on it). Until then
	// the receiver leaves it alone: reading it would make go-redis dial,
	// holding the PubSub's lock, bounded by no caller's ctx.
	live   bool
	queue  []barrier
	unsub  map[string]int // UNSUBSCRIBEs written whose confirmation is due
	nextID uint64
}

// settle ends the wait for st's first confirmation with err (nil: live);
// n.mu must be held.
func (st *chanState) settle(err error) {
	if !st.confirmed {
		st.confirmed, st.err = true, err
		close(st.ready)
	}
}

type barrier struct {
	id uint64
	st *chanState
}

const (
	barrierPrefix = "stampede-barrier:"
	healthPayload = "stampede-health"
	leaveTimeout  = 200 * time.Millisecond
	maxBackoff    = 2 * time.Second
)

func newNotifier(b *backend, health time.Duration) *notifier {
	ctx, cancel := context.WithCancel(context.Background())
	return &notifier{b: b, health: health, ctx: ctx, cancel: cancel,
		shards: map[string]*shard{}, chans: map[string]*chanState{}}
}

func (s *shard) lock(ctx context.Context) error {
	select {
	case s.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *shard) unlock() { <-s.sem }

// shardFor returns the shard that must carry channel name.
func (n *notifier) shardFor(ctx context.Context, name string) (*shard, error) {
	addr := ""
	if n.b.cc != nil {
		c, err := n.b.cc.MasterForKey(ctx, name)
		if err != nil {
			return nil, err
		}
		addr = c.Options().Addr
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, driver.ErrClosed
	}
	s := n.shards[addr]
	if s == nil {
		s = &shard{sem: make(chan struct{}, 1), kick: make(chan struct{}, 1), unsub: map[string]int{}}
		n.shards[addr] = s
		n.wg.Add(1)
		go n.run(s)
	}
	return s, nil
}

// subscribe writes SUBSCRIBE for sts on s's connection (SSUBSCRIBE on a
// cluster, one command per channel, as a sharded subscription must stay
// within one slot), then a barrier queued behind them. The connection is
// made (without dialling) if s has none, and the idle receiver kicked.
// s.sem must be held.
func (n *notifier) subscribe(ctx context.Context, s *shard, sts ...*chanState) error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return driver.ErrClosed
	}
	if s.ps == nil {
		if n.b.cc != nil {
			s.ps = n.b.cc.SSubscribe(n.ctx)
		} else {
			s.ps = n.b.rdb.Subscribe(n.ctx)
		}
	}
	ps := s.ps
	n.mu.Unlock()
	names := make([]string, len(sts))
	for i, st := range sts {
		names[i] = st.name
	}
	var err error
	if n.b.cc == nil {
		err = ps.Subscribe(ctx, names...)
	} else {
		for _, name := range names {
			if err = ps.SSubscribe(ctx, name); err != nil {
				break
			}
		}
	}
	if err != nil {
		return err
	}
	n.mu.Lock()
	if s.ps == ps && !s.live {
		// Connected here, under ctx: the idle receiver may read it.
		s.live = true
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	s.nextID++
	id := s.nextID
	for _, st := range sts {
		s.queue = append(s.queue, barrier{id: id, st: st})
	}
	n.mu.Unlock()
	return ps.Ping(ctx, barrierPrefix+strconv.FormatUint(id, 10))
}

// join subscribes to channel name with fire, and returns once the server
// has confirmed the subscription. The Client joins a name at most once
// until it leaves it.
func (n *notifier) join(ctx context.Context, name string, fire func([]byte, bool)) error {
	return n.joinMany(ctx, []string{name}, []func([]byte, bool){fire})
}

// joinMany is join of every names[i] with fires[i]. The channels are
// grouped by shard; each shard's are written at once (subscribe: one
// SUBSCRIBE and one barrier), one shard after another without waiting
// for replies, and then it waits for every confirmation: one round trip
// per shard, overlapping (plus the connection's set-up where a shard has
// none yet). A shard's sem is held only while writing to it, never two at
// once. If any channel fails, every name is left and the error returned.
func (n *notifier) joinMany(ctx context.Context, names []string, fires []func([]byte, bool)) error {
	if err := ctx.Err(); err != nil {
		return err // not even the slot lookup of a cluster
	}
	var order []*shard
	byShard := map[*shard][]int{}
	for i, name := range names {
		s, err := n.shardFor(ctx, name)
		if err != nil {
			return err
		}
		if byShard[s] == nil {
			order = append(order, s)
		}
		byShard[s] = append(byShard[s], i)
	}
	sts := make([]*chanState, 0, len(names))
	fail := func(err error) error {
		for _, st := range sts {
			n.leave(st.name)
		}
		return err
	}
	for _, s := range order {
		if err := s.lock(ctx); err != nil {
			return fail(err)
		}
		group := make([]*chanState, 0, len(byShard[s]))
		n.mu.Lock()
		for _, i := range byShard[s] {
			st := &chanState{name: names[i], fire: fires[i], sh: s, ready: make(chan struct{})}
			n.chans[st.name] = st
			group = append(group, st)
		}
		n.mu.Unlock()
		sts = append(sts, group...)
		err := n.subscribe(ctx, s, group...) // ErrClosed if closed meanwhile
		s.unlock()
		if err != nil {
			return fail(err)
		}
	}
	for _, st := range sts {
		select {
		case <-st.ready:
			if st.err != nil { // written before ready was closed
				return fail(st.err)
			}
		case <-ctx.Done():
			return fail(ctx.Err())
		}
	}
	return nil
}

// leave drops channel name: it is forgotten at once, and UNSUBSCRIBE
// written. It waits at most leaveTimeout for the shard: if that passes, the
// channel stays subscribed on the server until the next reconnect
// (harmless: messages for unknown channels are ignored).
func (n *notifier) leave(name string) {
	ctx, cancel := context.WithTimeout(n.ctx, leaveTimeout)
	defer cancel()
	for {
		n.mu.Lock()
		st := n.chans[name]
		if st == nil {
			n.mu.Unlock()
			return
		}
		s := st.sh
		n.mu.Unlock()
		locked := s.lock(ctx) == nil
		n.mu.Lock()
		moved := n.chans[name] != st || st.sh != s // to another shard meanwhile
		var ps *goredis.PubSub
		if !moved {
			delete(n.chans, name)
			st.settle(driver.ErrClosed)
			if locked && s.ps != nil {
				ps = s.ps
				s.unsub[name]++
			}
		}
		n.mu.Unlock()
		if ps != nil && n.b.cc != nil {
			_ = ps.SUnsubscribe(ctx, name)
		} else if ps != nil {
			_ = ps.Unsubscribe(ctx, name)
		}
		if locked {
			s.unlock()
		}
		if !moved {
			return
		}
	}
}

// leaveAsync is leave for a caller that must not wait for the pub/sub
// connection: name is forgotten at once (its fire is never called
// again), and the UNSUBSCRIBE is written by a goroutine of its own,
// bounded by leaveTimeout and by close, unless name has been joined again
// by then (the new subscription needs the server's: the write is
// skipped). The shard's sem orders it with joins: either the UNSUBSCRIBE
// comes first and the join's SUBSCRIBE after it, or the join has added
// name before the check.
func (n *notifier) leaveAsync(name string) {
	n.mu.Lock()
	st := n.chans[name]
	if st == nil || n.closed {
		n.mu.Unlock()
		return
	}
	delete(n.chans, name)
	st.settle(driver.ErrClosed)
	s := st.sh
	n.wg.Add(1)
	n.mu.Unlock()
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, leaveTimeout)
		defer cancel()
		if s.lock(ctx) != nil {
			return
		}
		defer s.unlock()
		n.mu.Lock()
		ps := s.ps
		if n.chans[name] != nil || ps == nil {
			n.mu.Unlock()
			return
		}
		s.unsub[name]++
		n.mu.Unlock()
		if n.b.cc != nil {
			_ = ps.SUnsubscribe(ctx, name)
		} else {
			_ = ps.Unsubscribe(ctx, name)
		}
	}()
}

// run is the receiver of one shard: it reads the shard's PubSub, wakes
// subscribers, checks health, and rebuilds the connection after any gap.
func (n *notifier) run(s *shard) {
	defer n.wg.Done()
	broken, failures, healthSent := false, 0, false
	// woken: the live channels were fired for this gap already (a gap
	// ends at the barrier that confirms the rebuilt connection).
	woken := false
	gap := func() {
		if !woken {
			woken = true
			n.fireLive(s)
		}
	}
	for {
		if n.ctx.Err() != nil {
			return
		}
		if broken {
			if failures > 1 {
				d := min(maxBackoff, 25*time.Millisecond<<min(failures-2, 10))
				t := time.NewTimer(d)
				select {
				case <-t.C:
				case <-n.ctx.Done():
					t.Stop()
					return
				}
			}
			if err := n.rebuild(s); err != nil {
				failures++
				gap()
				continue
			}
			broken, healthSent = false, false
		}
		n.mu.Lock()
		ps, live := s.ps, s.live
		n.mu.Unlock()
		if !live {
			select {
			case <-s.kick:
			case <-n.ctx.Done():
				return
			}
			continue
		}
		msg, err := n.receive(ps)
		if err != nil {
			if n.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && !healthSent {
				healthSent = true
				if n.ping(ps) == nil {
					continue
				}
			}
			var re goredis.Error
			if errors.As(err, &re) {
				// An error reply to a SUBSCRIBE or a barrier (NOAUTH
				// when go-redis connected without a password the server
				// wants, NOPERM on a channel): the subscriptions waiting
				// for their confirmation fail with it rather than be
				// retried silently. The connection is rebuilt for the
				// others.
				n.failPending(s, err)
			}
			broken = true
			failures++
			gap()
			continue
		}
		healthSent = false
		switch m := msg.(type) {
		case *goredis.Message:
			n.deliver(s, m.Channel, m.Payload)
		case *goredis.Pong:
			if id, ok := strings.CutPrefix(m.Payload, barrierPrefix); ok {
				if v, err := strconv.ParseUint(id, 10, 64); err == nil {
					n.confirm(s, v)
					failures, woken = 0, false
				}
			}
		case *goredis.Subscription:
			if (m.Kind == "unsubscribe" || m.Kind == "sunsubscribe") && n.unsolicited(s, m.Channel) {
				broken = true
				failures++
			}
		}
	}
}

// receive reads ps for at most a health-check interval. go-redis may
// reconnect inside (after a read error), holding ps's lock: the context
// bounds that too, so Subscribe, Unsubscribe and close, which take the
// lock, are not held up for longer.
func (n *notifier) receive(ps *goredis.PubSub) (any, error) {
	ctx, cancel := context.WithTimeout(n.ctx, n.health+time.Second)
	defer cancel()
	return ps.ReceiveTimeout(ctx, n.health)
}

// ping writes the health-check PING on ps, bounded as receive is.
func (n *notifier) ping(ps *goredis.PubSub) error {
	ctx, cancel := context.WithTimeout(n.ctx, n.health)
	defer cancel()
	return ps.Ping(ctx, healthPayload)
}

// rebuild replaces s's connection: closes it, re-places channels whose
// slot moved (cluster), subscribes the rest on a new connection and sends a
// barrier. Channels confirmed before wake their subscribers when it
// returns (in confirm). If it fails, subscriptions never confirmed fail.
func (n *notifier) rebuild(s *shard) error {
	if err := s.lock(n.ctx); err != nil {
		return err
	}
	defer s.unlock()
	n.mu.Lock()
	old := s.ps
	s.ps, s.live, s.queue, s.unsub = nil, false, nil, map[string]int{}
	var sts []*chanState
	for _, st := range n.chans {
		if st.sh == s {
			sts = append(sts, st)
		}
	}
	n.mu.Unlock()
	if old != nil {
		_ = old.Close()
	}
	if n.b.cc != nil {
		// The topology may have changed (failover, slot migration): ask
		// for a fresh slot map (asynchronous; a stale one costs a MOVED
		// error and another rebuild after a backoff).
		n.b.cc.ReloadState(n.ctx)
		sts = n.replace(s, sts)
	}
	if len(sts) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(n.ctx, max(n.health, 5*time.Second))
	defer cancel()
	err := n.subscribe(ctx, s, sts...)
	if err != nil {
		n.failPending(s, err)
	}
	return err
}

// replace moves channels whose slot now lives on another master to that
// master's shard, and returns those that stay. s.sem is held.
func (n *notifier) replace(s *shard, sts []*chanState) []*chanState {
	stay := sts[:0]
	for _, st := range sts {
		t, err := n.shardFor(n.ctx, st.name)
		if err != nil || t == s {
			stay = append(stay, st)
			continue
		}
		n.mu.Lock()
		if n.chans[st.name] == st {
			st.sh = t
		}
		n.mu.Unlock()
		n.wg.Add(1)
		go n.adopt(t, st) // t.sem is taken there, never while holding s.sem
	}
	return stay
}

// adopt subscribes a channel that moved to shard t (cluster resharding),
// until that succeeds or the channel is left. A failure on a connection
// t had already made is t's receiver's to mend (it sees the broken
// connection and rebuilds, st included); but a shard that never connected
// (the new master's first dial failed) has no receiver reading yet, and
// nothing else would ever subscribe st again: every wake-up of its key
// would be lost for good. So adopt tries again, backing off; the barrier
// that finally confirms st fires it with reset (anything may have been
// missed meanwhile).
func (n *notifier) adopt(t *shard, st *chanState) {
	defer n.wg.Done()
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, maxBackoff) {
		if t.lock(n.ctx) != nil {
			return
		}
		n.mu.Lock()
		gone := n.chans[st.name] != st || st.sh != t
		n.mu.Unlock()
		if gone {
			t.unlock()
			return
		}
		ctx, cancel := context.WithTimeout(n.ctx, max(n.health, 5*time.Second))
		err := n.subscribe(ctx, t, st)
		cancel()
		n.mu.Lock()
		mended := t.live // t's receiver rebuilds it, st included
		n.mu.Unlock()
		t.unlock()
		if err == nil || mended {
			return
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-n.ctx.Done():
			timer.Stop()
			return
		}
	}
}

// failPending fails the subscriptions of s not yet confirmed with cause
// (classified), so their Subscribe returns instead of waiting for a
// server that is down or refuses them; the confirmed ones stay and are
// retried by the next rebuild.
func (n *notifier) failPending(s *shard, cause error) {
	err := classify(fmt.Errorf("pub/sub: subscription not confirmed: %w", cause))
	n.mu.Lock()
	defer n.mu.Unlock()
	for name, st := range n.chans {
		if st.sh == s && !st.confirmed {
			st.settle(err)
			delete(n.chans, name)
		}
	}
}

// fireLive fires every confirmed channel of s with reset: its connection
// is gone, and what was published meanwhile may be lost.
func (n *notifier) fireLive(s *shard) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, st := range n.chans {
		if st.sh == s && st.confirmed && st.err == nil {
			st.fire(nil, true)
		}
	}
}

// confirm handles barrier id: every channel queued behind it is live.
func (n *notifier) confirm(s *shard, id uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for len(s.queue) > 0 && s.queue[0].id <= id {
		st := s.queue[0].st
		s.queue = s.queue[1:]
		if n.chans[st.name] != st || st.sh != s {
			continue
		}
		if !st.confirmed {
			st.settle(nil)
			continue
		}
		// Confirmed again after a gap: anything may have been missed.
		st.fire(nil, true)
	}
}

func (n *notifier) deliver(s *shard, channel, payload string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if st := n.chans[channel]; st != nil && st.sh == s {
		st.fire([]byte(payload), false)
	}
}

// unsolicited reports whether an unsubscribe confirmation for channel was
// not asked for (a cluster slot migrated away): the shard must rebuild.
func (n *notifier) unsolicited(s *shard, channel string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s.unsub[channel] > 0 {
		if s.unsub[channel]--; s.unsub[channel] == 0 {
			delete(s.unsub, channel)
		}
		return false
	}
	st := n.chans[channel]
	return st != nil && st.sh == s
}

// close tears everything down; pending joins fail with ErrClosed. Once
// closed is set no PubSub is made (subscribe checks it).
func (n *notifier) close() {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.closed = true
	var pss []*goredis.PubSub
	for _, s := range n.shards {
		if s.ps != nil {
			pss = append(pss, s.ps)
			s.ps, s.live = nil, false
		}
	}
	for _, st := range n.chans {
		st.settle(driver.ErrClosed)
	}
	n.mu.Unlock()
	n.cancel()
	for _, ps := range pss {
		_ = ps.Close()
	}
	n.wg.Wait()
}
