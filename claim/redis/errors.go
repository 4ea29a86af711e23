package redis

import (
	"context"
	"errors"
	"strings"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// configReplies start the Redis error replies that waiting will not fix,
// and configInScript are found in a script's error reply, which Redis
// before 7.0 wraps ("ERR Error running script (call to f_...): ...").
var (
	configReplies = [...]string{
		"NOAUTH ",                      // no password, and the server wants one
		"WRONGPASS ",                   // a wrong password, or a disabled user
		"NOPERM ",                      // an ACL user without a command, key or channel
		"ERR unknown command",          // a command this server lacks: too old, or renamed away
		"ERR DB index is out of range", // the URL's /DB
		"ERR SELECT is not allowed in cluster mode",                  // a /DB on a cluster node
		"ERR This instance has cluster support disabled",             // cluster=true at a standalone server
		"ERR AUTH <password> called without any password configured", // a password for a server without one
	}
	configInScript = [...]string{
		"Unknown Redis command called from",   // a command the server lacks, from a script
		"The user executing the script can't", // an ACL refusal in a script (Redis 7.0 and before)
		"ACL failure in script",               // the same (Redis 7.2 and later)
	}
)

// classify returns err wrapped with driver.Misconfigured when it is a
// configuration error (see isConfig), else err unchanged.
func classify(err error) error {
	if err != nil && isConfig(err) {
		return driver.Misconfigured(err)
	}
	return err
}

// isConfig reports whether err is one that waiting will not fix:
// authentication (NOAUTH, WRONGPASS), authorization (NOPERM, and ACL
// refusals inside a script), a command the server lacks, a database the
// server does not have, a cluster client at a standalone server, a server
// of another kind at the address (go-redis cannot parse its reply), or a
// TLS handshake refused for its certificates or versions. READONLY is not
// among them: in a call it means a failover is under way (Ping alone
// treats it as a configuration error).
func isConfig(err error) bool {
	if goredis.IsAuthError(err) || goredis.IsPermissionError(err) {
		return true
	}
	var re goredis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		for _, p := range configReplies {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		for _, p := range configInScript {
			if strings.Contains(msg, p) {
				return true
			}
		}
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	// go-redis's reader names a reply that is not RESP so; its errors
	// carry no type.
	if msg := err.Error(); strings.Contains(msg, "redis: invalid reply") || strings.Contains(msg, "redis: can't parse") {
		return true
	}
	return driver.TLSRefused(err)
}
