package zookeeper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
)

func (b *Backend) checkValue(op, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("zookeeper: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, b.maxVal); err != nil {
		return fmt.Errorf("zookeeper: %s %q: %w", op, key, err)
	}
	return nil
}

func encodeValue(val []byte, ttl time.Duration) []byte {
	out := make([]byte, valueHeader+len(val))
	out[0] = 1
	binary.BigEndian.PutUint64(out[1:valueHeader], uint64(ceilMS(ttl)))
	copy(out[valueHeader:], val)
	return out
}

// write stores a value node: create, or setData if it exists (in that
// order if create, else the other), each guarded by guard (the owner node)
// if not empty. It re-tries only when a concurrent writer or deleter
// changed the node between the two.
func (b *Backend) write(ctx context.Context, op, key, guard string, data []byte, create bool) error {
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
			ops := []any{w}
			if guard != "" {
				ops = []any{&zk.CheckVersionRequest{Path: guard, Version: -1}, w}
			}
			_, failed, err := b.multi(ctx, ops...)
			switch {
			case err == nil:
				return nil
			case guard != "" && failed == 0 && errors.Is(err, zk.ErrNoNode):
				return fmt.Errorf("zookeeper: %s %q: %w", op, key, claim.ErrLost)
			case !errors.Is(err, zk.ErrNodeExists) && !errors.Is(err, zk.ErrNoNode):
				return b.wrap(op, key, err)
			}
		}
	}
	return b.wrap(op, key, errors.New("value node kept changing under concurrent writers"))
}

// Get implements claim.Store.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check("get", key); err != nil {
		return nil, err
	}
	v, found, err := b.getValue(ctx, key)
	if err != nil {
		return nil, b.wrap("get", key, err)
	}
	if !found {
		return nil, fmt.Errorf("zookeeper: get %q: %w", key, claim.ErrNotFound)
	}
	return v, nil
}

// getValue reads key's value node: found is false if it is absent or
// expired (then it is deleted, unless rewritten meanwhile).
func (b *Backend) getValue(ctx context.Context, key string) ([]byte, bool, error) {
	path := b.valuePath(key)
	var data []byte
	var st *zk.Stat
	err := b.do(ctx, func() (err error) {
		data, st, err = b.conn.Get(path)
		return err
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

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := b.check("set", key); err != nil {
		return err
	}
	if err := b.checkValue("set", key, val, ttl); err != nil {
		return err
	}
	if err := b.prepare(ctx); err != nil {
		return b.wrap("set", key, err)
	}
	return b.write(ctx, "set", key, "", encodeValue(val, ttl), false)
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check("delete", key); err != nil {
		return err
	}
	err := b.do(ctx, func() error { return b.conn.Delete(b.valuePath(key), -1) })
	if err != nil && !errors.Is(err, zk.ErrNoNode) {
		return b.wrap("delete", key, err)
	}
	return nil
}
