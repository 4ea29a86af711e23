package nats

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/clock"
)

// A key's record, the value of its KV key PREFIX.TOKEN.r, holds its lease,
// its fair queue and its stored value together, so that a fenced commit
// (and a hand-over) is one compare-and-set of one KV key. Byte layout
// (integers big endian, times Unix ms by the writer's clock):
//
//	size  field
//	1     version (1)
//	1     op: the write that made the record (op* below)
//	1     holder length H (0: no lease)
//	H     holder (after a 0 byte, sightedMark, if it runs takeover by sightings)
//	8     token (0: the record's own revision)
//	8     lease expiry (0: no lease)
//	8     lease TTL in ms (with the token and the expiry, it identifies
//	      the write that made or renewed the lease: leaseRev)
//	2     queue length Q, then Q entries of:
//	        1 holder length, holder (marked alike), 8 expiry, 8 TTL in ms
//	1     1 if a value is stored, else 0
//	8     value expiry (0: none)
//	...   value
const recVersion = 1

// Ops: what wrote a record. Watchers wake subscribers on opRelease,
// opCommitRelease and opRevoke (and on a lease that ends or changes
// hands); opCommitRelease's value rides in the wake-up, opGrant's lease in
// the grant.
const (
	opClaim byte = 1 + iota
	opExtend
	opCommit
	opRelease
	opCommitRelease
	opRevoke
	opSet
	opGrant
	opQueue
)

// entry is a waiter in a key's fair queue.
type entry struct {
	holder  string
	exp     int64 // Unix ms by the waiter's clock
	ttl     int64 // ms: the lease it asks for
	sighted bool  // the waiter runs takeover by sightings (record.sighted)
}

// sightedMark, before a holder ID in a record (the lease's holder, or a
// waiter's), says that the holder runs a version whose Deadline a waiter
// may take over by its own sighting of the lease's write (heldUntil):
// each of its Extends starts later than the write before it (extended).
// Earlier versions read the mark as part of an opaque holder ID (which is
// never theirs) and copy it with a waiter's ID into its grant; a lease
// written by or granted to an earlier version has none, and is judged by
// the clock rule alone (its Extend could repeat the grant's leaseRev), so
// a rolling upgrade stays safe.
const sightedMark = "\x00"

// record is a decoded record.
type record struct {
	op       byte
	holder   string // "": no lease
	token    uint64 // resolved: the claiming write's revision
	leaseExp int64  // Unix ms
	leaseTTL int64  // ms
	queue    []entry
	sighted  bool // the lease's holder runs takeover by sightings (sightedMark)
	hasValue bool
	valueExp int64 // Unix ms, 0: none
	value    []byte
}

func (r record) encode() []byte {
	n := 4 + len(r.holder) + 24 + 2 + 9 + len(r.value)
	for _, e := range r.queue {
		n += 18 + len(e.holder)
	}
	out := make([]byte, 0, n)
	out = append(out, recVersion, r.op)
	out = appendHolder(out, r.holder, r.sighted)
	out = binary.BigEndian.AppendUint64(out, r.token)
	out = binary.BigEndian.AppendUint64(out, uint64(r.leaseExp))
	out = binary.BigEndian.AppendUint64(out, uint64(r.leaseTTL))
	out = binary.BigEndian.AppendUint16(out, uint16(len(r.queue)))
	for _, e := range r.queue {
		out = appendHolder(out, e.holder, e.sighted)
		out = binary.BigEndian.AppendUint64(out, uint64(e.exp))
		out = binary.BigEndian.AppendUint64(out, uint64(e.ttl))
	}
	if r.hasValue {
		out = append(out, 1)
	} else {
		out = append(out, 0)
	}
	out = binary.BigEndian.AppendUint64(out, uint64(r.valueExp))
	return append(out, r.value...)
}

// appendHolder appends holder ID h, marked if sighted (and if the mark
// fits the length byte; unmarked, it is only judged by the clock rule).
func appendHolder(out []byte, h string, sighted bool) []byte {
	if sighted && len(h) < 255 && h != "" {
		out = append(out, byte(len(h)+1))
		out = append(out, sightedMark...)
		return append(out, h...)
	}
	out = append(out, byte(len(h)))
	return append(out, h...)
}

