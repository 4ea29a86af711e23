package etcd

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// pingKey is the key Ping reads, under the prefix: no key maps to it
// (encoded keys follow "/c/", "/v/" or "/t/").
const pingKey = "/ping"

// Ping implements driver.Pinger: it connects first if the client was
// opened lazily (clientv3.New, which authenticates when the URL has a
// user), then makes one linearizable read of a key under the prefix
// (count only), which needs a leader, a valid token and read access to
// the prefix. It fails with an error wrapping ErrConfig on a wrong user
// name or password, a user without read permission on the prefix, a
// token the server no longer accepts, or a server that is not etcd (one
// that does not speak gRPC, or lacks etcd's KV service). Write access is
// not checked: a user that can only read meets ErrConfig at its first
// claim.
func (b *backend) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cli, err := b.client(ctx)
	if err != nil {
		return err
	}
	gctx, release := b.kind.guard(ctx)
	defer release()
	_, err = cli.Get(gctx, b.prefix+pingKey, clientv3.WithCountOnly())
	return b.fail(ctx, err)
}
