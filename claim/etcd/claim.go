package etcd

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/driver"
)

// tryClaim is the driver's claim (driver.ClaimFunc): a lease grant, then
// one transaction; with read, the transaction also gets the value key, so
// the value is read at the claim's revision.
func (b *backend) tryClaim(ctx context.Context, key, holder string, ttl time.Duration, read bool) (driver.Lease, []byte, bool, error) {
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	g, err := cli.Grant(ctx, b.leaseSeconds(ttl))
	if err != nil {
		return driver.Lease{}, nil, false, b.fail(ctx, err)
	}
	lk := b.lockKey(key)
	then := []clientv3.Op{clientv3.OpPut(lk, holder, clientv3.WithLease(g.ID))}
	if read {
		then = append(then, clientv3.OpGet(b.valueKey(key)))
	}
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(lk), "=", 0)).
		Then(then...).
		Else(clientv3.OpGet(lk)).
		Commit()
	if err != nil {
		b.revokeLater(g.ID)
		return driver.Lease{}, nil, false, b.fail(ctx, err)
	}
	if !resp.Succeeded {
		b.revokeLater(g.ID)
		held := &driver.HeldError{}
		if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != 0 {
			held.Remaining = remaining(ctx, cli, clientv3.LeaseID(kvs[0].Lease))
		}
		return driver.Lease{}, nil, false, held
	}
	l := driver.Lease{
		Key:    key,
		Holder: holder,
		Token:  uint64(resp.Header.Revision), // the lock key's CreateRevision
		TTL:    time.Duration(g.TTL) * time.Second,
		Handle: handle(g.ID),
	}
	if !read {
		return l, nil, false, nil
	}
	v, err := decodeValue(resp.Responses[1].GetResponseRange().GetKvs(), time.Now())
	switch {
	case err == nil:
		return l, v, true, nil
	case errors.Is(err, driver.ErrNotFound):
		return l, nil, false, nil
	}
	// The caller gets no lease: give it back (best effort).
	_ = b.Release(ctx, l)
	return driver.Lease{}, nil, false, err
}

// remaining asks how long the holder's lease has left. etcd truncates it to
// whole seconds, so the upper end of that second is returned; 0 if the
// lease is gone (its key is being deleted) or the call fails.
func remaining(ctx context.Context, cli *clientv3.Client, id clientv3.LeaseID) time.Duration {
	r, err := cli.TimeToLive(ctx, id)
	if err != nil || r.TTL < 0 {
		return 0
	}
	return time.Duration(r.TTL+1) * time.Second
}

func handle(id clientv3.LeaseID) string { return strconv.FormatInt(int64(id), 16) }

// sharedPrefix marks the handle of a lease whose etcd lease holds the lock
// keys of every key of one TryClaimMany: renewing or revoking that etcd
// lease would renew or end the other keys' claims too.
const sharedPrefix = "shared:"

func sharedHandle(id clientv3.LeaseID) string { return sharedPrefix + handle(id) }

// parseHandle returns the etcd lease ID in l.Handle if it is the claim's
// own, or 0 if it holds none or a shared one: the lease is then judged by
// its token and holder alone (Extend moves the lock key to a lease of its
// own, Release revokes nothing).
func parseHandle(l driver.Lease) clientv3.LeaseID {
	id, err := strconv.ParseInt(l.Handle, 16, 64)
	if err != nil {
		return 0
	}
	return clientv3.LeaseID(id)
}

// sharedLease returns the shared etcd lease in l.Handle, or 0 if it names
// none.
func sharedLease(l driver.Lease) clientv3.LeaseID {
	h, ok := strings.CutPrefix(l.Handle, sharedPrefix)
	if !ok {
		return 0
	}
	return parseHandle(driver.Lease{Handle: h})
}

// owned compares the lock key with the lease's token and holder.
func owned(lk string, l driver.Lease) []clientv3.Cmp {
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(lk), "=", int64(l.Token)),
		clientv3.Compare(clientv3.Value(lk), "=", l.Holder),
	}
}

