package nats

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// maxStoreRounds bounds Set's and Delete's read-and-write rounds on a key
// whose record keeps changing under them.
const maxStoreRounds = 16

// Get implements driver.Store: one read of the key's record. A value past
// its expiry (by this client's clock) is reported absent; it stays in the
// record until the next write of the key replaces it.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, r, found, err := b.read(ctx, key)
	if err != nil {
		return nil, err
	}
	if v, ok := r.liveValue(time.Now()); found && ok {
		return v, nil
	}
	return nil, driver.ErrNotFound
}

// Set implements driver.Store: the key's record is read and written back
// with the new value, its lease (if any) unchanged, conditioned on the
// revision read (again if another write came in between).
func (b *backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return b.rewrite(ctx, key, func(r record) (record, bool) {
		r = r.withValue(value, ttl, time.Now())
		r.op = opSet
		return r, true
	})
}

// Delete implements driver.Store: as Set, with no value.
func (b *backend) Delete(ctx context.Context, key string) error {
	return b.rewrite(ctx, key, func(r record) (record, bool) {
		if !r.hasValue {
			return r, false
		}
		r.hasValue, r.value, r.valueExp, r.op = false, nil, 0, opSet
		return r, true
	})
}

// rewrite replaces key's record by what change makes of it (nothing if
// change says so), conditioned on the revision read.
func (b *backend) rewrite(ctx context.Context, key string, change func(record) (record, bool)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for range maxStoreRounds {
		rev, cur, _, err := b.read(ctx, key)
		if err != nil {
			return err
		}
		nr, write := change(cur)
		if !write {
			return nil
		}
		newRev, err := b.cas(ctx, key, nr, rev)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return err
		}
		if nr.held() {
			// The holder's cached record is out of date: refresh it if it
			// is this process's.
			b.mu.Lock()
			if h, ok := b.held[key]; ok && h.rec.token == nr.token {
				b.held[key] = heldRec{newRev, nr}
			}
			b.mu.Unlock()
		}
		return nil
	}
	return errors.New("record keeps changing (too many concurrent writers of one key)")
}

// sweepTimeout bounds Sweep's listing of the prefix.
const sweepTimeout = time.Minute

// Sweep deletes, under the prefix of c (a Client of this package), the
// records that hold nothing live (no lease, or one expired for longer
// than ClockSkew; no live queue entry; no value, or an expired one), and
// notify keys older than a minute: JetStream KV keeps every key's last
// entry for ever. Each deletion is conditioned on the revision read
// (KV Delete with its last revision), so a concurrent write survives;
// deleted keys leave a delete marker, which the bucket's PurgeDeletes
// (30 minutes old by default) removes. The fence does not depend on
// them: a later claim's revision is a later stream sequence. It lists
// the whole prefix (a watch of its initial values): run it now and then
// from one process. The listing is bounded by sweepTimeout, each delete
// by claim.DefaultOpTimeout, even if ctx is not. It returns how many keys
// it deleted.
func Sweep(ctx context.Context, c *claim.Client) (int, error) {
	b, ok := c.Driver().(*backend)
	if !ok {
		return 0, errors.New("nats: sweep: not a NATS client")
	}
	lctx, cancel := context.WithTimeout(ctx, sweepTimeout)
	defer cancel()
	kv, _, err := b.bucket(lctx)
	if err != nil {
		return 0, fmt.Errorf("nats: sweep: %w", err)
	}
	w, err := kv.Watch(lctx, b.o.Prefix+".>", jetstream.IgnoreDeletes())
	if err != nil {
		return 0, fmt.Errorf("nats: sweep: %w", b.classify(err))
	}
	defer w.Stop()
	type stale struct {
		key string
		rev uint64
	}
	var del []stale
	now := time.Now()
list:
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil {
				break list
			}
			switch {
			case strings.HasSuffix(e.Key(), ".n"):
				if now.Sub(e.Created()) > time.Minute {
					del = append(del, stale{e.Key(), e.Revision()})
				}
			case strings.HasSuffix(e.Key(), ".r"):
				r, ok := decodeRecord(e.Value(), e.Revision())
				_, live := r.liveValue(now)
				// A lease counts until its recorded expiry plus ClockSkew
				// (no sightings: deleting a record is never urgent).
				held := r.held() && now.Before(time.UnixMilli(r.leaseExp).Add(b.o.ClockSkew))
				if ok && !live && !held && len(b.pruned(r.queue, now)) == 0 {
					del = append(del, stale{e.Key(), e.Revision()})
				}
			}
		case <-lctx.Done():
			return 0, fmt.Errorf("nats: sweep: listing %q: %w", b.o.Prefix, lctx.Err())
		}
	}
	n := 0
	for _, s := range del {
		dctx, cancel := context.WithTimeout(ctx, claim.DefaultOpTimeout)
		err := kv.Delete(dctx, s.key, jetstream.LastRevision(s.rev))
		cancel()
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			n++
		case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
			// Written since it was listed: kept.
		default:
			return n, fmt.Errorf("nats: sweep: %w", b.classify(err))
		}
	}
	return n, nil
}
