package dynamo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// The fair queue of a key lives in its item, next to the lease (see the
// package documentation, "Fair acquisition"):
//
//	qs  map holder → seq, its place: qn's value when it was queued
//	qt  map holder → the TTL it asked for, ms
//	qe  map holder → when its entry expires, Unix ms (its own clock)
//	qn  the next seq
//	lt  the TTL of the lease last granted from the queue, ms
//
// A grant records the lease as TryClaim does (h, le, lw, f).
//
// Every queue operation reads the item (one strongly consistent GetItem)
// and makes one UpdateItem whose condition holds exactly when what the
// decision rested on is unchanged. Entries are added or renewed only while
// a live lease is held (Enqueue's step 5), and a seq is never reused, so
// the conditions stay narrow: the holder and token of the lease ended, the
// entry granted (seq and expiry), the entries removed, and, when a lease
// ends with nobody to grant it to, qn (no waiter came meanwhile).

// queueAttrs are the attributes a queue operation reads.
var queueAttrs = []string{"h", "le", "f", "lt", "lw", "qs", "qt", "qe", "qn"}

// maxAttempts bounds the read-and-write rounds of one queue operation: a
// round is repeated only when its write's condition failed because
// another client's write to the same key landed between the read and the
// write (a lost race: the other write succeeded), never on an error.
const maxAttempts = 8

// maxPrune bounds the expired entries one write removes (the expression's
// size); more are removed by later writes.
const maxPrune = 16

// errQueueBusy is returned when maxAttempts rounds all lost their race.
var errQueueBusy = errors.New("the key's queue changed under every attempt")

// entry is one waiter of a key's queue, as read.
type entry struct {
	holder        string
	seq, ttl, exp int64 // ttl in ms, exp Unix ms
}

// queueState is one read of a key's lease and queue.
type queueState struct {
	holder      string // "" if no lease is recorded
	le, f, lt   int64
	n           int64 // the lease write's lw.n (leaseSeen), 0 if unknown
	hasF, hasLT bool
	maps        bool // qs, qt, qe and qn exist
	qn          int64
	q           []entry   // by seq
	at          time.Time // when the read was answered (clock.Now)
	until       time.Time // when the lease read may be taken over (sight); zero if none
}

// entry returns holder's entry.
func (s *queueState) entry(holder string) (entry, bool) {
	i := slices.IndexFunc(s.q, func(e entry) bool { return e.holder == holder })
	if i < 0 {
		return entry{}, false
	}
	return s.q[i], true
}

// first returns the first entry alive at cut (exp >= cut).
func (s *queueState) first(cut int64) (entry, bool) {
	for _, e := range s.q {
		if e.exp >= cut {
			return e, true
		}
	}
	return entry{}, false
}

// lease returns the lease s shows held, as Enqueue's step 2 returns it.
// Its TTL is the one granted (lt): the client counts it from before the
// grant, so its Deadline is never after the recorded expiry.
func (s *queueState) lease(key string, now int64) driver.Lease {
	ttl := time.Duration(s.le-now) * time.Millisecond
	if s.hasLT {
		ttl = time.Duration(s.lt) * time.Millisecond
	}
	return driver.Lease{Key: key, Holder: s.holder, Token: uint64(s.f), TTL: ttl}
}

// numMap returns the number map attribute name of item.
func numMap(item map[string]types.AttributeValue, name string) (map[string]int64, bool) {
	m, ok := item[name].(*types.AttributeValueMemberM)
	if !ok {
		return nil, false
	}
	r := make(map[string]int64, len(m.Value))
	for k := range m.Value {
		if v, ok := attr(m.Value, k); ok {
			r[k] = v
		}
	}
	return r, true
}

