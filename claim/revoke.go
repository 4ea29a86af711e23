package claim

import (
	"context"
	"errors"
	"time"
)

// Revoke ends key's current lease, whoever holds it, deletes key's stored
// value and wakes every subscriber of the key in every process: the fenced
// invalidation. The revoked holder's Commit, CommitRelease, Extend and
// Release fail with ErrLost from then on (its KeepAlive reports the loss),
// so a value it computed from data older than the revocation can never be
// stored after Revoke returns; the next lease of the key gets a higher
// fencing token. A key without a lease has only its value deleted.
func (c *Client) Revoke(ctx context.Context, key string) error {
	if err := c.check(ctx, "revoke", key); err != nil {
		return err
	}
	return c.revoke(ctx, key, nil, 0)
}

// RevokeSet is Revoke that stores value under key for ttl (0: no expiry)
// instead of deleting it: a write that supersedes any holder computing the
// key, in one atomic step where the backend allows (the lease first
// otherwise, so a racing Commit is overwritten or refused). Value limits
// are checked before any I/O (ErrTooLarge).
func (c *Client) RevokeSet(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := c.check(ctx, "revoke", key); err != nil {
		return err
	}
	if value == nil {
		value = []byte{}
	}
	if err := c.checkValue("revoke", key, value, ttl); err != nil {
		return err
	}
	return c.revoke(ctx, key, value, ttl)
}

func (c *Client) revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	cl := c.begin(ctx, "revoke")
	if err := c.end(ctx, cl, c.d.Revoke(cl.ctx, key, value, ttl)); err != nil {
		return opError("revoke", key, err)
	}
	c.wakeLocal(key)
	return nil
}

// errDuplicateKey: a batch names one key twice.
var errDuplicateKey = errors.New("key given twice in one batch")
