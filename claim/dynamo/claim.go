package dynamo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"

	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// tryClaim is the driver's claim (driver.ClaimFunc): one conditional
// UpdateItem. With read, it returns the whole new item (ReturnValues
// ALL_NEW), value included, so the value is read in the same atomic write.
// The condition: no holder, or the holder's lease expired ClockSkew ago
// by this client's clock, or, when this process saw the lease's write
// long enough ago (takeover), the item still holding exactly that write.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := b.checkRetention(ttl); err != nil {
		return driver.Lease{}, nil, false, err
	}
	ttl = ms(ttl)
	start := clock.Now()
	le := leaseEnd(start, ttl)
	vals := map[string]types.AttributeValue{
		":h": str(holder), ":le": num(le), ":one": num(1),
		":base": num(start.UnixMicro()), ":cut": num(start.Add(-b.skew).UnixMilli()),
	}
	expr := b.leaseReap("SET #h = :h, #le = :le, "+leaseWrite(vals, holder, le, ttl)+", #f = if_not_exists(#f, :base) + :one", vals, le)
	cond := "attribute_not_exists(#h) OR #le < :cut"
	if s, ok := b.takeover(key, start); ok {
		cond += " OR " + s.holds(func(v types.AttributeValue) string {
			k := ":s" + strconv.Itoa(len(vals))
			vals[k] = v
			return k
		})
	}
	ret := types.ReturnValueUpdatedNew
	if read {
		ret = types.ReturnValueAllNew
	}
	out, err := b.update(ctx, key, expr, cond, vals, ret)
	if item, ok := conditionFailed(err); ok {
		he := &driver.HeldError{}
		if item != nil {
			// DynamoDB returns the item as it was (dynalite does not):
			// a sighting of the holder's lease write.
			if until, held := b.observe(key, item, clock.Now()); held {
				he.Remaining = max(0, clock.Until(until))
			}
		}
		return driver.Lease{}, nil, false, he
	}
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	b.observe(key, out.Attributes, clock.Now())
	token, ok := attr(out.Attributes, "f")
	if !ok || token <= 0 {
		return driver.Lease{}, nil, false, errors.New("no valid fence in the reply")
	}
	l := driver.Lease{Key: key, Holder: holder, Token: uint64(token), TTL: ttl}
	if !read {
		return l, nil, false, nil
	}
	v, found := value(out.Attributes, time.Now())
	return l, v, found, nil
}

// checkRetention refuses a lease longer than the retention: its item could
// be reaped under it.
func (b *backend) checkRetention(ttl time.Duration) error {
	if b.retention > 0 && ttl > b.retention {
		return fmt.Errorf("ttl %s longer than the retention %s", ttl, b.retention)
	}
	return nil
}

// leaseReap sets exp for a lease write: Retention after the lease's
// expiry, unless the item holds a value without expiry (vp).
func (b *backend) leaseReap(expr string, vals map[string]types.AttributeValue, le int64) string {
	if b.retention <= 0 {
		return expr
	}
	vals[":reap"] = num(le/1000 + 1 + int64(b.retention/time.Second))
	return expr + ", #exp = if_not_exists(#vp, :reap)"
}

// leaseEnd is the expiry recorded for a lease of ttl requested at start:
// Unix ms, rounded up, so that it is never before the lease's local
// Deadline (which the client stamps from a clock read before start): a
// Release or Commit sent before the Deadline is judged (start < le, or
// le > :now) in time even within the Deadline's last millisecond.
func leaseEnd(start time.Time, ttl time.Duration) int64 {
	return (start.Add(ttl).UnixNano() + int64(time.Millisecond) - 1) / int64(time.Millisecond)
}

// expiry is when other clients consider a lease with recorded expiry le
// (Unix ms) expired by the clock rule: ClockSkew later, and strictly
// after (le < cut). A client that saw the lease's write may take it over
// sooner (sight).
func (b *backend) expiry(le int64) time.Time {
	return time.UnixMilli(le + 1).Add(b.skew)
}