// holderField splits a holder field into its ID and sightedMark.
func holderField(f string) (string, bool) {
	if h, ok := strings.CutPrefix(f, sightedMark); ok {
		return h, true
	}
	return f, false
}

// reader reads a record's fields, remembering the first overrun.
type reader struct {
	b   []byte
	bad bool
}

func (d *reader) take(n int) []byte {
	if d.bad || len(d.b) < n {
		d.bad = true
		return make([]byte, n)
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *reader) u8() byte    { return d.take(1)[0] }
func (d *reader) u16() int    { return int(binary.BigEndian.Uint16(d.take(2))) }
func (d *reader) u64() uint64 { return binary.BigEndian.Uint64(d.take(8)) }
func (d *reader) str() string { return string(d.take(int(d.u8()))) }
func (d *reader) i64() int64  { return int64(d.u64()) }

// decodeRecord decodes the record written at revision rev (its token
// resolved), or reports it malformed. It never panics.
func decodeRecord(b []byte, rev uint64) (record, bool) {
	d := &reader{b: b}
	if d.u8() != recVersion {
		return record{}, false
	}
	r := record{op: d.u8()}
	r.holder, r.sighted = holderField(d.str())
	r.token, r.leaseExp, r.leaseTTL = d.u64(), d.i64(), d.i64()
	if q := d.u16(); q > 0 && !d.bad {
		if q > len(d.b)/17 {
			return record{}, false
		}
		r.queue = make([]entry, q)
		for i := range r.queue {
			h, sighted := holderField(d.str())
			r.queue[i] = entry{holder: h, exp: d.i64(), ttl: d.i64(), sighted: sighted}
		}
	}
	r.hasValue = d.u8() == 1
	r.valueExp = d.i64()
	if d.bad {
		return record{}, false
	}
	if r.hasValue {
		r.value = d.b
	}
	if r.holder == "" {
		r.leaseExp, r.leaseTTL, r.token = 0, 0, 0
	} else if r.token == 0 {
		r.token = rev
	}
	return r, true
}

// held reports whether the record names a lease (live or not).
func (r record) held() bool { return r.holder != "" }

// liveValue returns the stored value if there is one and it has not
// expired at now.
func (r record) liveValue(now time.Time) ([]byte, bool) {
	if !r.hasValue || (r.valueExp != 0 && now.UnixMilli() >= r.valueExp) {
		return nil, false
	}
	return r.value, true
}

// withValue returns r storing value for ttl (0: no expiry) from now.
func (r record) withValue(value []byte, ttl time.Duration, now time.Time) record {
	r.hasValue, r.value, r.valueExp = true, append([]byte{}, value...), 0
	if ttl > 0 {
		r.valueExp = ceilMs(now.Add(ttl))
	}
	return r
}

// withoutLease returns r with no lease.
func (r record) withoutLease() record {
	r.holder, r.token, r.leaseExp, r.leaseTTL = "", 0, 0, 0
	return r
}

// withLease returns r with a new lease of holder for ttl from now (its
// token: the revision that writes it); sighted: holder runs takeover by
// sightings (a waiter of this version, or this process).
func (r record) withLease(holder string, ttl time.Duration, now time.Time, sighted bool) record {
	r.holder, r.token, r.leaseExp, r.leaseTTL = holder, 0, ceilMs(now.Add(ttl)), ttl.Milliseconds()
	r.sighted = sighted
	return r
}

// extended returns r (which holds a lease) with its lease renewed for
// ttl from now. Its expiry less its TTL (the ms the write is sent, by
// the writer's clock) is made to exceed the previous write's, so that
// every write of one lease has its own leaseRev, even from a clock that
// reads behind the one that wrote the lease before (a grant's): the
// recorded expiry is then a little later than the holder's Deadline,
// which only delays a takeover by the clock rule.
func (r record) extended(ttl time.Duration, now time.Time) record {
	exp := ceilMs(now.Add(ttl))
	if prev := r.leaseExp - r.leaseTTL; exp-ttl.Milliseconds() <= prev {
		exp = prev + 1 + ttl.Milliseconds()
	}
	r.leaseExp, r.leaseTTL = exp, ttl.Milliseconds()
	return r
}

// leaseRev identifies the write that made or last renewed r's lease: its
// token (the revision of the write that claimed it, or of the grant) and
// its expiry less its TTL, which withLease and extended make differ
// between writes of one token. Writes that leave the lease as it was (a
// Commit, a Set, an Enqueue) keep it: they move no holder's Deadline,
// so a takeover still counts from the first sighting of the lease's own
// write (heldUntil), where the record's revision would start again at
// each of them (a fair queue's waiters rewrite the record every TTL/3).
func leaseRev(r record) driver.Rev {
	return driver.Rev{r.token, uint64(r.leaseExp - r.leaseTTL)}
}

// heldUntil returns when another client may take over the lease in r,
// read (or delivered by a watch) at now: its recorded expiry plus
// ClockSkew, or sooner if this process has seen that write of the lease
// since about when it was made: its first sighting plus the lease's TTL
// (driver.Sightings), which the holder's Deadline precedes whatever the
// two clocks read. now is a reading of the lease clock (internal/clock,
// the one Deadlines are on) taken after the answer arrived. Records keep
// time.Now's time, as before: the two differ only in a test process
// that skews its lease clock (the faults' holders), whose records stay
// on the real clock.
func (b *backend) heldUntil(key string, r record, now time.Time) time.Time {
	if !r.sighted {
		// Its holder may count its Deadline as earlier versions did.
		return driver.TakeoverAt(time.UnixMilli(r.leaseExp), b.o.ClockSkew, time.Time{})
	}
	return driver.TakeoverAt(time.UnixMilli(r.leaseExp), b.o.ClockSkew, b.sight(key, r, now))
}

// sight records that r, which holds a lease, was seen at now (lease
// clock) and returns driver.Sightings.End for its lease write.
func (b *backend) sight(key string, r record, now time.Time) time.Time {
	return b.seen.End(key, leaseRev(r), time.Duration(r.leaseTTL)*time.Millisecond, now)
}

// ceilMs returns t in Unix milliseconds, rounded up.
func ceilMs(t time.Time) int64 {
	ms := t.UnixMilli()
	if time.UnixMilli(ms).Before(t) {
		ms++
	}
	return ms
}

// roundTTL rounds ttl up to whole milliseconds.
func roundTTL(ttl time.Duration) time.Duration {
	if r := ttl % time.Millisecond; r != 0 {
		ttl += time.Millisecond - r
	}
	return ttl
}

// read returns key's record and its revision; found is false if there is
// none (rev is then the revision of the delete marker, or 0), and a record
// that does not decode is an error.
func (b *backend) read(ctx context.Context, key string) (rev uint64, r record, found bool, err error) {
	_, st, err := b.bucket(ctx)
	if err != nil {
		return 0, record{}, false, err
	}
	rctx, end, err := b.begin(ctx)
	if err != nil {
		return 0, record{}, false, err
	}
	m, err := b.lastMsg(rctx, st, b.subject(b.recKey(key)))
	err = end(err)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return 0, record{}, false, nil
	case err != nil:
		return 0, record{}, false, b.classify(err)
	}
	if op := m.Header.Get("KV-Operation"); op != "" || m.Header.Get("Nats-Marker-Reason") != "" {
		return m.Sequence, record{}, false, nil // deleted or purged
	}
	r, ok := decodeRecord(m.Data, m.Sequence)
	if !ok {
		return 0, record{}, false, fmt.Errorf("malformed record (%d bytes) at revision %d", len(m.Data), m.Sequence)
	}
	return m.Sequence, r, true, nil
}

