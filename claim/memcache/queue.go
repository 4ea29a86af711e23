package memcache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// Fair acquisition (driver.Queuer). A key's queue lives in its lock item,
// next to the holder, so that a grant (the old holder out, the waiter in,
// its entry removed) is one cas of one item. Every operation reads the
// lock (gets), decides, and writes it back with a cas conditional on that
// read (an add where there was none); a grant draws its token from the
// fence counter (incr) between the two, or, in HandOff, together with the
// read. A cas that fails changed nothing: the item changed since the
// read (a waiter joined, renewed or left, a release, a rival's grant),
// and the operation reads it again, at most fairTries (HandOff:
// handOffTries) times in all (see each method for what it answers then).
// So each outcome is applied exactly when its cas is, and decided on the
// state that cas replaces.
//
// The lock item's value (see parseState): the head, a space, the end of
// the lease plus lockSlack in Unix ms (as every lock item has, so that a
// reader of the plain format, "HOLDER UNIXMS", reads the same end):
//
//	HOLDER;TOKEN;TTLSEC{;WAITER,TTLSEC,ENDMS} UNIXMS
//
// TOKEN is the lease's fencing token (0 where not recorded: a TryClaim's
// lock, which lockItem writes in this format without a queue), TTLSEC the
// TTL it was granted, claimed or last extended for (0 where not recorded:
// a plain lock of an earlier version into which waiters queued), and
// each WAITER,TTLSEC,ENDMS a queue entry in order: the waiter's holder
// ID, the TTL it asked for (the lease it will be granted), and when the
// entry lapses (the Unix ms of its last Enqueue, by its clock, plus that
// TTL).

// fairTries bounds the reads of one Enqueue or Dequeue, handOffTries
// those of one HandOff, when the lock changes between a read and its cas
// (HandOff's failing leaves the key held until the lease runs out).
const (
	fairTries    = 8
	handOffTries = 16
)

// fairEntry is one waiter in a key's queue.
type fairEntry struct {
	holder string
	sec    int64     // the TTL it asked for, in seconds: its grant's
	end    time.Time // when the entry lapses
	// sighted: the waiter runs takeover by sightings (lockState.sighted)
	sighted bool
}

// lockState is a lock item's value, parsed (parseState).
type lockState struct {
	holder string
	latest time.Time // the lease's end plus lockSlack; zero: not written by this package
	fair   bool      // the fair fields below are present
	token  uint64    // 0: not recorded
	sec    int64     // the lease's TTL, in seconds (0: not recorded)
	queue  []fairEntry
	// sighted: the lease's holder runs a version that counts its
	// Deadline so that a waiter may take the lease over by its own
	// sighting of the lock's write (heldUntil): each of its Extends
	// records a later end, and a lease granted to it has no TTL beyond
	// the recorded one. Recorded as a leading 0 of TTLSEC (and of an
	// entry's, which its grant copies): earlier versions read the same
	// number and write it back without the 0, so a lock written by or
	// granted to an earlier version is judged by the clock rule, and a
	// rolling upgrade stays safe.
	sighted bool
}

// secField is TTLSEC as written: with a leading 0 when sighted.
func secField(sec int64, sighted bool) string {
	if sighted {
		return "0" + strconv.FormatInt(sec, 10)
	}
	return strconv.FormatInt(sec, 10)
}

// parseSec reads a TTLSEC field: the seconds, and whether it was written
// sighted (secField).
func parseSec(f string) (int64, bool) {
	n, _ := strconv.ParseInt(f, 10, 64)
	return n, len(f) > 1 && f[0] == '0'
}

