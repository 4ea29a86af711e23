package consul

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

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
		binary.BigEndian.PutUint64(out[1:headerLen], uint64(ceilMs(now.Add(ttl))))
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

// Get implements driver.Store. A value read after its expiry is reported
// absent and deleted (compare-and-delete, so a newer Set survives).
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, meta, err := b.kv.Get(b.valueKey(key), qo(ctx))
	if err == nil {
		err = indexed(meta)
	}
	if err != nil {
		return nil, classify(err)
	}
	if p == nil {
		return nil, driver.ErrNotFound
	}
	v, expired, ok := decodeValue(p.Value, time.Now())
	if !ok {
		return nil, fmt.Errorf("malformed stored value (%d bytes)", len(p.Value))
	}
	if expired {
		_, _, _ = b.kv.DeleteCAS(&capi.KVPair{Key: p.Key, ModifyIndex: p.ModifyIndex}, wo(ctx))
		return nil, driver.ErrNotFound
	}
	return v, nil
}

// Set implements driver.Store.
func (b *backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.write(ctx, kvOp(capi.KVSet, b.valueKey(key), 0, encodeValue(value, ttl, time.Now())))
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.write(ctx, kvOp(capi.KVDelete, b.valueKey(key), 0, nil))
}

// sweepListTimeout bounds Sweep's list of the whole prefix.
const sweepListTimeout = time.Minute

// Sweep deletes what expired under the prefix of c, a Client of this
// package: stored values past their TTL, lease records expired for longer
// than ClockSkew (crashed holders'), fair queues whose every entry has
// expired (plus ClockSkew), and notify keys older than a minute,
// which Consul KV (no TTL of its own) otherwise keeps. It lists the whole
// prefix: run it now and then from one process, not from every instance.
// Each deletion is a compare-and-delete on the index read, so a concurrent
// write survives. Each request is bounded even if ctx is not: the list by
// sweepListTimeout, each delete by claim.DefaultOpTimeout. It returns how
// many keys it deleted.
func Sweep(ctx context.Context, c *claim.Client) (int, error) {
	b, ok := c.Driver().(*backend)
	if !ok {
		return 0, errors.New("consul: sweep: not a Consul client")
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return 0, fmt.Errorf("consul: sweep: %w", driver.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	lctx, cancel := context.WithTimeout(ctx, sweepListTimeout)
	pairs, meta, err := b.kv.List(b.prefix+"/", qo(lctx))
	cancel()
	if err == nil {
		err = indexed(meta)
	}
	if err != nil {
		return 0, fmt.Errorf("consul: sweep: %w", classify(err))
	}
	now := time.Now()
	n := 0
	for _, p := range pairs {
		rest := strings.TrimPrefix(p.Key, b.prefix+"/")
		var stale bool
		switch {
		case strings.HasPrefix(rest, "v/"):
			_, expired, ok := decodeValue(p.Value, now)
			stale = ok && expired
		case strings.HasPrefix(rest, "q/"):
			// A fair queue whose every entry has expired.
			var q []entry
			stale = json.Unmarshal(p.Value, &q) == nil && !slices.ContainsFunc(q, func(e entry) bool { return b.live(e, now) })
		case strings.HasSuffix(rest, "/lock"):
			r, ok := parseRecord(p.Value)
			stale = ok && now.After(time.UnixMilli(r.Expiry).Add(b.o.ClockSkew))
		case strings.HasSuffix(rest, "/notify"):
			t, _, _ := strings.Cut(string(p.Value), " ")
			ms, err := strconv.ParseInt(t, 10, 64)
			stale = err == nil && now.Sub(time.UnixMilli(ms)) > time.Minute
		}
		if !stale {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, claim.DefaultOpTimeout)
		ok, _, err := b.kv.DeleteCAS(&capi.KVPair{Key: p.Key, ModifyIndex: p.ModifyIndex}, wo(dctx))
		cancel()
		if err != nil {
			return n, fmt.Errorf("consul: sweep: %w", classify(err))
		}
		if ok {
			n++
		}
	}
	return n, nil
}
