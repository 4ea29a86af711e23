package etcd

import (
	"context"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

// putValue returns the put of an encoded value: a version byte, the expiry
// (Unix nanoseconds, 0: none), the bytes; attached to the shared lease of
// its TTL class, if any, whose ID it also returns.
func (b *backend) putValue(ctx context.Context, cli *clientv3.Client, key string, value []byte, ttl time.Duration) (clientv3.Op, clientv3.LeaseID, error) {
	buf := make([]byte, valueHeader, valueHeader+len(value))
	buf[0] = 1
	gc := clientv3.NoLease
	if ttl > 0 {
		now := time.Now()
		binary.BigEndian.PutUint64(buf[1:], uint64(now.Add(ttl).UnixNano()))
		var err error
		if gc, err = b.gcLease(ctx, cli, now, ttl); err != nil {
			return clientv3.Op{}, 0, err
		}
	}
	buf = append(buf, value...)
	return clientv3.OpPut(b.valueKey(key), string(buf), clientv3.WithLease(gc)), gc, nil
}

// decodeValue returns the bytes of the value in kvs (a get of a value
// key), or ErrNotFound if there is none or it has expired at now.
func decodeValue(kvs []*mvccpb.KeyValue, now time.Time) ([]byte, error) {
	if len(kvs) == 0 {
		return nil, driver.ErrNotFound
	}
	raw := kvs[0].Value
	if len(raw) < valueHeader || raw[0] != 1 {
		return nil, errors.New("malformed value (not written by this package?)")
	}
	if exp := int64(binary.BigEndian.Uint64(raw[1:])); exp != 0 && now.UnixNano() >= exp {
		return nil, driver.ErrNotFound
	}
	return raw[valueHeader:], nil
}

type gcLease struct {
	id    clientv3.LeaseID
	until time.Time // the lease lives at least until then
}

// gcLease returns a lease that outlives now+ttl, shared by the values of
// one TTL class (the next power of two seconds): the class's lease is
// granted for twice the class, so one grant serves at least a class's
// worth of writes. Values live on the server at most about twice their TTL.
func (b *backend) gcLease(ctx context.Context, cli *clientv3.Client, now time.Time, ttl time.Duration) (clientv3.LeaseID, error) {
	class := int64(1)
	for class < ceilSeconds(ttl) {
		class <<= 1
	}
	if class > 1<<30 { // ~34 years: not worth a lease
		return clientv3.NoLease, nil
	}
	exp := now.Add(ttl)
	b.gcMu.Lock()
	g, ok := b.gc[class]
	b.gcMu.Unlock()
	if ok && !exp.After(g.until) {
		return g.id, nil
	}
	start := time.Now()
	r, err := cli.Grant(ctx, 2*class)
	if err != nil {
		return 0, err
	}
	g = gcLease{id: r.ID, until: start.Add(time.Duration(r.TTL) * time.Second)}
	b.gcMu.Lock()
	if cur, ok := b.gc[class]; !ok || cur.until.Before(g.until) {
		b.gc[class] = g
	}
	b.gcMu.Unlock()
	return g.id, nil
}

// putFailed returns b.fail(ctx, err) for a write, first forgetting the
// shared leases it used (gcs) if the server no longer knows one of them:
// etcd does not say which.
func (b *backend) putFailed(ctx context.Context, err error, gcs ...clientv3.LeaseID) error {
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		b.gcMu.Lock()
		for c, g := range b.gc {
			if slices.Contains(gcs, g.id) {
				delete(b.gc, c)
			}
		}
		b.gcMu.Unlock()
	}
	return b.fail(ctx, err)
}

// Get implements driver.Store.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return nil, err
	}
	r, err := cli.Get(ctx, b.valueKey(key))
	if err != nil {
		return nil, b.fail(ctx, err)
	}
	return decodeValue(r.Kvs, time.Now())
}

// Set implements driver.Store.
func (b *backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	put, gc, err := b.putValue(ctx, cli, key, value, ttl)
	if err != nil {
		return b.fail(ctx, err)
	}
	_, err = cli.Do(ctx, put)
	return b.putFailed(ctx, err, gc)
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	_, err = cli.Delete(ctx, b.valueKey(key))
	return b.fail(ctx, err)
}