// parseState reads a lock item's value (see the format above; a plain
// lock, "HOLDER UNIXMS", has no fair fields). A field that does not parse
// reads as zero: an entry without a holder is dropped.
func parseState(v []byte) lockState {
	head, ms, ok := strings.Cut(string(v), " ")
	var st lockState
	if ok {
		if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
			st.latest = time.UnixMilli(n)
		}
	}
	st.holder, head, st.fair = strings.Cut(head, ";")
	if !st.fair {
		return st
	}
	tok, head, _ := strings.Cut(head, ";")
	st.token, _ = strconv.ParseUint(tok, 10, 64)
	sec, head, _ := strings.Cut(head, ";")
	st.sec, st.sighted = parseSec(sec)
	for head != "" {
		var e string
		e, head, _ = strings.Cut(head, ";")
		h, rest, _ := strings.Cut(e, ",")
		s, end, _ := strings.Cut(rest, ",")
		if h == "" {
			continue
		}
		n, sighted := parseSec(s)
		m, _ := strconv.ParseInt(end, 10, 64)
		st.queue = append(st.queue, fairEntry{holder: h, sec: n, end: time.UnixMilli(m), sighted: sighted})
	}
	return st
}

// encode is parseState's inverse (always with the fair fields).
func (st *lockState) encode() []byte {
	var sb strings.Builder
	sb.Grow(len(st.holder) + 48 + len(st.queue)*(len(st.holder)+24))
	sb.WriteString(st.holder)
	sb.WriteByte(';')
	sb.WriteString(strconv.FormatUint(st.token, 10))
	sb.WriteByte(';')
	sb.WriteString(secField(st.sec, st.sighted))
	for _, e := range st.queue {
		sb.WriteByte(';')
		sb.WriteString(e.holder)
		sb.WriteByte(',')
		sb.WriteString(secField(e.sec, e.sighted))
		sb.WriteByte(',')
		sb.WriteString(strconv.FormatInt(e.end.UnixMilli(), 10))
	}
	sb.WriteByte(' ')
	sb.WriteString(strconv.FormatInt(st.latest.UnixMilli(), 10))
	return []byte(sb.String())
}

// end is the end of the lease the lock records.
func (st *lockState) end() time.Time { return st.latest.Add(-lockSlack * time.Second) }

// rev identifies the write of the lease st records (driver.Rev, for
// heldUntil): its recorded end, and a hash of its holder, token and TTL.
// Every write of a lease (a claim, an Extend, a grant, a tombstone)
// records a new end: a claim or a grant is another holder, and an Extend
// records a later end than the write it replaces (Extend bumps it by a
// millisecond where its clock would repeat it). A waiter's entry written into the
// lock (Enqueue) leaves the lease's fields as they were: the same rev,
// so waiters renewing their entries do not restart the sightings.
func (st *lockState) rev() driver.Rev {
	h := fnv.New64a()
	h.Write([]byte(st.holder))
	h.Write([]byte{0})
	h.Write(strconv.AppendUint(nil, st.token, 10))
	h.Write([]byte{0})
	h.Write(strconv.AppendInt(nil, st.sec, 10))
	return driver.Rev{uint64(st.latest.UnixMilli()), h.Sum64()}
}

// expiration is the exptime for the lock item holding st, written at
// now: lockKeep seconds past the lease's end or the last entry's,
// whichever is later, so that memcached keeps the queue as long as the
// lease.
func (st *lockState) expiration(now time.Time) (int32, error) {
	last := st.end()
	for _, e := range st.queue {
		if e.end.After(last) {
			last = e.end
		}
	}
	return exptime(seconds(last.Sub(now))+lockKeep, now)
}

// prune drops the entries that lapsed by now.
func (st *lockState) prune(now time.Time) {
	kept := st.queue[:0]
	for _, e := range st.queue {
		if now.Before(e.end) {
			kept = append(kept, e)
		}
	}
	st.queue = kept
}

// remove drops holder's entry, and reports whether there was one.
func (st *lockState) remove(holder string) bool {
	for i, e := range st.queue {
		if e.holder == holder {
			st.queue = append(st.queue[:i:i], st.queue[i+1:]...)
			return true
		}
	}
	return false
}

