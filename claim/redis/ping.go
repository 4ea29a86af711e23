package redis

import (
	"context"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// pingScript exercises, on names no key maps to (their hash tag is
// neither "=..." nor "#..."), what every lease operation needs: a read and
// a write of a key under the prefix (DEL of a key nobody writes: a no-op,
// refused by a read-only replica or a read-only ACL user) and a publish on
// a channel under it, all from a script.
var pingScript = goredis.NewScript(`
redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
redis.call(ARGV[1], ARGV[2], 'ping')
return 1`)

// Ping implements driver.Pinger, in one round trip after go-redis's
// connection set-up (which authenticates with HELLO, or AUTH, and selects
// the database): an EVAL of pingScript. It fails with an error wrapping
// ErrConfig on a wrong or missing password (WRONGPASS, NOAUTH), an ACL
// user without the commands, keys or channels the driver uses (NOPERM,
// and ACL refusals in scripts), a server without Lua scripting or, on a
// cluster, without sharded pub/sub (ERR unknown command), a database
// number the server does not have, a cluster URL at a standalone server,
// a read-only replica (READONLY), and a server of another kind (a reply
// go-redis cannot parse) or a TLS handshake refused. On a cluster it
// checks the master of its own slot; the others are met on first use.
func (b *backend) Ping(ctx context.Context) error {
	_, err := call(b, ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, pingScript.Eval(ctx, b.rdb, []string{b.opt.Prefix + ":{ping}:lock"},
			b.publishCmd(), b.opt.Prefix+":{ping}:ch").Err()
	})
	if goredis.IsReadOnlyError(err) {
		// A replica at the address: it will not take a write by itself.
		// (In other calls READONLY is a failover under way.)
		return driver.Misconfigured(err)
	}
	return err
}
