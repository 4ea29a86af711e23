package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// validHolder reports whether h can name an owner node (o/HOLDER): a
// single znode name of printable ASCII. The Client's holder IDs always
// can; a lock node whose data cannot was not written by this package.
func validHolder(h string) bool {
	return h != "" && len(h) <= maxKeyLen && h != "." && h != ".." &&
		!strings.ContainsFunc(h, func(r rune) bool { return r >= 0x80 || !safeName(byte(r)) })
}

func ceilMS(d time.Duration) int64 { return int64((d + time.Millisecond - 1) / time.Millisecond) }

func ttlData(ms int64) []byte { return []byte(strconv.FormatInt(ms, 10)) }

// parseLock reads a lock node's data: the holder's ID, and for a lease
// granted to a waiter (Queuer: HandOff, Dequeue, Enqueue's step 4) "/"
// and the TTL granted in ms (grantTTL 0 otherwise). ok is false if it was
// not written by this package.
func parseLock(data []byte) (holder string, grantTTL int64, ok bool) {
	h, t, granted := strings.Cut(string(data), "/")
	if granted {
		ms, err := strconv.ParseInt(t, 10, 64)
		if err != nil || ms <= 0 {
			return "", 0, false
		}
		grantTTL = ms
	}
	return h, grantTTL, validHolder(h)
}

// claimOps creates the lock and owner nodes; the final setData reports the
// owner's stat, whose czxid (this transaction's zxid) is the token. With
// prev, it first deletes an expired claim: its owner node at the version
// read (so a racing Extend wins) and, since that owner exists, its lock.
//
// The nodes are persistent, like a hand-over's: the lease ends by its TTL
// (the owner's mtime on the leader's clock) or its release, never with the
// holder's session. Ephemeral nodes ended it when a holder cut off for
// longer than the session timeout lost its session, which, for a TTL
// longer than that timeout, was before the holder's Deadline: another
// client then held the key while the cut-off holder still worked as its
// holder (TestReconnectSessionExpiry). A crashed holder's key is
// taken over by its TTL, as before; its nodes stay until then.
func (b *backend) claimOps(key, holder string, ttlMS int64, prev *holderState) []any {
	lock := b.lockPath(key)
	var ops []any
	if prev != nil {
		ops = append(ops,
			&zk.DeleteRequest{Path: b.ownerPath(key, prev.holder), Version: prev.ownerVersion},
			&zk.DeleteRequest{Path: lock, Version: -1})
	}
	d := ttlData(ttlMS)
	return append(ops,
		&zk.CreateRequest{Path: lock, Data: []byte(holder), Acl: b.acl},
		&zk.CreateRequest{Path: b.ownerPath(key, holder), Data: d, Acl: b.acl},
		&zk.SetDataRequest{Path: b.ownerPath(key, holder), Data: d, Version: 0})
}

// releaseOps ends the claim of holder on key: they fail as a whole, on
// the first op (ErrNoNode), if that claim is not current.
func (b *backend) releaseOps(key, holder string) []any {
	return []any{
		&zk.DeleteRequest{Path: b.ownerPath(key, holder), Version: -1},
		&zk.DeleteRequest{Path: b.lockPath(key), Version: -1},
	}
}

// holderState is what a claimer reads about the current claim on a key.
type holderState struct {
	holder       string
	ownerVersion int32
	ttl          int64 // ms
	expires      int64 // leader's clock, Unix ms
	owner        *zk.Stat
}

// lease is s as the Lease of key it is.
func (s holderState) lease(key string) driver.Lease {
	return driver.Lease{Key: key, Holder: s.holder, Token: uint64(s.owner.Czxid), TTL: time.Duration(s.ttl) * time.Millisecond, Handle: handle(s.owner)}
}

// inspect reads the claim on key. ok is false if there is none to judge
// (no lock node, or it vanished between the two reads).
func (b *backend) inspect(ctx context.Context, key string) (holderState, bool, error) {
	lock := b.lockPath(key)
	s, err := call(ctx, b, func() (holderState, error) {
		data, _, err := b.conn.Get(lock)
		if err != nil {
			return holderState{}, err
		}
		h, _, ok := parseLock(data)
		if !ok {
			return holderState{}, fmt.Errorf("lock node %s holds %q, not a holder ID: not written by this package", lock, data)
		}
		od, ost, err := b.conn.Get(b.ownerPath(key, h))
		if err != nil {
			return holderState{}, err
		}
		ms, err := strconv.ParseInt(string(od), 10, 64)
		if err != nil {
			return holderState{}, fmt.Errorf("owner node of %s holds %q, not a TTL", lock, od)
		}
		return holderState{holder: h, ownerVersion: ost.Version, ttl: ms, expires: ost.Mtime + ms, owner: ost}, nil
	})
	if errors.Is(err, zk.ErrNoNode) {
		return holderState{}, false, nil
	}
	return s, err == nil, err
}