// leaseWrite returns the SET action that records, with holder's lease
// write of expiry le, the TTL it was made for (lw: a map, e the expiry
// and h the holder it goes with, t the TTL in ms, n a random number that
// tells this write from every other: see leaseSeen.rev), adding its value to
// vals. Every write of h or le writes lw too, or removes it; a reader
// trusts lw only while its e and h are the item's le and h, so one left
// behind by a write that did not update it (an earlier version's Extend
// or Revoke, and a claim of an earlier version after it) is ignored: the
// clock rule alone applies, as for an item without lw. (Holders are
// unique per claim, so a later claim never matches an lw left behind.)
func leaseWrite(vals map[string]types.AttributeValue, holder string, le int64, ttl time.Duration) string {
	vals[":lw"] = lwValue(holder, le, ttl)
	return "#lw = :lw"
}

// lwValue is lw's value for holder's lease write of expiry le and ttl.
func lwValue(holder string, le int64, ttl time.Duration) types.AttributeValue {
	return &types.AttributeValueMemberM{Value: map[string]types.AttributeValue{
		"e": num(le), "h": str(holder), "t": num(ttl.Milliseconds()), "n": num(rand.Int64() + 1)}}
}

// leaseSeen is an item's lease as one answer showed it.
type leaseSeen struct {
	f, le int64
	ttl   time.Duration // the TTL its write recorded (lw), 0 if unknown
	n     int64         // its write's lw.n, 0 if unknown
}

// seenLease returns the lease recorded in item, if any.
func seenLease(item map[string]types.AttributeValue) (leaseSeen, bool) {
	le, ok := attr(item, "le")
	if !ok || item["h"] == nil {
		return leaseSeen{}, false
	}
	s := leaseSeen{le: le}
	s.f, _ = attr(item, "f")
	if w, ok := numMap(item, "lw"); ok && w["e"] == le && w["t"] > 0 && strAttr(item["lw"], "h") == strAttr(item["h"], "") {
		s.ttl, s.n = time.Duration(w["t"])*time.Millisecond, w["n"]
	}
	return s, true
}

// rev identifies s's write for driver.Sightings: the fence and the
// write's random lw.n. Fields the write computes from its clock would not
// do: a grant and the grantee's Extend, written on two clocks, can record
// the same expiry and TTL, and the Extend would then be judged from the
// grant's sighting, before the grantee's renewed Deadline.
func (s leaseSeen) rev() driver.Rev {
	return driver.Rev{uint64(s.f), uint64(s.n)}
}

// sighted is the lease of a key this process read last: its fence and
// recorded expiry, and the local time from which it may be taken over by
// this process's sightings of its write (zero: unknown).
type sighted struct {
	f, le, n int64
	end      time.Time
}

// sight records that an answer which arrived at at (a clock.Now reading)
// showed s, key's lease, and returns when the lease may be taken over:
// ClockSkew after its recorded expiry (expiry), or, if sooner, when this
// process's first sighting of its write plus the TTL it recorded has
// passed (driver.Sightings: the holder counts its Deadline from before it
// sent the write, and this process saw the write after it was applied,
// so whatever the clocks read). A claim then may take the key over on
// condition that the item still holds that very write (takeover).
func (b *backend) sight(key string, s leaseSeen, at time.Time) time.Time {
	end := b.seen.End(key, s.rev(), s.ttl, at)
	b.smu.Lock()
	if _, ok := b.last[key]; b.last == nil || (!ok && len(b.last) >= maxSighted) {
		b.last = map[string]sighted{}
	}
	b.last[key] = sighted{f: s.f, le: s.le, n: s.n, end: end}
	b.smu.Unlock()
	return driver.TakeoverAt(time.UnixMilli(s.le+1), b.skew, end)
}