// readQueue reads key's lease and queue.
func (b *backend) readQueue(ctx context.Context, key string) (queueState, error) {
	item, err := b.getItem(ctx, key, queueAttrs...)
	if err != nil {
		return queueState{}, err
	}
	var s queueState
	if h, ok := item["h"].(*types.AttributeValueMemberS); ok {
		s.holder = h.Value
	}
	s.le, _ = attr(item, "le")
	s.f, s.hasF = attr(item, "f")
	s.lt, s.hasLT = attr(item, "lt")
	qs, ok1 := numMap(item, "qs")
	qt, ok2 := numMap(item, "qt")
	qe, ok3 := numMap(item, "qe")
	s.qn, s.maps = attr(item, "qn")
	s.maps = s.maps && ok1 && ok2 && ok3
	for h, seq := range qs {
		s.q = append(s.q, entry{holder: h, seq: seq, ttl: qt[h], exp: qe[h]})
	}
	slices.SortFunc(s.q, func(a, b entry) int { return cmp.Or(cmp.Compare(a.seq, b.seq), strings.Compare(a.holder, b.holder)) })
	if ls, ok := seenLease(item); ok {
		s.n = ls.n
	}
	s.at = clock.Now()
	s.until, _ = b.observe(key, item, s.at)
	return s, nil
}

// write is one conditional UpdateItem being built. Holders are named by
// placeholders #W0, #W1, ... (never matched by names' #[a-z]+), values by
// :V0, :V1, ...
type write struct {
	set, rem, cond []string
	names          map[string]string
	vals           map[string]types.AttributeValue
	reap           int64 // the expiry of a lease granted, for exp (leaseReap)
}

func newWrite() *write {
	return &write{names: map[string]string{}, vals: map[string]types.AttributeValue{}}
}

// name returns the placeholder of holder's entry.
func (w *write) name(holder string) string {
	for p, h := range w.names {
		if h == holder {
			return p
		}
	}
	p := "#W" + strconv.Itoa(len(w.names))
	w.names[p] = holder
	return p
}

// val returns a placeholder for v.
func (w *write) val(v types.AttributeValue) string {
	p := ":V" + strconv.Itoa(len(w.vals))
	w.vals[p] = v
	return p
}

// removeEntry removes e, on condition that it is as read (same seq and
// expiry: not renewed, replaced or removed since).
func (w *write) removeEntry(e entry) {
	p := w.name(e.holder)
	w.rem = append(w.rem, "#qs."+p, "#qt."+p, "#qe."+p)
	w.cond = append(w.cond, "#qs."+p+" = "+w.val(num(e.seq)), "#qe."+p+" = "+w.val(num(e.exp)))
}

// prune removes up to maxPrune entries that expired before cut (step 1),
// except those of skip.
func (w *write) prune(s *queueState, cut int64, skip ...string) {
	n := 0
	for _, e := range s.q {
		if n == maxPrune {
			return
		}
		if e.exp < cut && !slices.Contains(skip, e.holder) {
			w.removeEntry(e)
			n++
		}
	}
}

// grant records a lease of key to holder for ttl ms from now, with the
// next fencing token.
func (w *write) grant(holder string, ttl int64, now time.Time) int64 {
	le := leaseEnd(now, time.Duration(ttl)*time.Millisecond)
	w.set = append(w.set, "#h = "+w.val(str(holder)), "#le = "+w.val(num(le)), "#lt = "+w.val(num(ttl)),
		"#lw = "+w.val(lwValue(holder, le, time.Duration(ttl)*time.Millisecond)), "#f = if_not_exists(#f, "+w.val(num(now.UnixMicro()))+") + "+w.val(num(1)))
	w.reap = le
	return le
}

