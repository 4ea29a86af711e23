package redis_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
)

// reply is a Redis error reply, as go-redis returns one.
type reply string

func (r reply) Error() string { return string(r) }
func (reply) RedisError()     {}

// TestClassify: the replies of Redis versions and set-ups the tests do
// not run (7.2's and 6's script errors, a cluster before Redis 7) are
// sorted as the ones they do run; the native error stays underneath.
func TestClassify(t *testing.T) {
	config := []error{
		reply("NOAUTH Authentication required."),
		fmt.Errorf("failed to authenticate: %w", reply("WRONGPASS invalid username-password pair or user is disabled.")),
		reply("NOPERM User app has no permissions to run the 'evalsha' command"),
		reply("ERR ACL failure in script: User app has no permissions to run the 'del' command script: 8a2f, on @user_script:3."),
		reply("ERR The user executing the script can't run this command or subcommand script: 104a, on @user_script:1."),
		reply("ERR Error running script (call to f_ab12): @user_script:1: @user_script: 1: The user executing the script can't run this command or subcommand"),
		reply("ERR Error running script (call to f_ab12): @user_script:1: @user_script: 1: Unknown Redis command called from Lua script"),
		reply("ERR unknown command `SPUBLISH`, with args beginning with: `stampede:{=k}:ch`, `release`, "),
		fmt.Errorf("failed to initialize connection options: %w", reply("ERR DB index is out of range")),
		reply("ERR SELECT is not allowed in cluster mode"),
		reply("ERR This instance has cluster support disabled"),
		errors.New(`redis: can't parse map reply: "HTTP/1.1 400 Bad Request"`),
		errors.New(`redis: invalid reply: "SSH-2.0-OpenSSH_9.2"`),
		x509.UnknownAuthorityError{},
		&tls.CertificateVerificationError{Err: x509.HostnameError{}},
		tls.RecordHeaderError{Msg: "first record does not look like a TLS handshake"},
		&net.OpError{Op: "remote error", Err: errors.New("tls: certificate required")},
	}
	unavailable := []error{
		reply("READONLY You can't write against a read only replica."),
		reply("LOADING Redis is loading the dataset in memory"),
		reply("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
		reply("CLUSTERDOWN The cluster is down"),
		reply("NOREPLICAS Not enough good replicas to write."),
		reply("OOM command not allowed when used memory > 'maxmemory'."),
		reply("ERR max number of clients reached"),
		io.EOF,
		context.DeadlineExceeded,
		&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED},
		&net.OpError{Op: "read", Err: syscall.ECONNRESET},
	}
	for _, err := range config {
		got := redis.ClassifyForTest(err)
		if !errors.Is(got, claim.ErrConfig) {
			t.Errorf("%v: not ErrConfig", err)
		}
		if !errors.Is(got, err) {
			t.Errorf("%v: the native error is not underneath", err)
		}
		var re goredis.Error
		if errors.As(err, &re) && !errors.As(got, &re) {
			t.Errorf("%v: errors.As(goredis.Error) fails once classified", err)
		}
	}
	for _, err := range unavailable {
		if got := redis.ClassifyForTest(err); got != err {
			t.Errorf("%v: classified %v, want it unchanged (the Client makes it ErrUnavailable)", err, got)
		}
	}
}
