package memcache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim/driver"
)

// A stored value: 8 bytes of expiry (Unix ms, big endian; 0: none), then
// the caller's bytes.
const valueHeader = 8

// valueItem is key's value item holding val for ttl (0: no expiry).
func (b *backend) valueItem(key string, val []byte, ttl time.Duration) (*gomemcache.Item, error) {
	it := &gomemcache.Item{Key: b.item('v', key), Value: make([]byte, valueHeader+len(val))}
	if ttl > 0 {
		now := time.Now()
		exp, err := exptime(seconds(ttl)+1, now)
		if err != nil {
			return nil, err
		}
		it.Expiration = exp
		binary.BigEndian.PutUint64(it.Value, uint64(now.Add(ttl).UnixMilli()))
	}
	copy(it.Value[valueHeader:], val)
	return it, nil
}

// serverErr maps memcached's refusal of an item over its -I limit (smaller
// than ItemSizeMax says) to ErrTooLarge.
func serverErr(err error) error {
	if err != nil && strings.Contains(err.Error(), "object too large") {
		return fmt.Errorf("%w: %w", driver.ErrTooLarge, err)
	}
	return err
}

// deletedItem is key's value item as Revoke leaves it for a nil value:
// an expiry header of 1 ms after the epoch, long past, so every reader
// finds it absent, kept by memcached for deletedHold seconds, so that a
// commit's add held on the way (see Revoke) finds it there and fails.
func (b *backend) deletedItem(key string) *gomemcache.Item {
	it := &gomemcache.Item{Key: b.item('v', key), Value: make([]byte, valueHeader), Expiration: deletedHold}
	binary.BigEndian.PutUint64(it.Value, 1)
	return it
}

// decodeValue returns the caller's bytes in a value item read at now, or
// found false if it is past its TTL (by this client's clock).
func decodeValue(v []byte, now time.Time) (val []byte, found bool, err error) {
	if len(v) < valueHeader {
		return nil, false, fmt.Errorf("malformed value item (%d bytes)", len(v))
	}
	if ms := binary.BigEndian.Uint64(v); ms != 0 && now.UnixMilli() >= int64(ms) {
		return nil, false, nil
	}
	return v[valueHeader:], true, nil
}

// Get implements driver.Store. A value past its TTL (by this client's
// clock) is never returned.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	it, err := do(ctx, b, func() (*gomemcache.Item, error) { return b.c.Get(b.item('v', key)) })
	if errors.Is(err, gomemcache.ErrCacheMiss) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	v, found, err := decodeValue(it.Value, time.Now())
	if err == nil && !found {
		err = driver.ErrNotFound
	}
	return v, err
}

// Set implements driver.Store.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	it, err := b.valueItem(key, val, ttl)
	if err != nil {
		return err
	}
	return serverErr(do0(ctx, b, func() error { return b.c.Set(it) }))
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	err := do0(ctx, b, func() error { return b.c.Delete(b.item('v', key)) })
	if err != nil && !errors.Is(err, gomemcache.ErrCacheMiss) {
		return err
	}
	return nil
}
