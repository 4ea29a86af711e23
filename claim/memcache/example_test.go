package memcache_test

import (
	"fmt"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/memcache"
)

// New takes a client you configured yourself; closing the Client does
// not close it, and As hands it back. New checks the servers (a version
// command to each) unless the Client is lazy, as here, where the servers
// are only examples. By URL instead, the blank import of this package is
// enough for claim.Open, which checks them too (lazy=true skips that):
//
//	memcache://10.0.0.1:11211,10.0.0.2:11211?prefix=myapp&maxvalue=4193280&io_timeout=200ms
//
// The portable API is shown in package claim's examples.
func ExampleNew() {
	mc := gomemcache.New("10.0.0.1:11211", "10.0.0.2:11211")
	mc.Timeout = 200 * time.Millisecond
	mc.MaxIdleConns = 64
	c, err := memcache.New(mc, &memcache.Options{Prefix: "myapp", ItemSizeMax: 4 << 20, Client: &claim.Options{Lazy: true}})
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