// renew puts holder in the queue with an entry of sec seconds that lapses
// ttl from now: in its place if it is queued, else at the tail.
func (st *lockState) renew(holder string, sec int64, ttl time.Duration, now time.Time) {
	e := fairEntry{holder: holder, sec: sec, end: now.Add(ttl), sighted: true}
	for i := range st.queue {
		if st.queue[i].holder == holder {
			st.queue[i] = e
			return
		}
	}
	st.queue = append(st.queue, e)
}

// grantTo makes holder the lock's holder for sec seconds from now with
// token, removing its entry; sighted: holder runs takeover by sightings.
func (st *lockState) grantTo(holder string, token uint64, sec int64, sighted bool, now time.Time) {
	st.remove(holder)
	st.holder, st.token, st.sec, st.fair, st.sighted = holder, token, sec, true, sighted
	st.latest = now.Add(time.Duration(sec+lockSlack) * time.Second)
}

// lease is the lease st records, for key.
func (st *lockState) lease(key string) driver.Lease {
	return driver.Lease{Key: key, Holder: st.holder, Token: st.token, TTL: time.Duration(st.sec) * time.Second}
}

// errConflict is a cas (or add) refused because the lock changed since it
// was read: nothing was written.
var errConflict = errors.New("the lock changed since it was read")

// readLock reads key's lock item with gets: nil if there is none.
func (b *backend) readLock(ctx context.Context, key string) (*gomemcache.Item, error) {
	it, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(b.item('l', key)) })
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil, nil
	}
	return it, err
}

// writeLock writes st in place of cur, key's lock item as read (nil:
// none): a cas of cur, or an add. A refusal is errConflict.
func (b *backend) writeLock(ctx context.Context, key string, cur *gomemcache.Item, st *lockState, now time.Time) error {
	exp, err := st.expiration(now)
	if err != nil {
		return err
	}
	it := &gomemcache.Item{Key: b.item('l', key), Value: st.encode(), Expiration: exp}
	if err := b.writeOver(ctx, it, cur); err != nil {
		if errors.Is(err, errRaced) {
			return errConflict
		}
		return err
	}
	return nil
}

// grantNext grants key to the first live waiter of st (the lock item as
// read: cur) with token, or, if token is 0, one drawn now, or, with
// nobody queued, frees the key (cas of cur to an expired item, then incr
// of the notify counter, as Release). It returns the lease granted (zero
// if none).
func (b *backend) grantNext(ctx context.Context, key string, cur *gomemcache.Item, st *lockState, now time.Time, token uint64) (driver.Lease, error) {
	st.prune(now)
	if len(st.queue) == 0 {
		cur.Expiration = -1
		err := do0(ctx, b, func() error { return b.c.CompareAndSwap(cur) })
		switch {
		case errors.Is(err, gomemcache.ErrCASConflict), errors.Is(err, gomemcache.ErrCacheMiss):
			return driver.Lease{}, errConflict
		case err != nil:
			return driver.Lease{}, err
		}
		if _, err := b.incr(ctx, b.item('n', key)); err != nil {
			return driver.Lease{}, fmt.Errorf("released, but the notify counter was not bumped (a poller that never saw the lock misses the release): %w", err)
		}
		return driver.Lease{}, nil
	}
	w := st.queue[0]
	if token == 0 {
		// Drawn after the read: greater than the token of every lease
		// granted before it, the one this grant ends included.
		var err error
		if token, err = b.incr(ctx, b.item('f', key)); err != nil {
			return driver.Lease{}, err
		}
	}
	st.grantTo(w.holder, token, w.sec, w.sighted, now)
	if err := b.writeLock(ctx, key, cur, st, now); err != nil {
		return driver.Lease{}, err
	}
	return st.lease(key), nil
}