// queue puts holder at the tail of s's queue with an entry that expires
// ttl ms after now, or renews its entry if it is still alive by holder's
// clock (an entry that expired gets a new place, so an entry others judged
// expired never comes back at its old place).
func (w *write) queue(s *queueState, holder string, ttl int64, now time.Time) {
	exp := now.UnixMilli() + ttl
	if !s.maps {
		w.set = append(w.set,
			"#qs = "+w.val(&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{holder: num(1)}}),
			"#qt = "+w.val(&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{holder: num(ttl)}}),
			"#qe = "+w.val(&types.AttributeValueMemberM{Value: map[string]types.AttributeValue{holder: num(exp)}}),
			"#qn = "+w.val(num(2)))
		w.cond = append(w.cond, "attribute_not_exists(#qs)")
		return
	}
	p := w.name(holder)
	w.set = append(w.set, "#qe."+p+" = "+w.val(num(exp)), "#qt."+p+" = "+w.val(num(ttl)))
	e, ok := s.entry(holder)
	if ok && e.exp >= now.UnixMilli() {
		w.cond = append(w.cond, "#qs."+p+" = "+w.val(num(e.seq)))
		return
	}
	// A new place: the counter's value before this write, which bumps it.
	w.set = append(w.set, "#qs."+p+" = #qn", "#qn = #qn + "+w.val(num(1)))
	if ok {
		w.cond = append(w.cond, "#qs."+p+" = "+w.val(num(e.seq)))
	} else {
		w.cond = append(w.cond, "attribute_not_exists(#qs."+p+")")
	}
}

// send makes w's UpdateItem. A failed condition is returned as is (see
// conditionFailed).
func (b *backend) send(ctx context.Context, key string, w *write, ret types.ReturnValue) (*dynamodb.UpdateItemOutput, error) {
	var expr string
	if len(w.set) > 0 {
		expr = "SET " + strings.Join(w.set, ", ")
		if w.reap != 0 {
			expr = b.leaseReap(expr, w.vals, w.reap)
		}
	}
	if len(w.rem) > 0 {
		if expr != "" {
			expr += " "
		}
		expr += "REMOVE " + strings.Join(w.rem, ", ")
	}
	return b.updateNamed(ctx, key, expr, strings.Join(w.cond, " AND "), w.names, w.vals, ret)
}

// raced reports whether err is a failed condition: another write to the
// key landed between the read and the write. It counts them (b.races).
func (b *backend) raced(err error) bool {
	_, ok := conditionFailed(err)
	if ok {
		b.races.Add(1)
	}
	return ok
}

// Enqueue implements driver.Queuer. A holder's first Enqueue tries the
// uncontended case first: one UpdateItem granting the key if no lease is
// live and nobody is queued (claimFree), the cost of a TryClaim. Else, and
// for a holder this process has queued (a renewal), one GetItem of the
// lease and queue, then one conditional UpdateItem doing steps 1 to 5
// (see the queue's attributes above); step 2 (the lease is holder's
// already) writes nothing. If the write's condition fails because another
// client's write landed in between, Enqueue reads and writes again (at
// most maxAttempts rounds).
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if err := b.checkRetention(ttl); err != nil {
		return driver.Lease{}, err
	}
	ttl = ms(ttl)
	queued := b.local(key, holder, ttl)
	if !queued {
		if l, ok, err := b.claimFree(ctx, key, holder, ttl); ok || err != nil {
			b.unlocal(key, holder)
			return l, err
		}
	}
	l, err := b.enqueue(ctx, key, holder, ttl)
	b.qmu.Lock()
	defer b.qmu.Unlock()
	if held := (*driver.HeldError)(nil); errors.As(err, &held) {
		if w := b.waiters[key][holder]; w != nil {
			w.queued = true
		}
	} else {
		b.unlocalLocked(key, holder)
	}
	return l, err
}

// localWaiter is a holder of this process that is, or may be, in a key's
// queue: its Enqueue is under way or answered "queued" last.
type localWaiter struct {
	ttl    time.Duration
	queued bool // its last Enqueue answered "queued": the next is a renewal
}

// local records holder as a waiter of this process for key (with the TTL
// of its entry) and reports whether its last Enqueue had queued it.
func (b *backend) local(key, holder string, ttl time.Duration) bool {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	m := b.waiters[key]
	if m == nil {
		m = map[string]*localWaiter{}
		b.waiters[key] = m
	}
	w := m[holder]
	if w == nil {
		w = &localWaiter{}
		m[holder] = w
	}
	w.ttl = ttl
	return w.queued
}