// holds is the condition that the item still holds the lease write s:
// its fence, recorded expiry and write id (lw.n), each value named by val
// (which adds it to the request's values).
func (s sighted) holds(val func(types.AttributeValue) string) string {
	return "(#f = " + val(num(s.f)) + " AND #le = " + val(num(s.le)) + " AND #lw.#n = " + val(num(s.n)) + ")"
}

// maxSighted bounds the keys whose lease read last is remembered
// (forgetting only delays a takeover to the clock rule's time).
const maxSighted = 4096

// observe records a read of key's item (at, a clock.Now reading after the
// answer): a sighting of its lease (sight), if it has one, whose takeover
// time it returns with true; else it forgets the key's lease.
func (b *backend) observe(key string, item map[string]types.AttributeValue, at time.Time) (time.Time, bool) {
	if s, ok := seenLease(item); ok {
		return b.sight(key, s, at), true
	}
	b.seen.Forget(key)
	b.smu.Lock()
	delete(b.last, key)
	b.smu.Unlock()
	return time.Time{}, false
}

// takeover returns the lease of key read last if, by this process's
// sightings of its write, it may be taken over at now (a clock.Now
// reading): a claim may then replace it on condition that the item still
// holds that write (the same fence and recorded expiry).
func (b *backend) takeover(key string, now time.Time) (sighted, bool) {
	b.smu.Lock()
	s, ok := b.last[key]
	b.smu.Unlock()
	return s, ok && !s.end.IsZero() && !now.Before(s.end)
}

// current is the condition for the holder of l: same holder and token, and
// (with :now) unexpired by the holder's clock.
const current = "#h = :h AND #f = :tok AND #le > :now"

func leaseVals(l driver.Lease, now time.Time) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{":h": str(l.Holder), ":tok": num(int64(l.Token)), ":now": num(now.UnixMilli())}
}

// lost maps a failed condition to ErrLost.
func lost(err error) error {
	if _, ok := conditionFailed(err); ok {
		return driver.ErrLost
	}
	return err
}