// Enqueue implements driver.Queuer: gets of the lock, then the step's
// write conditional on that read (see driver.Queuer for the steps):
//   - step 2, holder holds the lock: nothing written (one round trip);
//     the lease's TTL is what remains of it by this client's clock, at
//     most the TTL it was granted for (the client counts its Deadline
//     from a time before the grant was written, as heldUntil assumes);
//   - step 5, queued or renewed: a cas (two round trips);
//   - step 3 on a key without a lock: incr of the fence counter, then an
//     add of the lock (three round trips; four when the counter is
//     created); where a lock ended (another holder's, past heldUntil
//     as TryClaim judges it; holder's own, past its end):
//     incr, then a cas (three);
//   - step 4: incr, then one cas that grants the first waiter and queues
//     holder (three).
//
// A cas refused because the lock changed since it was read wrote nothing;
// the lock is read again, at most fairTries times. If the last read still
// conflicts, Enqueue answers from one more read: holder's lease if the
// lock names it, else a HeldError (Remaining until the live lease may be
// taken over, or a millisecond if none is live, so that the client
// enqueues again soon): then holder's entry may not have been renewed
// (or made) by this call. A HeldError is answered only when every grant
// to holder that can still land was decided on a read made after this
// call began, so the Deadline the client counts from this call's start
// never outlasts the end such a grant records (see the package's Fair
// acquisition section).
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	sec := seconds(ttl)
	if _, err := exptime(sec+lockKeep, time.Now()); err != nil {
		return driver.Lease{}, err
	}
	for try := 0; ; try++ {
		now := time.Now()
		cur, err := b.readLock(ctx, key)
		if err != nil {
			return driver.Lease{}, err
		}
		last := try == fairTries
		if cur == nil {
			if last {
				return driver.Lease{}, &driver.HeldError{Remaining: time.Millisecond}
			}
			// Step 3 on a free key.
			token, err := b.incr(ctx, b.item('f', key))
			if err != nil {
				return driver.Lease{}, err
			}
			var st lockState
			st.grantTo(holder, token, sec, true, now)
			err = b.writeLock(ctx, key, nil, &st, now)
			if errors.Is(err, errConflict) {
				continue
			}
			if err != nil {
				return driver.Lease{}, err
			}
			return st.lease(key), nil
		}
		st := parseState(cur.Value)
		if st.latest.IsZero() {
			return driver.Lease{}, &driver.HeldError{} // not written by this package: held, end unknown
		}
		at := clock.Now()
		free := b.heldUntil(key, &st, at)
		live := at.Before(free)
		if st.holder == holder && st.token != 0 {
			// Step 2: granted to holder. Once its end passed (by this
			// clock) nobody else can hold it and holder does not use
			// it: not live, as a free key. Its TTL is at most the
			// granted one: the client counts it from before the grant
			// was written (from its last Enqueue answered ErrHeld), so
			// its Deadline precedes the end other processes see by
			// their sightings of the grant (heldUntil), whatever the
			// clocks read.
			if end := st.end(); now.Before(end) {
				l := st.lease(key)
				l.TTL = min(l.TTL, end.Sub(now))
				return l, nil
			}
			live = false
		}
		if strings.HasPrefix(st.holder, tombMark) {
			// A Revoke's tombstone: Revoke frees it by its exact bytes.
			return driver.Lease{}, &driver.HeldError{Remaining: max(free.Sub(at), time.Millisecond)}
		}
		if last {
			held := &driver.HeldError{Remaining: free.Sub(at)}
			if !live {
				held.Remaining = time.Millisecond
			}
			return driver.Lease{}, held
		}
		st.prune(now)
		if !live {
			if len(st.queue) == 0 || st.queue[0].holder == holder {
				// Step 3: holder's turn.
				token, err := b.incr(ctx, b.item('f', key))
				if err != nil {
					return driver.Lease{}, err
				}
				st.grantTo(holder, token, sec, true, now)
				err = b.writeLock(ctx, key, cur, &st, now)
				if errors.Is(err, errConflict) {
					continue
				}
				if err != nil {
					return driver.Lease{}, err
				}
				return st.lease(key), nil
			}
			// Step 4: the first waiter's turn, holder queued in the same
			// write.
			token, err := b.incr(ctx, b.item('f', key))
			if err != nil {
				return driver.Lease{}, err
			}
			st.grantTo(st.queue[0].holder, token, st.queue[0].sec, st.queue[0].sighted, now)
		}
		// Step 5.
		if !st.fair {
			st.fair = true // a TryClaim's lock: its token is not recorded (0)
		}
		st.renew(holder, sec, ttl, now)
		err = b.writeLock(ctx, key, cur, &st, now)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return driver.Lease{}, err
		}
		// A grant in this write (step 4) is a write this client saw
		// once the cas was answered.
		at = clock.Now()
		return driver.Lease{}, &driver.HeldError{Remaining: b.heldUntil(key, &st, at).Sub(at)}
	}
}