// unlocal forgets holder as a waiter of this process for key.
func (b *backend) unlocal(key, holder string) {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	b.unlocalLocked(key, holder)
}

func (b *backend) unlocalLocked(key, holder string) {
	delete(b.waiters[key], holder)
	if len(b.waiters[key]) == 0 {
		delete(b.waiters, key)
	}
}

// minLocalTTL returns the shortest TTL of key's waiters in this process,
// or false if it has none.
func (b *backend) minLocalTTL(key string) (time.Duration, bool) {
	b.qmu.Lock()
	defer b.qmu.Unlock()
	var d time.Duration
	for _, w := range b.waiters[key] {
		if d == 0 || w.ttl < d {
			d = w.ttl
		}
	}
	return d, d > 0
}

// claimFree is the first attempt of a holder's first Enqueue (this process
// has not queued it): one UpdateItem, without a read, that grants key to
// holder if no lease is live and nobody is queued (step 3 of an empty
// queue). ok is false if the condition failed: a live lease or a queue.
func (b *backend) claimFree(ctx context.Context, key, holder string, ttl time.Duration) (l driver.Lease, ok bool, err error) {
	start := time.Now()
	w := newWrite()
	free := "attribute_not_exists(#h) OR #le < " + w.val(num(start.Add(-b.skew).UnixMilli()))
	if sd, ok := b.takeover(key, clock.At(start)); ok {
		// A lease this process saw written long enough ago, if the item
		// still holds that write (see tryClaim).
		free += " OR " + sd.holds(w.val)
	}
	w.cond = append(w.cond, "("+free+")", "(attribute_not_exists(#qs) OR size(#qs) = "+w.val(num(0))+")")
	w.grant(holder, ttl.Milliseconds(), start)
	out, err := b.send(ctx, key, w, types.ReturnValueUpdatedNew)
	if _, failed := conditionFailed(err); failed {
		return driver.Lease{}, false, nil
	}
	if err != nil {
		return driver.Lease{}, false, err
	}
	b.observe(key, out.Attributes, clock.Now())
	token, valid := attr(out.Attributes, "f")
	if !valid || token <= 0 {
		return driver.Lease{}, false, errors.New("no valid fence in the reply")
	}
	return driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl}, true, nil
}

