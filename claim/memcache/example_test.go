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
	b, err := claim.Open(ctx, "memcache://127.0.0.1:11211?prefix=myapp")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	l, err := claim.Acquire(ctx, b, "report:42", 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	// ... compute the report, then store it fenced by the lease (not
	// atomically on memcached: see the package documentation) and wake
	// the waiters.
	if err := b.Commit(ctx, l, []byte("the report"), time.Hour); err != nil {
		fmt.Println(err)
	}
	_ = b.Release(ctx, l)
}

// New takes a client you configured yourself; the Backend does not close
// it.
func ExampleNew() {
	c := gomemcache.New("10.0.0.1:11211", "10.0.0.2:11211")
	c.Timeout = 200 * time.Millisecond
	c.MaxIdleConns = 64
	b, err := memcache.New(c, &memcache.Options{Prefix: "myapp", ItemSizeMax: 4 << 20})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	f := b.Features()
	fmt.Println(f.Notify, f.AtomicCommit, f.DurableFence, f.MinTTL, f.MaxValueLen)
	// Output: poll false false 1s 4193280
}