// lastMsg returns subject's last message: a direct get (any replica may
// answer) from a bucket of one replica, else a get answered by the
// stream's leader, which has everything a watch delivered (a follower
// may not yet: a waiter woken by a release could read the lease still
// held, and wait for it to expire).
func (b *backend) lastMsg(ctx context.Context, st jetstream.Stream, subject string) (*jetstream.RawStreamMsg, error) {
	if !b.leaderReads && st.CachedInfo().Config.Replicas <= 1 {
		return st.GetLastMsgForSubject(ctx, subject)
	}
	req, _ := json.Marshal(map[string]string{"last_by_subj": subject})
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, claim.DefaultOpTimeout)
		defer cancel()
	}
	reply, err := b.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+b.o.Bucket, req)
	if errors.Is(err, natsgo.ErrNoResponders) {
		return nil, jetstream.ErrJetStreamNotEnabled
	}
	if err != nil {
		return nil, err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject  string `json:"subject"`
			Sequence uint64 `json:"seq"`
			Header   []byte `json:"hdrs"`
			Data     []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return nil, fmt.Errorf("stream message get: unreadable answer: %w", err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound:
		return nil, jetstream.ErrMsgNotFound
	case resp.Error != nil:
		return nil, resp.Error
	case resp.Message == nil:
		return nil, errors.New("stream message get: answer without a message")
	}
	m := &jetstream.RawStreamMsg{Subject: resp.Message.Subject, Sequence: resp.Message.Sequence, Data: resp.Message.Data}
	if len(resp.Message.Header) > 0 {
		if m.Header, err = natsgo.DecodeHeadersMsg(resp.Message.Header); err != nil {
			return nil, fmt.Errorf("stream message get: headers: %w", err)
		}
	}
	return m, nil
}