// remaining is how long the claim s has left, at most its TTL (a local
// clock ahead of the leader's cannot stretch it): by the local clock, and,
// if that says it has run out, by the leader's, by which owner mtimes are
// judged: the mtime of a write to the clock node (one more round trip).
func (b *backend) remaining(ctx context.Context, s holderState) (time.Duration, error) {
	// ZooKeeper's mtime, and a clock reading, are truncated to the
	// millisecond: a claim applied within the millisecond its holder
	// counted its Deadline from has an mtime up to 1 ms before it, so
	// the lease runs out only once now is past expires (a millisecond
	// more), never at it.
	left := func(now int64) time.Duration { return time.Duration(min(s.expires+1-now, s.ttl)) * time.Millisecond }
	if rem := left(time.Now().UnixMilli()); rem > 0 {
		return rem, nil
	}
	st, err := call(ctx, b, func() (*zk.Stat, error) { return b.conn.Set(b.root+"/clock", nil, -1) })
	if err != nil {
		return 0, err
	}
	return left(st.Mtime), nil
}

// tryClaim is the driver's claim (driver.ClaimFunc). It makes one claim
// attempt; if the key is held by an expired claim (judged on the leader's
// clock) it takes it over. Claims racing it can make it re-read, at most
// three rounds. With read: a multi-op cannot read, so the claim's multi-op
// also creates and deletes the value node, one round trip that proves the
// key has no value; if it has one, the key is claimed without that probe
// and the value read after (three round trips).
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	if !validHolder(holder) {
		return driver.Lease{}, nil, false, fmt.Errorf("holder %q cannot name a znode", holder)
	}
	if err := b.setup(ctx); err != nil {
		return driver.Lease{}, nil, false, err
	}
	ttlMS := ceilMS(ttl)
	var prev *holderState
	held := &driver.HeldError{}
	probe := read // the key has no value, as far as we know
	for round := 0; round < attempts; round++ {
		ops := b.claimOps(key, holder, ttlMS, prev)
		nClaim := len(ops)
		if probe {
			vp := b.valuePath(key)
			ops = append(ops, &zk.CreateRequest{Path: vp, Acl: b.acl}, &zk.DeleteRequest{Path: vp, Version: -1})
		}
		res, failed, err := b.multi(ctx, ops...)
		if err == nil {
			st := res[nClaim-1].Stat
			l := driver.Lease{Key: key, Holder: holder, Token: uint64(st.Czxid), TTL: time.Duration(ttlMS) * time.Millisecond, Handle: handle(st)}
			if !read || probe {
				return l, nil, false, nil // no value node at the claim
			}
			v, found, err := b.getValue(ctx, key, false)
			if err != nil {
				// The caller gets no lease: give it back (best effort).
				_, _, _ = b.multi(ctx, b.releaseOps(key, holder)...)
				return driver.Lease{}, nil, false, err
			}
			return l, v, found, nil
		}
		if probe && failed == nClaim && errors.Is(err, zk.ErrNodeExists) {
			// The claim would have succeeded, but the key has a value:
			// claim without the probe, then read it.
			probe = false
			round--
			continue
		}
		if prev == nil && (!errors.Is(err, zk.ErrNodeExists) || failed != 0) {
			return driver.Lease{}, nil, false, err
		}
		if prev != nil && !errors.Is(err, zk.ErrNoNode) && !errors.Is(err, zk.ErrBadVersion) && !errors.Is(err, zk.ErrNodeExists) {
			return driver.Lease{}, nil, false, err
		}
		// Held, or changed under us: read the current claim.
		s, ok, err := b.inspect(ctx, key)
		if err != nil {
			return driver.Lease{}, nil, false, err
		}
		prev = nil
		if !ok {
			continue // released meanwhile: claim afresh
		}
		rem, err := b.remaining(ctx, s)
		if err != nil {
			return driver.Lease{}, nil, false, err
		}
		if rem > 0 {
			held.Remaining = rem
			return driver.Lease{}, nil, false, held
		}
		prev = &s
	}
	return driver.Lease{}, nil, false, held
}