// Dequeue implements driver.Queuer: gets of the lock; if holder is not
// queued and does not hold it, nothing more (one round trip); else a cas
// without its entry (two), or, where the lock names holder (a grant that
// crossed its departure, whether or not its end passed), the hand-over
// as HandOff makes it: incr of the fence counter and a cas granting the
// next live waiter, or, with none, a cas to an expired item and an incr
// of the notify counter (three round trips). A cas refused because the
// lock changed is read again, at most fairTries times; then Dequeue
// fails, and the entry lapses by its TTL (a grant, by its own).
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	for range fairTries {
		now := time.Now()
		cur, err := b.readLock(ctx, key)
		if err != nil || cur == nil {
			return err
		}
		st := parseState(cur.Value)
		if !st.fair {
			return nil // no queue: holder is not queued
		}
		if st.holder == holder && st.token != 0 {
			st.remove(holder) // never both, but it costs nothing
			_, err = b.grantNext(ctx, key, cur, &st, now, 0)
		} else {
			if !st.remove(holder) {
				return nil
			}
			err = b.writeLock(ctx, key, cur, &st, now)
		}
		if !errors.Is(err, errConflict) {
			return err
		}
	}
	return fmt.Errorf("the lock changed %d times during the dequeue; the entry lapses by its TTL", fairTries)
}

// HandOff implements driver.Queuer: gets of the lock, sent together with
// an incr of the fence counter (each on its own connection, at once),
// then, if the lock is l's (holder, and token where the lock records
// one), one cas that ends l and grants the first live waiter the token
// drawn (removing its entry; its TTL from now, by this client's clock):
// two round trips one after the other. The token is drawn before the
// read, yet greater than l's (drawn before l was granted) and than any
// other issued since: l held the key meanwhile; the read checks it
// against the token the lock records all the same. With no live waiter:
// a cas to an expired item and an incr of the notify counter, as
// Release (three; the token drawn is not used). A lease past its
// recorded end (by this client's clock) whose lock nobody took over is
// handed on (or freed) all the same, and HandOff answers ErrLost (with
// the lease granted, which the client does not deliver itself then: the
// subscriptions' polls do). A cas refused because the lock changed (a
// waiter joined, renewed or left) wrote nothing: the lock is read again
// (and a token drawn again), at most handOffTries times; then HandOff
// fails and l stays held, as before the call.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	for range handOffTries {
		now := time.Now()
		draw := b.drawToken(ctx, l.Key)
		cur, err := b.readLock(ctx, l.Key)
		token, terr := draw()
		if err != nil {
			return driver.Lease{}, err
		}
		if cur == nil {
			return driver.Lease{}, driver.ErrLost
		}
		st := parseState(cur.Value)
		if st.holder != l.Holder || (st.token != 0 && st.token != l.Token) {
			return driver.Lease{}, driver.ErrLost
		}
		if terr != nil || token <= max(st.token, l.Token) {
			token = 0 // draw it after the read (grantNext)
		}
		ended := !st.latest.IsZero() && !now.Before(st.end())
		next, err := b.grantNext(ctx, l.Key, cur, &st, now, token)
		switch {
		case errors.Is(err, errConflict):
			continue
		case err != nil:
			return driver.Lease{}, err
		case ended:
			return next, fmt.Errorf("%w (it had expired; its lock, still unclaimed, was handed on)", driver.ErrLost)
		}
		return next, nil
	}
	return driver.Lease{}, fmt.Errorf("the lock changed %d times during the hand-off (waiters joining or renewing); the lease is still held", handOffTries)
}

