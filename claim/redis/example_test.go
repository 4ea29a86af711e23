package redis_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"log"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/redis"
)

// Open a Client by URL: importing this package registers redis:// and
// rediss://.
func Example_open() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "redis://:secret@127.0.0.1:6379/0?prefix=myapp&pool_size=20")
	if err != nil {
		log.Fatal(err) // never shows the password
	}
	defer c.Close()

	// Run a job once per key fleet-wide: wait for the claim (woken by the
	// holder's release through pub/sub), keep it alive while working,
	// commit the result fenced by the lease and release, in one script.
	l, err := c.Acquire(ctx, "report:42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	k := c.KeepAlive(ctx, l, nil)
	result := []byte("the report") // work under k.Context()
	if err := c.CommitRelease(ctx, k.Stop(), result, time.Hour); err != nil {
		log.Print(err) // claim.ErrLost: someone else took over
	}
}

// New takes the caller's own client: TLS, ACL users, Sentinel, pools.
// Closing the Client leaves the go-redis client open unless CloseClient is
// set; As gives it back.
func ExampleNew() {
	rdb := goredis.NewClient(&goredis.Options{
		Addr:       "redis.internal:6380",
		Username:   "app",
		Password:   "secret",
		TLSConfig:  &tls.Config{MinVersion: tls.VersionTLS12},
		MaxRetries: -1, // one attempt per call
	})
	defer rdb.Close()
	c, err := redis.New(rdb, &redis.Options{Prefix: "myapp", MaxValueLen: 64 << 20})
	if err != nil {
		log.Fatal(err)
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
		Addrs:      []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"},
		MaxRetries: -1,
	})
	c, err := redis.New(rdb, &redis.Options{CloseClient: true})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
}

// A waiter subscribes before it checks, so a release between the check
// and the wait is never lost.
func Example_subscribe() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "redis://127.0.0.1:6379/0")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	sub, err := c.Subscribe(ctx, "report:42") // returns once SUBSCRIBE is confirmed
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	for {
		if v, err := c.Get(ctx, "report:42"); err == nil {
			fmt.Printf("%s\n", v)
			return
		}
		if _, ok := <-sub.C(); !ok { // released, notified or reconnected: check again
			return // client closed
		}
	}
}