// handle is a lease's Handle: the owner node's mtime (Unix ms, the
// leader's clock) when the lease was granted or last extended.
func handle(owner *zk.Stat) string { return strconv.FormatInt(owner.Mtime, 10) }

// current returns ErrLost for a lease that lapsed on the server (see
// lapsed); any other loss (a takeover, a release, the session's end) makes
// the write that follows fail on the missing owner node.
func (b *backend) current(ctx context.Context, l driver.Lease) error {
	lapsed, err := b.lapsed(ctx, l)
	if err == nil && lapsed {
		err = fmt.Errorf("%w (its TTL ran out on the server)", driver.ErrLost)
	}
	return err
}

// lapsed reports whether l, still holding its key, has outlived its TTL
// on the server with nobody taking the key over yet (see the package doc).
// The server is read only when this copy may have run out, which also
// catches a forged or replayed Deadline; the lease is then judged as last
// extended. A holder this package cannot have issued is ErrLost.
func (b *backend) lapsed(ctx context.Context, l driver.Lease) (bool, error) {
	if !validHolder(l.Holder) {
		return false, fmt.Errorf("%w (holder %q was never issued)", driver.ErrLost, l.Holder)
	}
	now := time.Now()
	granted, err := strconv.ParseInt(l.Handle, 10, 64)
	if !l.Expired(now) && err == nil && now.UnixMilli() < granted+ceilMS(l.TTL) {
		return false, nil
	}
	s, ok, err := b.inspect(ctx, l.Key)
	if err != nil || !ok || s.holder != l.Holder {
		return false, err // not holding the key: left to the write
	}
	rem, err := b.remaining(ctx, s)
	return rem <= 0, err
}

// Extend implements driver.Claimer: one setData of the lease's owner node,
// which restarts its TTL on the leader's clock.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	if err := b.setup(ctx); err != nil {
		return driver.Lease{}, err
	}
	if err := b.current(ctx, l); err != nil {
		return driver.Lease{}, err
	}
	ttlMS := ceilMS(ttl)
	st, err := call(ctx, b, func() (*zk.Stat, error) { return b.conn.Set(b.ownerPath(l.Key, l.Holder), ttlData(ttlMS), -1) })
	if errors.Is(err, zk.ErrNoNode) || (err == nil && uint64(st.Czxid) != l.Token) {
		return driver.Lease{}, driver.ErrLost
	}
	if err != nil {
		return driver.Lease{}, err
	}
	l.TTL, l.Handle = time.Duration(ttlMS)*time.Millisecond, handle(st)
	return l, nil
}

// Release implements driver.Claimer: one multi-op deleting the owner node
// and the lock node, which fails as a whole if the owner node is gone.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	expired, err := b.lapsed(ctx, l)
	if err != nil {
		return err
	}
	_, failed, err := b.multi(ctx, b.releaseOps(l.Key, l.Holder)...)
	if errors.Is(err, zk.ErrNoNode) && failed == 0 {
		return driver.ErrLost
	}
	if err != nil {
		return err
	}
	if expired {
		return fmt.Errorf("%w (it had expired; its lock, still unclaimed, was freed)", driver.ErrLost)
	}
	return nil
}

// Commit implements driver.Claimer: multi(check o/HOLDER, write v/KEY).
func (b *backend) Commit(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	guard := []any{&zk.CheckVersionRequest{Path: b.ownerPath(l.Key, l.Holder), Version: -1}}
	return b.commit(ctx, l, guard, nil, val, ttl)
}

// CommitRelease implements driver.CommitReleaser: multi(delete o/HOLDER,
// write v/KEY, create and delete v/KEY/r, delete l/KEY); the lock node's
// watchers see the release. The child created and deleted marks the value
// node as written by a CommitRelease (see releasedValue).
func (b *backend) CommitRelease(ctx context.Context, l driver.Lease, val []byte, ttl time.Duration) error {
	rel := b.releaseOps(l.Key, l.Holder)
	mark := b.valuePath(l.Key) + "/r"
	after := append([]any{
		&zk.CreateRequest{Path: mark, Acl: b.acl},
		&zk.DeleteRequest{Path: mark, Version: -1},
	}, rel[1:]...)
	return b.commit(ctx, l, rel[:1], after, val, ttl)
}

