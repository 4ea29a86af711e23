package zookeeper

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/driver"
)

// dirs are the directories under the root: locks, owners, values, topics,
// fair queues.
var dirs = []string{"l", "o", "v", "t", "q"}

// probeName is the node Ping creates and deletes in each directory: no
// encoded key (they start with '=' or '#') and no holder ID can be it.
const probeName = "~ping"

// Ping implements driver.Pinger. It waits for the session, authenticates
// it with the URL's credentials (once), then makes one multi-op that
// creates and deletes a node in each directory under the root and writes
// the clock node: ZooKeeper checks the ACLs the driver needs (CREATE and
// DELETE there, WRITE on clock) only when they are used, and a wrong
// digest password only shows then, as ErrNoAuth. A missing root is
// created first. The multi-op leaves nothing behind, but it is a write:
// it goes through the leader and its transaction log.
func (b *backend) Ping(ctx context.Context) error {
	if err := b.lockCheck(ctx); err != nil {
		return err
	}
	defer b.unlockCheck()
	return b.check(ctx)
}

// setup makes sure Ping's check passed once before a call goes on, so
// that the first call of a Client opened lazily authenticates the session
// first (a call made before would be anonymous) and reports a missing
// permission as such, whatever the call.
func (b *backend) setup(ctx context.Context) error {
	if b.ready.Load() {
		return nil
	}
	if err := b.lockCheck(ctx); err != nil {
		return err
	}
	defer b.unlockCheck()
	if b.ready.Load() {
		return nil
	}
	return b.check(ctx)
}

func (b *backend) lockCheck(ctx context.Context) error {
	select {
	case b.checkMu <- struct{}{}:
		return nil
	case <-ctx.Done():
		return b.classify(ctx.Err())
	case <-b.done:
		return driver.ErrClosed
	}
}

func (b *backend) unlockCheck() { <-b.checkMu }

// check is Ping's check; the caller holds checkMu.
func (b *backend) check(ctx context.Context) error {
	if b.auth != nil && !b.authed.Load() {
		err := b.do(ctx, func() error {
			if err := b.conn.AddAuth("digest", b.auth); err != nil {
				return err
			}
			b.authed.Store(true) // also when the call was abandoned meanwhile
			return nil
		})
		if err != nil {
			return fmt.Errorf("digest auth: %w", err)
		}
	}
	_, _, err := b.multi(ctx, b.probeOps()...)
	if errors.Is(err, zk.ErrNoNode) {
		if err = b.createRoot(ctx); err == nil {
			_, _, err = b.multi(ctx, b.probeOps()...)
		}
	}
	if err != nil {
		return fmt.Errorf("check root %s: %w", b.root, err)
	}
	b.ready.Store(true)
	return nil
}

// probeOps is Ping's multi-op (see Ping).
func (b *backend) probeOps() []any {
	var ops []any
	for _, d := range dirs {
		p := b.root + "/" + d + "/" + probeName
		ops = append(ops,
			&zk.CreateRequest{Path: p, Acl: b.acl, Flags: zk.FlagEphemeral},
			&zk.DeleteRequest{Path: p, Version: -1})
	}
	return append(ops, &zk.SetDataRequest{Path: b.root + "/clock", Version: -1})
}

// createRoot creates the root, its parents and its directories, those
// that do not exist.
func (b *backend) createRoot(ctx context.Context) error {
	var paths []string
	parts := strings.Split(strings.TrimPrefix(b.root, "/"), "/")
	for i := range parts {
		paths = append(paths, "/"+strings.Join(parts[:i+1], "/"))
	}
	for _, d := range append(dirs, "clock") {
		paths = append(paths, b.root+"/"+d)
	}
	return b.do(ctx, func() error {
		for _, p := range paths {
			if _, err := b.conn.Create(p, nil, 0, b.acl); err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return fmt.Errorf("create %s: %w", p, err)
			}
		}
		return nil
	})
}

// classify marks err as a configuration error (driver.Misconfigured, the
// zk error still underneath): the ACL refuses the session (zk.ErrNoAuth),
// authentication failed (zk.ErrAuthFailed), the driver's ACL cannot be
// set (zk.ErrInvalidACL: an auth ACL on a session without credentials),
// or, on a connection opened from a URL, every server of the last round
// answered the session handshake with something else than ZooKeeper does
// (dialer.alien): then whatever the call's error (no server, a timeout).
func (b *backend) classify(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, zk.ErrNoAuth), errors.Is(err, zk.ErrAuthFailed), errors.Is(err, zk.ErrInvalidACL):
		return driver.Misconfigured(err)
	}
	if b.own != nil {
		if alien := b.own.alien(); alien != nil {
			return driver.Misconfigured(fmt.Errorf("%w (%w)", alien, err))
		}
	}
	return err
}
