package memcache_test

import (
	"context"
	"fmt"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memcache"
)

// Open by URL: the blank import of the package is enough for claim.Open.
func Example() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "memcache://127.0.0.1:11211?prefix=myapp")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	l, err := c.Acquire(ctx, "report:42", 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	// Renew the lease while the report is computed; work under
	// k.Context() stops if the lease is lost.
	k := c.KeepAlive(ctx, l, nil)
	report := []byte("the report") // ... computed under k.Context()
	// Store it fenced by the lease (not atomically on memcached: see the
	// package documentation), release, and wake the waiters.
	if err := c.CommitRelease(ctx, k.Stop(), report, time.Hour); err != nil {
		fmt.Println(err)
	}
}

// New takes a client you configured yourself; closing the Client does
// not close it.
func ExampleNew() {
	mc := gomemcache.New("10.0.0.1:11211", "10.0.0.2:11211")
	mc.Timeout = 200 * time.Millisecond
	mc.MaxIdleConns = 64
	c, err := memcache.New(mc, &memcache.Options{Prefix: "myapp", ItemSizeMax: 4 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	f := c.Features()
	fmt.Println(f.Notify, f.AtomicCommit, f.DurableFence, f.MinTTL, f.MaxValueLen)
	var native *gomemcache.Client
	fmt.Println(c.As(&native) && native == mc)
	// Output:
	// poll false false 1s 4193280
	// true
}