// Extend implements driver.Claimer (the two paths: see the package doc).
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	id := parseHandle(l)
	cli, err := b.client(ctx)
	if err != nil {
		return driver.Lease{}, err
	}
	sec := b.leaseSeconds(ttl)
	lk := b.lockKey(l.Key)
	if id != 0 && time.Duration(sec)*time.Second == l.TTL {
		ka, err := cli.KeepAliveOnce(ctx, id)
		switch {
		case err == nil:
			g, err := cli.Get(ctx, lk)
			if err != nil {
				return driver.Lease{}, b.fail(ctx, err)
			}
			if len(g.Kvs) == 1 && uint64(g.Kvs[0].CreateRevision) == l.Token &&
				string(g.Kvs[0].Value) == l.Holder && g.Kvs[0].Lease == int64(id) {
				l.TTL = time.Duration(ka.TTL) * time.Second
				return l, nil
			}
			// Not on this lease any more: judged by token below.
		case errors.Is(err, rpctypes.ErrLeaseNotFound):
			// Judged by token below.
		default:
			return driver.Lease{}, b.fail(ctx, err)
		}
		if l.Expired(time.Now()) {
			return driver.Lease{}, fmt.Errorf("%w (local deadline passed)", driver.ErrLost)
		}
	}
	g, err := cli.Grant(ctx, sec)
	if err != nil {
		return driver.Lease{}, b.fail(ctx, err)
	}
	resp, err := cli.Txn(ctx).If(owned(lk, l)...).
		Then(clientv3.OpGet(lk), clientv3.OpPut(lk, l.Holder, clientv3.WithLease(g.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		b.revokeLater(g.ID)
		if err != nil {
			return driver.Lease{}, b.fail(ctx, err)
		}
		return driver.Lease{}, driver.ErrLost
	}
	// The lease the lock key was on is detached now: revoking it deletes
	// nothing, unless it is a batch's shared lease, which other keys'
	// claims may still be on (it expires by its TTL).
	if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) == 1 && kvs[0].Lease != int64(g.ID) &&
		kvs[0].Lease != int64(sharedLease(l)) {
		b.revokeLater(clientv3.LeaseID(kvs[0].Lease))
	}
	l.TTL = time.Duration(g.TTL) * time.Second
	l.Handle = handle(g.ID)
	return l, nil
}

// Release implements driver.Claimer: the fenced transaction deletes the
// lock key, which the key's watchers see.
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	return b.commit(ctx, l, nil, 0, false, true)
}

// commit runs the transaction fenced by l's token and holder: put the
// value (write), delete the lock key (release), or both. A release revokes
// l's etcd lease, attached to nothing then, in the background.
func (b *backend) commit(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration, write, release bool) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	lk := b.lockKey(l.Key)
	var then []clientv3.Op
	gc := clientv3.NoLease
	if write {
		put, lease, err := b.putValue(ctx, cli, l.Key, value, ttl)
		if err != nil {
			return b.fail(ctx, err)
		}
		then, gc = append(then, put), lease
	}
	if release {
		then = append(then, clientv3.OpDelete(lk))
	}
	resp, err := cli.Txn(ctx).If(owned(lk, l)...).Then(then...).Commit()
	if err != nil {
		return b.putFailed(ctx, err, gc)
	}
	if !resp.Succeeded {
		// A stale lease is expired or was revoked by its own Release; a
		// forged one may name the current holder's lease: revoke nothing.
		return driver.ErrLost
	}
	if id := parseHandle(l); release && id != 0 {
		b.revokeLater(id)
	}
	return nil
}

// Revoke implements driver.Claimer in one transaction that always
// applies, so the lease ends and the value changes in one atomic step: the
// lock key is deleted if it exists (its watchers wake), else the notify
// key is put (so they wake all the same), and the value key is put or
// deleted. Every
// later Extend, Commit, Release or CommitRelease of the revoked lease
// compares the lock key, which is gone or another claim's, and fails
// (ErrLost). The token was the lock key's CreateRevision; the next claim
// creates it at a later revision, so the fence only rises. The revoked
// claim's etcd lease is left to expire by its TTL rather than revoked
// (one raft write saved): no key is on it any more, except the other
// keys' claims of a batch that shared it.
func (b *backend) Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	vk := clientv3.OpDelete(b.valueKey(key))
	gc := clientv3.NoLease
	if value != nil {
		if vk, gc, err = b.putValue(ctx, cli, key, value, ttl); err != nil {
			return b.fail(ctx, err)
		}
	}
	ngc, err := b.gcLease(ctx, cli, time.Now(), notifyTTL)
	if err != nil {
		return b.fail(ctx, err)
	}
	lk := b.lockKey(key)
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(lk), ">", 0)).
		Then(clientv3.OpDelete(lk), vk).
		Else(clientv3.OpPut(lk+notifySuffix, "", clientv3.WithLease(ngc)), vk).
		Commit()
	return b.putFailed(ctx, err, gc, ngc)
}
