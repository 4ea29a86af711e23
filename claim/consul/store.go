package consul

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
)

func (b *Backend) checkValue(op, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("consul: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, b.maxVal); err != nil {
		return fmt.Errorf("consul: %s %q: %w", op, key, err)
	}
	return nil
}

// Stored values carry a header: version byte, then the expiry as Unix ms
// (big endian, 0: none), judged by the reader's clock.
const (
	valueVersion = 1
	headerLen    = 9
)

func encodeValue(val []byte, ttl time.Duration, now time.Time) []byte {
	out := make([]byte, headerLen+len(val))
	out[0] = valueVersion
	if ttl > 0 {
		exp := now.Add(ttl)
		ms := exp.UnixMilli()
		if time.UnixMilli(ms).Before(exp) {
			ms++
		}
		binary.BigEndian.PutUint64(out[1:headerLen], uint64(ms))
	}
	copy(out[headerLen:], val)
	return out
}

// decodeValue returns the value, whether it has expired at now, and
// whether it is well formed.
func decodeValue(v []byte, now time.Time) ([]byte, bool, bool) {
	if len(v) < headerLen || v[0] != valueVersion {
		return nil, false, false
	}
	ms := int64(binary.BigEndian.Uint64(v[1:headerLen]))
	expired := ms != 0 && now.UnixMilli() >= ms
	return v[headerLen:], expired, true
}

// Get implements claim.Store. A value read after its expiry is reported
// absent and deleted (compare-and-delete, so a newer Set survives).
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check("get", key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, _, err := b.kv.Get(b.valueKey(key), qo(ctx))
	if err != nil {
		return nil, fmt.Errorf("consul: get %q: %w", key, err)
	}
	if p == nil {
		return nil, fmt.Errorf("consul: get %q: %w", key, claim.ErrNotFound)
	}
	v, expired, ok := decodeValue(p.Value, time.Now())
	if !ok {
		return nil, fmt.Errorf("consul: get %q: malformed stored value (%d bytes)", key, len(p.Value))
	}
	if expired {
		_, _, _ = b.kv.DeleteCAS(&capi.KVPair{Key: p.Key, ModifyIndex: p.ModifyIndex}, wo(ctx))
		return nil, fmt.Errorf("consul: get %q: %w", key, claim.ErrNotFound)
	}
	return v, nil
}

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := b.check("set", key); err != nil {
		return err
	}
	if err := b.checkValue("set", key, value, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &capi.KVPair{Key: b.valueKey(key), Value: encodeValue(value, ttl, time.Now())}
	if _, err := b.kv.Put(p, wo(ctx)); err != nil {
		return fmt.Errorf("consul: set %q: %w", key, apiErr(err))
	}
	return nil
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check("delete", key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := b.kv.Delete(b.valueKey(key), wo(ctx)); err != nil {
		return fmt.Errorf("consul: delete %q: %w", key, err)
	}
	return nil
}