// commit writes l's value between guard, which fails (ErrLost) if l is not
// current, and after, unless l lapsed. After a miss the value node is
// usually absent (Get deletes expired ones), so it tries create first.
func (b *backend) commit(ctx context.Context, l driver.Lease, guard, after []any, val []byte, ttl time.Duration) error {
	if err := b.current(ctx, l); err != nil {
		return err
	}
	return b.write(ctx, l.Key, guard, after, encodeValue(val, ttl), true)
}

// Revoke implements driver.Claimer: one multi-op ends the key's claim and
// replaces its value together, so a Commit of the revoked lease (guarded
// by its owner node) lands before it, and is replaced, or fails after it.
// Its claim part is releaseOps of the holder the lock node names, or, for
// a free key, a create and delete of the lock node (which proves the key
// free, as in Notify); either fires the lock node's watches, after the
// commit, in every process. Its value part is setData or create of the
// value node, or for a nil value its delete, or a create and delete that
// proves it absent. Both parts start from a guess (the key is free, the
// value exists), and a multi-op that fails on one of them says which: the
// lock node is then read (its holder) or the value guess flipped, and the
// multi-op sent again. So Revoke is one round trip on a free key whose
// value node exists, one more if it does not, and two more on a held key
// (the read of its lock node, the multi-op again). The fence needs
// nothing: tokens are the czxids of claims, and any later claim has a
// higher zxid. A revoked holder's Extend, Commit, CommitRelease and
// Release fail on its missing owner node (ErrLost).
func (b *backend) Revoke(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	lock := b.lockPath(key)
	var data []byte
	if val != nil {
		data = encodeValue(val, ttl)
	}
	holder := ""        // the claim to end, as last read ("": none)
	valueExists := true // a key is usually revoked to drop its value
	for range 2 * attempts {
		ops := append(b.revokeLeaseOps(key, holder), b.revokeValueOps(key, data, valueExists)...)
		_, failed, err := b.multi(ctx, ops...)
		wrongGuess := errors.Is(err, zk.ErrNoNode) || errors.Is(err, zk.ErrNodeExists)
		switch {
		case err == nil:
			return nil
		case wrongGuess && failed >= 0 && failed < 2: // the claim part
			if holder, err = b.lockHolder(ctx, lock); err != nil {
				return err
			}
		case wrongGuess && failed >= 2: // the value part
			valueExists = !valueExists
		default:
			return err
		}
	}
	return errors.New("key kept changing under concurrent claims and writers")
}

// revokeLeaseOps are the two ops that end holder's claim on key, or, with
// no holder, prove key free; both fire the lock node's watches.
func (b *backend) revokeLeaseOps(key, holder string) []any {
	if holder != "" {
		return b.releaseOps(key, holder)
	}
	lock := b.lockPath(key)
	return []any{
		&zk.CreateRequest{Path: lock, Acl: b.acl, Flags: zk.FlagEphemeral},
		&zk.DeleteRequest{Path: lock, Version: -1},
	}
}

// revokeValueOps store data (nil: none) as key's value node, which exists
// or not as guessed; they fail on ErrNoNode or ErrNodeExists if it was
// guessed wrong.
func (b *backend) revokeValueOps(key string, data []byte, exists bool) []any {
	path := b.valuePath(key)
	switch {
	case data != nil && exists:
		return []any{&zk.SetDataRequest{Path: path, Data: data, Version: -1}}
	case data != nil:
		return []any{&zk.CreateRequest{Path: path, Data: data, Acl: b.acl}}
	case exists:
		return []any{&zk.DeleteRequest{Path: path, Version: -1}}
	default:
		return []any{&zk.CreateRequest{Path: path, Acl: b.acl}, &zk.DeleteRequest{Path: path, Version: -1}}
	}
}

// lockHolder returns the holder the lock node names, "" if there is none.
func (b *backend) lockHolder(ctx context.Context, lock string) (string, error) {
	data, err := call(ctx, b, func() ([]byte, error) {
		data, _, err := b.conn.Get(lock)
		return data, err
	})
	switch {
	case errors.Is(err, zk.ErrNoNode):
		return "", nil
	case err != nil:
		return "", err
	}
	h, _, ok := parseLock(data)
	if !ok {
		return "", fmt.Errorf("lock node %s holds %q, not a holder ID: not written by this package", lock, data)
	}
	return h, nil
}