// errConflict: a compare-and-set found another revision.
var errConflict = errors.New("revision changed")

// cas writes r as key's record if the key's last revision is rev (0: no
// record ever, or ever since a purge), and returns the new revision.
func (b *backend) cas(ctx context.Context, key string, r record, rev uint64) (uint64, error) {
	return b.publish(ctx, b.recKey(key), r.encode(), jetstream.WithExpectLastSequencePerSubject(rev))
}

// publish writes data to the KV key, with opts, and returns its revision.
func (b *backend) publish(ctx context.Context, kvKey string, data []byte, opts ...jetstream.PublishOpt) (uint64, error) {
	if _, _, err := b.bucket(ctx); err != nil {
		return 0, err
	}
	rctx, end, err := b.begin(ctx)
	if err != nil {
		return 0, err
	}
	ack, err := b.js.PublishMsg(rctx, &natsgo.Msg{Subject: b.subject(kvKey), Data: data}, opts...)
	if err = end(err); err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, errConflict
		}
		return 0, b.classify(err)
	}
	return ack.Sequence, nil
}

// heldRec is the last record this process wrote for a lease it holds, so
// that its holder's next write needs no read first.
type heldRec struct {
	rev uint64
	rec record
}

// maxHeld bounds the cache of held records: past it, records of leases
// that have expired are dropped.
const maxHeld = 4096

func (b *backend) remember(key string, rev uint64, r record) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.held) >= maxHeld {
		now := time.Now().UnixMilli()
		for k, h := range b.held {
			if h.rec.leaseExp <= now {
				delete(b.held, k)
			}
		}
		if len(b.held) >= maxHeld {
			return
		}
	}
	b.held[key] = heldRec{rev, r}
}

func (b *backend) forget(key string, token uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if h, ok := b.held[key]; ok && h.rec.token == token {
		delete(b.held, key)
	}
}

// cached returns the record this process last wrote for l, if it has it.
func (b *backend) cached(l driver.Lease) (uint64, record, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	h, ok := b.held[l.Key]
	if !ok || h.rec.holder != l.Holder || h.rec.token != l.Token {
		return 0, record{}, false
	}
	return h.rev, h.rec, true
}

// tryClaim reads the key's record and, if it holds no lease (or one this
// client may take over: heldUntil), writes a record with the new lease
// (and the stored value, as it was) conditioned on the revision read. A
// record that changed in between (another claim, a Set) is read again,
// once.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if err := ctx.Err(); err != nil {
		return driver.Lease{}, nil, false, err
	}
	ttl = roundTTL(ttl)
	for attempt := 0; attempt < 2; attempt++ {
		rev, cur, found, err := b.read(ctx, key)
		if err != nil {
			return driver.Lease{}, nil, false, err
		}
		if found && cur.held() {
			if left := clock.Until(b.heldUntil(key, cur, clock.Now())); left > 0 {
				return driver.Lease{}, nil, false, &driver.HeldError{Remaining: left}
			}
		}
		start := time.Now()
		nr := record{op: opClaim, queue: cur.queue}.withLease(holder, ttl, start, true)
		val, hasVal := cur.liveValue(start)
		if found && hasVal {
			nr.hasValue, nr.value, nr.valueExp = true, val, cur.valueExp
		}
		newRev, err := b.cas(ctx, key, nr, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return driver.Lease{}, nil, false, err
		}
		nr.token = newRev
		b.remember(key, newRev, nr)
		l := driver.Lease{Key: key, Holder: holder, Token: newRev, TTL: ttl, Handle: strconv.FormatUint(newRev, 10)}
		if read && hasVal {
			return l, append([]byte(nil), val...), true, nil
		}
		return l, nil, false, nil
	}
	return driver.Lease{}, nil, false, &driver.HeldError{}
}