// enqueue is Enqueue's read and conditional write.
func (b *backend) enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	t := ttl.Milliseconds()
	for range maxAttempts {
		start := time.Now()
		s, err := b.readQueue(ctx, key)
		if err != nil {
			return driver.Lease{}, err
		}
		// Expiry is judged by the clock read before the read (the lease
		// and the entries live longer by it); a lease granted counts from
		// after the read, so from after every Enqueue that queued its
		// holder (their writes landed before the read).
		now, cut := start.UnixMilli(), start.Add(-b.skew).UnixMilli()
		at := time.Now()
		if s.holder == holder && s.le > now {
			return s.lease(key, now), nil // step 2
		}
		w := newWrite()
		var held time.Time // when the lease holder waits behind may be taken over
		first, queued := s.first(cut)
		// live: a lease others may not take over yet, by the clock rule
		// (judged at start) and by this process's sightings of its write
		// (judged at the read's answer, s.at; see sight).
		live := s.holder != "" && s.le >= cut && s.at.Before(s.until)
		switch {
		case s.holder == holder && live:
			// Its own lease, expired by its clock but not by others':
			// it waits behind it.
			w.cond = append(w.cond, "#h = "+w.val(str(holder)), "#f = "+w.val(num(s.f)), "#le >= "+w.val(num(cut)))
			held = s.until
		case live:
			w.cond = append(w.cond, "#h <> "+w.val(str(holder)), "#le >= "+w.val(num(cut)))
			held = s.until
		default:
			// No live lease (and, with the fence unchanged, none granted
			// since: the queue only lost entries). A lease live by the
			// clock rule but not by the sightings is taken over only if
			// the item still holds the write read (the fence, below, and
			// its expiry).
			free := "attribute_not_exists(#h) OR #le < " + w.val(num(cut))
			if s.holder != "" && s.le >= cut {
				free += " OR " + sighted{f: s.f, le: s.le, n: s.n}.holds(w.val)
			}
			w.cond = append(w.cond, "("+free+")")
			if s.hasF {
				w.cond = append(w.cond, "#f = "+w.val(num(s.f)))
			} else {
				w.cond = append(w.cond, "attribute_not_exists(#f)")
			}
			if !queued || first.holder == holder { // step 3
				if e, ok := s.entry(holder); ok {
					w.removeEntry(e)
				}
				w.prune(&s, cut, holder)
				w.grant(holder, t, at)
				out, err := b.send(ctx, key, w, types.ReturnValueUpdatedNew)
				if b.raced(err) {
					continue
				}
				if err != nil {
					return driver.Lease{}, err
				}
				b.observe(key, out.Attributes, clock.Now())
				token, ok := attr(out.Attributes, "f")
				if !ok || token <= 0 {
					return driver.Lease{}, errors.New("no valid fence in the reply")
				}
				return driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl}, nil
			}
			w.removeEntry(first) // step 4
			held = b.expiry(w.grant(first.holder, first.ttl, at))
		}
		w.prune(&s, cut, holder, first.holder)
		w.queue(&s, holder, t, start) // step 5
		if _, err := b.send(ctx, key, w, types.ReturnValueNone); b.raced(err) {
			continue
		} else if err != nil {
			return driver.Lease{}, err
		}
		return driver.Lease{}, &driver.HeldError{Remaining: max(0, clock.Until(held))}
	}
	return driver.Lease{}, errQueueBusy
}

// handOver adds to w the end of the lease s shows (w's conditions name its
// holder and token) and the grant to the first waiter alive, or, if there
// is none, the release (as Release: the notify counter bumped) on
// condition that nobody was queued since the read. It sends w and returns
// the lease granted.
func (b *backend) handOver(ctx context.Context, key string, s *queueState, start time.Time, w *write) (driver.Lease, error) {
	cut := start.Add(-b.skew).UnixMilli()
	at := time.Now() // after the read: after every Enqueue that queued the waiter
	first, ok := s.first(cut)
	w.prune(s, cut, first.holder)
	if ok {
		w.removeEntry(first)
		w.grant(first.holder, first.ttl, at)
	} else {
		w.set = append(w.set, bumpNotify(w.vals))
		w.rem = append(w.rem, "#h", "#le", "#lt", "#lw")
		if s.maps {
			w.cond = append(w.cond, "#qn = "+w.val(num(s.qn)))
		} else {
			w.cond = append(w.cond, "attribute_not_exists(#qn)")
		}
	}
	if _, err := b.send(ctx, key, w, types.ReturnValueNone); err != nil {
		return driver.Lease{}, err
	}
	if !ok {
		return driver.Lease{}, nil
	}
	return driver.Lease{Key: key, Holder: first.holder, Token: uint64(s.f) + 1, TTL: time.Duration(first.ttl) * time.Millisecond}, nil
}

// HandOff implements driver.Queuer: one GetItem, then one UpdateItem,
// conditional on l's holder and token, that ends l and grants the key to
// the first live waiter (or releases it). If the condition fails while l
// is still current (a waiter joined, left or renewed the entry granted
// between the read and the write), HandOff reads and writes again (at most
// maxAttempts rounds).
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	for range maxAttempts {
		start := time.Now()
		s, err := b.readQueue(ctx, l.Key)
		if err != nil {
			return driver.Lease{}, err
		}
		if s.holder != l.Holder || !s.hasF || s.f != int64(l.Token) {
			return driver.Lease{}, driver.ErrLost
		}
		w := newWrite()
		w.cond = append(w.cond, "#h = "+w.val(str(l.Holder)), "#f = "+w.val(num(s.f)))
		next, err := b.handOver(ctx, l.Key, &s, start, w)
		if b.raced(err) {
			continue
		}
		if err != nil {
			return driver.Lease{}, err
		}
		if next.Holder != "" {
			// The client hands next to its waiter, if it is this
			// process's, at once: it is served.
			b.unlocal(l.Key, next.Holder)
		}
		if start.UnixMilli() >= s.le {
			// As Release: it had expired, nobody had claimed it since.
			return next, fmt.Errorf("%w (it had expired; its lock, still unclaimed, was handed on)", driver.ErrLost)
		}
		return next, nil
	}
	return driver.Lease{}, errQueueBusy
}

