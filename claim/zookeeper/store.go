package zookeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

func encodeValue(val []byte, ttl time.Duration) []byte {
	out := make([]byte, valueHeader+len(val))
	out[0] = 1
	binary.BigEndian.PutUint64(out[1:valueHeader], uint64(ceilMS(ttl)))
	copy(out[valueHeader:], val)
	return out
}

// write creates the root nodes if needed, then stores key's value node in
// one multi-op: guard, then create (or setData if it exists: in that order
// if create, else the other), then after. A guard that fails on a missing
// node (the lease's owner node) is ErrLost. It re-tries only when a
// concurrent writer or deleter changed the value node between the two.
func (b *backend) write(ctx context.Context, key string, guard, after []any, data []byte, create bool) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	path := b.valuePath(key)
	ws := []any{
		&zk.CreateRequest{Path: path, Data: data, Acl: b.acl},
		&zk.SetDataRequest{Path: path, Data: data, Version: -1},
	}
	if !create {
		ws[0], ws[1] = ws[1], ws[0]
	}
	for range attempts {
		for _, w := range ws {
			ops := append(append(append([]any{}, guard...), w), after...)
			_, failed, err := b.multi(ctx, ops...)
			switch {
			case err == nil:
				return nil
			case len(guard) > 0 && failed == 0 && errors.Is(err, zk.ErrNoNode):
				return driver.ErrLost
			case failed != len(guard) || !errors.Is(err, zk.ErrNodeExists) && !errors.Is(err, zk.ErrNoNode):
				return err
			}
		}
	}
	return errors.New("value node kept changing under concurrent writers")
}

// Get implements driver.Store: a sync, then the read, in one call. A
// ZooKeeper server answers reads from its own copy, which may lag the
// leader: without the sync, a read on a follower could miss a write
// another client's server had already acknowledged (the faults cluster
// test's linearizability check found one: a value read 0.1 ms after the
// next one was committed). The sync makes the session's server catch up
// with the leader first, for one more round trip. A TryClaimRead's read
// needs none: it follows the session's own claim (see getValue).
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	v, found, err := b.getValue(ctx, key, true)
	if err == nil && !found {
		err = driver.ErrNotFound
	}
	return v, err
}

// getValue reads key's value node: found is false if it is absent or
// expired (then it is deleted, unless rewritten meanwhile). With synced,
// a sync goes first (see Get); without, the read is the session's own
// (as TryClaimRead's, after its claim: the session's server has applied
// that write, and everything committed before it, when it answers).
func (b *backend) getValue(ctx context.Context, key string, synced bool) ([]byte, bool, error) {
	path := b.valuePath(key)
	var data []byte // read only once call returned the call's own result
	st, err := call(ctx, b, func() (st *zk.Stat, err error) {
		if synced {
			if _, err := b.conn.Sync(path); err != nil {
				return nil, err
			}
		}
		data, st, err = b.conn.Get(path)
		return st, err
	})
	if errors.Is(err, zk.ErrNoNode) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if len(data) < valueHeader || data[0] != 1 {
		return nil, false, fmt.Errorf("value node %s was not written by this package", path)
	}
	if ms := int64(binary.BigEndian.Uint64(data[1:valueHeader])); ms > 0 && time.Now().UnixMilli() >= st.Mtime+ms {
		// Expired: delete it unless rewritten meanwhile (best effort).
		_ = b.do(ctx, func() error { return b.conn.Delete(path, st.Version) })
		return nil, false, nil
	}
	return append([]byte{}, data[valueHeader:]...), true, nil
}

// Set implements driver.Store. It tries setData first (a value is usually
// overwritten), then create.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	return b.write(ctx, key, nil, nil, encodeValue(val, ttl), false)
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := b.setup(ctx); err != nil {
		return err
	}
	err := b.do(ctx, func() error { return b.conn.Delete(b.valuePath(key), -1) })
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return err
	}
	return nil
}