// drawToken starts an incr of key's fence counter on a goroutine of its
// own; the function it returns waits for the token.
func (b *backend) drawToken(ctx context.Context, key string) func() (uint64, error) {
	type drawn struct {
		token uint64
		err   error
	}
	ch := make(chan drawn, 1)
	go func() {
		t, err := b.incr(ctx, b.item('f', key))
		ch <- drawn{t, err}
	}()
	return func() (uint64, error) {
		d := <-ch
		return d.token, d.err
	}
}

// grantSub is one key's grant subscription.
type grantSub struct {
	mu   sync.Mutex
	last driver.Lease // the fair lease its latest poll saw (zero: none, or the poll failed)
}

// grantPoller runs the grant subscriptions: a driver.Poller of its own,
// whose reads (readGrant) read the lock and keep the fair lease they saw
// for the wake-up to deliver.
type grantPoller struct {
	*driver.Poller
	mu   sync.Mutex
	subs map[string]*grantSub
}

// readGrant is the grant subscriptions' poll: a get of the lock. The
// state's token is the lock's holder and fencing token ("-" without a
// lock), so every grant (a new holder, a new token) and every end of a
// lease without one (the lock freed, a TryClaim's lock) wakes; a renewal
// of a waiter's entry, or an Extend, does not.
func (b *backend) readGrant(ctx context.Context, key string) (driver.PollState, error) {
	b.grants.mu.Lock()
	s := b.grants.subs[key]
	b.grants.mu.Unlock()
	start := time.Now()
	cur, err := b.readLock(ctx, key)
	var l driver.Lease
	st := driver.PollState{Token: "-"}
	if err == nil && cur != nil {
		ls := parseState(cur.Value)
		st.Holder = ls.holder
		st.Token = ls.holder + "/" + strconv.FormatUint(ls.token, 10)
		if ls.fair && ls.token != 0 {
			// At most what was left of it when the read was sent: a
			// lease that ended before (a grant its waiter never saw,
			// handed on or taken over since, or about to be) is not
			// delivered.
			if left := ls.end().Sub(start); left > 0 {
				l = ls.lease(key)
				l.TTL = min(l.TTL, left)
			}
		}
	}
	if s != nil {
		s.mu.Lock()
		s.last = l
		s.mu.Unlock()
	}
	return st, err
}

// SubscribeGrants implements driver.Queuer: a poll loop for key (one get
// of its lock per poll, with the cadence of the notification polls:
// PollMin after a change, doubling up to PollMax), which, when the lock
// names a new holder with a new token, calls grant with that lease (its
// TTL the one it was granted for, or what was left of the lease when the
// poll's read was sent if less), and when the key was freed, taken by a
// TryClaim, the lease seen had already ended, or its poll failed, calls
// grant with a zero Lease. It reads the lock once before it returns.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	s := &grantSub{}
	g := b.grants
	g.mu.Lock()
	g.subs[key] = s
	g.mu.Unlock()
	err := g.Subscribe(ctx, key, func() {
		s.mu.Lock()
		l := s.last
		s.mu.Unlock()
		grant(l)
	})
	if err != nil {
		g.mu.Lock()
		if g.subs[key] == s {
			delete(g.subs, key)
		}
		g.mu.Unlock()
	}
	return err
}

// UnsubscribeGrants implements driver.Queuer: it stops key's poll loop
// (a read in flight ends by itself, calling nothing).
func (b *backend) UnsubscribeGrants(key string) {
	g := b.grants
	g.Unsubscribe(key)
	g.mu.Lock()
	delete(g.subs, key)
	g.mu.Unlock()
}