// Dequeue implements driver.Queuer: one GetItem, then, if holder is
// queued, one UpdateItem removing its entry on condition that it is as
// read, or, if the key's lease was granted to holder, the hand-over as
// HandOff makes it. A failed condition (the grant crossing the departure)
// makes it read and write again (at most maxAttempts rounds).
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	b.unlocal(key, holder)
	for range maxAttempts {
		start := time.Now()
		s, err := b.readQueue(ctx, key)
		if err != nil {
			return err
		}
		w := newWrite()
		e, queued := s.entry(holder)
		if queued {
			w.removeEntry(e)
		}
		if s.holder == holder && s.hasF {
			w.cond = append(w.cond, "#h = "+w.val(str(holder)), "#f = "+w.val(num(s.f)))
			s.q = slices.DeleteFunc(s.q, func(e entry) bool { return e.holder == holder })
			_, err = b.handOver(ctx, key, &s, start, w)
		} else if queued {
			_, err = b.send(ctx, key, w, types.ReturnValueNone)
		}
		if b.raced(err) {
			continue
		}
		return err
	}
	return errQueueBusy
}

// grantAttrs are the attributes a grant poll reads.
var grantAttrs = []string{"h", "le", "f", "lt", "lw", "n"}

// grantRead is one grant poll's result.
type grantRead struct {
	err         error
	holder      string // the live lease's holder, "" if none
	f           int64
	ttl         time.Duration
	sent, reply time.Time // before the request, after the reply
}

// noRead is the context key with which SubscribeGrants has the Poller
// start without a read (see SubscribeGrants).
type noRead struct{}

// grantSub is one key's SubscribeGrants.
type grantSub struct {
	b     *backend
	grant func(driver.Lease)

	mu       sync.Mutex
	last     grantRead // the latest read
	seen     int64     // the fence handled last
	seenSent time.Time // when the latest read that saw seen was sent
	base     bool      // seen is set: a read was handled
}

// record keeps r as the latest read.
func (g *grantSub) record(r grantRead) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last = r
	if r.err == nil && g.base && r.f == g.seen {
		g.seenSent = r.sent
	}
}

// wake is the key's poll loop's wake-up: the latest read changed (a fence
// or a holder) or failed. A live lease with a new fence is a grant; fences
// skipped (claims and grants between two reads) or a lease gone without a
// new one (released with no live waiter, or run out) may hide a grant, as
// may a failed read: the zero Lease.
//
// A grant skipped between two reads matters only if it went to a waiter
// of this process that never learned of it (a grantee that did learn of
// it, from HandOff's return or an Enqueue, handed it on itself): that
// lease must then have run out and been taken over, so its whole TTL lies
// between the two reads. A gap over a window shorter than the shortest
// TTL of this process's waiters for the key (or with none) is no missed
// grant, and wakes nobody.
//
// The first read has no fence to compare with: it delivers the live
// lease, if any, as a grant, harmless if it is not new (the client routes
// grants to its waiters by holder, and a waiter holds a lease only if it
// was granted to it), and its window starts at SubscribeGrants: longer
// than the shortest TTL of this process's waiters, a grant since may have
// run out unseen.
func (g *grantSub) wake(key string) {
	g.mu.Lock()
	r, seen, base, window := g.last, g.seen, g.base, g.last.reply.Sub(g.seenSent)
	if r.err == nil {
		g.seen, g.seenSent, g.base = max(g.seen, r.f), r.sent, true
	}
	g.mu.Unlock()
	if r.err != nil {
		g.grant(driver.Lease{})
		return
	}
	if !base {
		if r.holder != "" {
			g.deliver(key, r)
		}
		if d, ok := g.b.minLocalTTL(key); ok && window >= d {
			g.grant(driver.Lease{}) // a grant since SubscribeGrants may have run out
		}
		return
	}
	missed := r.f - seen
	if r.holder != "" && r.f > seen {
		g.deliver(key, r)
		missed--
	}
	if missed > 0 {
		if d, ok := g.b.minLocalTTL(key); !ok || window < d {
			missed = 0
		}
	}
	if missed > 0 || r.holder == "" {
		g.grant(driver.Lease{})
	}
}

