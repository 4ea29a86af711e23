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

// Open a Backend by URL: importing this package registers redis:// and
// rediss://.
func Example_open() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "redis://:secret@127.0.0.1:6379/0?prefix=myapp&pool_size=20")
	if err != nil {
		log.Fatal(err) // never shows the password
	}
	defer b.Close()

	// Run a job once per key fleet-wide: wait for the claim (woken by the
	// holder's release through pub/sub), keep it alive while working,
	// commit the result fenced by the lease, release.
	l, err := claim.Acquire(ctx, b, "report:42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	k := claim.KeepAlive(ctx, b, l, nil)
	result := []byte("the report") // work under k.Context()
	if err := b.Commit(ctx, k.Stop(), result, time.Hour); err != nil {
		log.Print(err) // claim.ErrLost: someone else took over
	}
	if err := b.Release(ctx, l); err != nil {
		log.Print(err)
	}
}

// New takes the caller's own client: TLS, ACL users, Sentinel, pools.
// Closing the Backend leaves the client open unless CloseClient is set.
func ExampleNew() {
	rdb := goredis.NewClient(&goredis.Options{
		Addr:       "redis.internal:6380",
		Username:   "app",
		Password:   "secret",
		TLSConfig:  &tls.Config{MinVersion: tls.VersionTLS12},
		MaxRetries: -1, // one attempt per call
	})
	defer rdb.Close()
	b, err := redis.New(rdb, &redis.Options{Prefix: "myapp", MaxValueLen: 64 << 20})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(b.Features().MaxValueLen)
}

// On Redis Cluster (7 or later) every name of a key shares one hash slot
// and wake-ups use sharded pub/sub (SPUBLISH/SSUBSCRIBE), so a release
// reaches only the key's shard.
func ExampleNew_cluster() {
	rdb := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs:      []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"},
		MaxRetries: -1,
	})
	b, err := redis.New(rdb, &redis.Options{CloseClient: true})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
}

// A waiter subscribes before it checks, so a release between the check
// and the wait is never lost.
func ExampleBackend_Subscribe() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "redis://127.0.0.1:6379/0")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	sub, err := b.Subscribe(ctx, "report:42") // returns once SUBSCRIBE is confirmed
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Close()
	for {
		if v, err := b.Get(ctx, "report:42"); err == nil {
			fmt.Printf("%s\n", v)
			return
		}
		if _, ok := <-sub.C(); !ok { // released, notified or reconnected: check again
			return // backend closed
		}
	}
}