// Extend implements driver.Claimer: one conditional UpdateItem of the
// lease's expiry, which never moves the recorded expiry earlier: an Extend
// that reaches DynamoDB after a later one of the same lease (its call
// timed out at the client, which renewed again) would otherwise write back
// its earlier end, and other clients, judging expiry by it, take the key
// over before the holder's Deadline. When the recorded end is later than
// this Extend's (such a late Extend; one with a shorter TTL; a grant
// written on a clock ahead of this one), the lease is renewed with that
// end kept, in a second UpdateItem conditioned on it: a lease write of its
// own all the same (a new lw), which waiters' sightings count from.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	if err := b.checkRetention(ttl); err != nil {
		return driver.Lease{}, err
	}
	start := clock.Now()
	ttl = ms(ttl)
	le := leaseEnd(start, ttl)
	vals := leaseVals(l, start)
	vals[":le"] = num(le)
	expr := b.leaseReap("SET #le = :le, "+leaseWrite(vals, l.Holder, le, ttl), vals, le)
	_, err := b.update(ctx, l.Key, expr, current+" AND #le <= :le", vals, types.ReturnValueNone)
	if err == nil {
		l.TTL = ttl
		return l, nil
	}
	item, failed := conditionFailed(err)
	if !failed {
		return driver.Lease{}, err
	}
	if item == nil { // dynalite returns no old item
		if item, err = b.getItem(ctx, l.Key, "h", "f", "le"); err != nil {
			return driver.Lease{}, err
		}
	}
	cur, ok := attr(item, "le")
	if h, _ := item["h"].(*types.AttributeValueMemberS); !ok || h == nil || h.Value != l.Holder || cur <= le {
		return driver.Lease{}, driver.ErrLost
	}
	if f, _ := attr(item, "f"); f != int64(l.Token) {
		return driver.Lease{}, driver.ErrLost
	}
	vals = leaseVals(l, start)
	vals[":cle"] = num(cur)
	expr = b.leaseReap("SET "+leaseWrite(vals, l.Holder, cur, ttl), vals, cur)
	if _, err := b.update(ctx, l.Key, expr, current+" AND #le = :cle", vals, types.ReturnValueNone); err != nil {
		return driver.Lease{}, lost(err)
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: one conditional UpdateItem that
// removes the holder and bumps the notify counter (for the pollers).
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	vals := map[string]types.AttributeValue{":h": str(l.Holder), ":tok": num(int64(l.Token))}
	start := clock.Now()
	// UPDATED_OLD returns the lease's expiry as last extended (#le,
	// removed here): past it when the request was sent, the lease was no
	// longer current.
	out, err := b.update(ctx, l.Key, "SET "+bumpNotify(vals)+" REMOVE #h, #le, #lw", "#h = :h AND #f = :tok", vals, types.ReturnValueUpdatedOld)
	if err != nil {
		return lost(err)
	}
	if le, ok := attr(out.Attributes, "le"); ok && start.UnixMilli() >= le {
		return fmt.Errorf("%w (it had expired; its lock, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// bumpNotify returns the SET action that increments the notify counter n
// (for the pollers), adding its values to vals. A missing counter starts
// at the current Unix time in microseconds, like the fence, so the counter
// never comes back to a value it had, even after the item was reaped.
func bumpNotify(vals map[string]types.AttributeValue) string {
	vals[":one"] = num(1)
	vals[":nbase"] = num(time.Now().UnixMicro())
	return "#n = if_not_exists(#n, :nbase) + :one"
}

// commit is Commit (release false: the value is written into the lease's
// item by one UpdateItem conditional on the lease, atomic) and
// CommitRelease (release true: the same UpdateItem also removes the holder
// and bumps the notify counter, as Release, so pollers see the release and
// the value together).
func (b *backend) commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration, release bool) error {
	now := clock.Now()
	vals := leaseVals(l, now)
	set, rem := b.valueExpr(val, ttl, now, vals)
	if release {
		set, rem = set+", "+bumpNotify(vals), rem+", #h, #le, #lw"
	}
	_, err := b.update(ctx, l.Key, "SET "+set+" REMOVE "+rem, current, vals, types.ReturnValueNone)
	return lost(err)
}

// Revoke implements driver.Claimer: one unconditional UpdateItem of the
// key's item that removes the holder and its expiry, stores or removes
// the value, and bumps the notify counter. The fence (f) stays, so the
// next claim's token is greater than the revoked one's. Lease, value and
// counter live in one item, so the change is atomic: a Commit or
// CommitRelease with the revoked lease either landed before it (and its
// value is replaced) or fails its condition on the holder (ErrLost), and
// a poller sees the lease gone, the new value and the bump in one read,
// which wakes it (the counter changed). Revoking twice rewrites the same
// state and bumps the counter again.
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	now := time.Now()
	vals := map[string]types.AttributeValue{}
	var set, rem string
	if val != nil {
		set, rem = b.valueExpr(val, ttl, now, vals)
		set, rem = set+", ", rem+", "
	} else {
		rem = "#v, #ve, #vp, "
		if b.retention > 0 {
			// Nothing live is left in the item: no lease, no value.
			vals[":reap"] = num(now.Add(b.retention).Unix())
			set = "#exp = :reap, "
		}
	}
	expr := "SET " + set + bumpNotify(vals) + " REMOVE " + rem + "#h, #le, #lw"
	_, err := b.update(ctx, key, expr, "", vals, types.ReturnValueNone)
	return err
}

// strAttr returns the string in v (member name of a map, or v itself
// with name ""), "" if there is none.
func strAttr(v types.AttributeValue, name string) string {
	if name != "" {
		m, ok := v.(*types.AttributeValueMemberM)
		if !ok {
			return ""
		}
		v = m.Value[name]
	}
	if s, ok := v.(*types.AttributeValueMemberS); ok {
		return s.Value
	}
	return ""
}