// deliver passes r's lease to the subscriber as a grant; its holder, if
// a waiter of this process, is one no more.
func (g *grantSub) deliver(key string, r grantRead) {
	g.b.unlocal(key, r.holder)
	g.grant(driver.Lease{Key: key, Holder: r.holder, Token: uint64(r.f), TTL: r.ttl})
}

// readGrant is the grant poll: one strongly consistent GetItem of the
// lease attributes. Its token is the fence and the notify counter (every
// claim, grant and release changes it), its holder the live lease's fence.
func (b *backend) readGrant(ctx context.Context, key string) (driver.PollState, error) {
	if ctx.Value(noRead{}) != nil {
		return driver.PollState{}, nil // a token no read has: the first read wakes
	}
	sent := time.Now()
	item, err := b.getItem(ctx, key, grantAttrs...)
	now := time.Now()
	b.gmu.Lock()
	g := b.gsubs[key]
	b.gmu.Unlock()
	if err != nil {
		if g != nil {
			g.record(grantRead{err: err})
		}
		return driver.PollState{}, err
	}
	st := b.pollState(key, item, clock.At(now))
	f, _ := attr(item, "f")
	st.Token = strconv.FormatInt(f, 10) + "/" + st.Token
	r := grantRead{f: f, sent: sent, reply: now}
	if st.Holder != "" {
		h, _ := item["h"].(*types.AttributeValueMemberS)
		le, _ := attr(item, "le")
		r.holder, r.ttl = h.Value, time.Duration(le-now.UnixMilli())*time.Millisecond
		if lt, ok := attr(item, "lt"); ok {
			r.ttl = time.Duration(lt) * time.Millisecond
		}
	}
	if g != nil {
		g.record(r)
	}
	return st, nil
}

// SubscribeGrants implements driver.Queuer by polling the key's lease (one
// GetItem per poll, paced as Subscribe's polls): a live lease with a new
// fence is delivered as a grant, with the TTL granted. Unlike Subscribe it
// sends nothing before it returns (the client's AcquireFair subscribes
// before every Enqueue, and an uncontended one would pay a round trip
// more): the poll loop's first read, within PollMin, delivers the lease
// live then, if any, which is all the subscriber could miss (a waiter
// granted the key holds it until it learns of the grant, or until its TTL
// runs out).
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	g := &grantSub{b: b, grant: grant, seenSent: time.Now()}
	b.gmu.Lock()
	b.gsubs[key] = g
	b.gmu.Unlock()
	if err := b.grants.Subscribe(context.WithValue(ctx, noRead{}, true), key, func() { g.wake(key) }); err != nil {
		b.gmu.Lock()
		if b.gsubs[key] == g {
			delete(b.gsubs, key)
		}
		b.gmu.Unlock()
		return err
	}
	return nil
}

// UnsubscribeGrants implements driver.Queuer: it stops the key's grant
// poll (a read in flight completes, unseen).
func (b *backend) UnsubscribeGrants(key string) {
	b.grants.Unsubscribe(key)
	b.gmu.Lock()
	delete(b.gsubs, key)
	b.gmu.Unlock()
}