// fenced writes the record build makes from l's current record,
// conditioned on that record's revision: first the one this process last
// wrote for l, then, if another write came in between (a Set, a retried
// Extend), the one read back after checking that l is still current.
// With live, a lease whose record has expired (by this client's clock,
// whatever l.Deadline says) gets ErrLost. It returns the record written
// and the lease's record as it was before.
func (b *backend) fenced(ctx context.Context, l driver.Lease, live bool, build func(cur record) record) (record, record, error) {
	if err := ctx.Err(); err != nil {
		return record{}, record{}, err
	}
	if l.Holder == "" {
		return record{}, record{}, driver.ErrLost
	}
	rev, cur, ok := b.cached(l)
	for round := 0; round < 8; round++ {
		if !ok {
			var found bool
			var err error
			rev, cur, found, err = b.read(ctx, l.Key)
			if err != nil {
				return record{}, record{}, err
			}
			if !found || cur.holder != l.Holder || cur.token != l.Token {
				b.forget(l.Key, l.Token)
				return record{}, record{}, driver.ErrLost
			}
		}
		if live && time.Now().UnixMilli() >= cur.leaseExp {
			b.forget(l.Key, l.Token)
			return record{}, record{}, driver.ErrLost
		}
		nr := build(cur)
		newRev, err := b.cas(ctx, l.Key, nr, rev)
		if errors.Is(err, errConflict) {
			ok = false
			continue
		}
		if err != nil {
			return record{}, record{}, err
		}
		b.forget(l.Key, l.Token)
		if nr.held() {
			if nr.token == 0 {
				nr.token = newRev // a new lease (a hand-over)
			}
			b.remember(l.Key, newRev, nr)
		}
		return nr, cur, nil
	}
	return record{}, record{}, errors.New("record keeps changing under its holder (concurrent Set or Extend of one key?)")
}

// Extend implements driver.Claimer: a compare-and-set of the record with
// the new expiry.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ttl = roundTTL(ttl)
	_, _, err := b.fenced(ctx, l, true, func(cur record) record {
		cur = cur.extended(ttl, time.Now())
		cur.op = opExtend
		return cur
	})
	if err != nil {
		return driver.Lease{}, err
	}
	l.TTL = ttl
	return l, nil
}

// Release implements driver.Claimer: a compare-and-set of the record
// without the lease (the value kept), which the key's watchers see.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	_, old, err := b.fenced(ctx, l, false, func(cur record) record {
		cur = cur.withoutLease()
		cur.op = opRelease
		return cur
	})
	if err != nil {
		return err
	}
	if time.Now().UnixMilli() >= old.leaseExp {
		return fmt.Errorf("%w (it had expired; its record, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// commit is a compare-and-set of the record with the value (and, with
// release, without the lease): the value and the lease check are one
// atomic step on one KV key.
func (b *backend) commit(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration, release bool) error {
	_, _, err := b.fenced(ctx, l, true, func(cur record) record {
		cur = cur.withValue(value, ttl, time.Now())
		cur.op = opCommit
		if release {
			cur = cur.withoutLease()
			cur.op = opCommitRelease
		}
		return cur
	})
	return err
}

// Revoke implements driver.Claimer: one unconditional write of a record
// with no lease and the new value (or none). The revoked holder's next
// write finds another revision and a record that is not its own
// (ErrLost); the next claim's token, a later revision, is greater.
func (b *backend) Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r := record{op: opRevoke}
	if value != nil {
		r = r.withValue(value, ttl, time.Now())
	}
	_, err := b.publish(ctx, b.recKey(key), r.encode())
	return err
}
