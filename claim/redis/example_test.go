package redis_test

import (
	"crypto/tls"
	"fmt"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
)

// New takes the caller's own client: TLS, ACL users, Sentinel, pools.
// It checks the server first (a wrong password or a missing ACL
// permission is claim.ErrConfig, no answer within the operation timeout
// claim.ErrUnavailable), unless Options.Client.Lazy, as here, where no
// server runs. Closing the Client leaves the go-redis client open unless
// CloseClient is set; As gives it back. By URL instead, importing this
// package registers redis:// and rediss:// for claim.Open, which checks
// the server the same way unless lazy=true (its errors never show the
// password):
//
//	redis://:secret@127.0.0.1:6379/0?prefix=myapp&pool_size=20&maxvalue=67108864&op_timeout=2s
//
// The portable API is shown in package claim's examples.
func ExampleNew() {
	rdb := goredis.NewClient(&goredis.Options{
		Addr:                  "redis.internal:6380",
		Username:              "app",
		Password:              "secret",
		TLSConfig:             &tls.Config{MinVersion: tls.VersionTLS12},
		MaxRetries:            -1, // one attempt per call
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
	})
	defer rdb.Close()
	c, err := redis.New(rdb, &redis.Options{Prefix: "myapp", MaxValueLen: 64 << 20,
		Client: &claim.Options{Lazy: true}})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	var native *goredis.Client
	fmt.Println(c.Features().MaxValueLen, c.As(&native) && native == rdb)
	// Output: 67108864 true
}

// On Redis Cluster (7 or later) every name of a key shares one hash slot
// and wake-ups use sharded pub/sub (SPUBLISH/SSUBSCRIBE), so a release
// reaches only the key's shard.
func ExampleNew_cluster() {
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs:                 []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"},
		MaxRetries:            -1,
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
	})
	c, err := redis.New(rdb, &redis.Options{CloseClient: true, Client: &claim.Options{Lazy: true}})
	if err != nil {
		rdb.Close() // a failed New leaves it open
		fmt.Println(err)
		return
	}
	defer c.Close()
	var cc *goredis.ClusterClient
	fmt.Println(c.As(&cc) && cc == rdb)
	// Output: true
}
