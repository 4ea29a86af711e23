package etcd_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/etcd"
)

// Open a Client by URL: the blank import (or any import) of this package
// registers etcd:// and etcds://.
func Example_open() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "etcd://127.0.0.1:2379?prefix=myapp")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Run a job once per key fleet-wide: wait for the claim, keep it
	// alive while working, commit the result fenced by the lease.
	l, err := c.Acquire(ctx, "report:42", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	k := c.KeepAlive(ctx, l, nil)
	result := []byte("the report") // work under k.Context()
	if err := c.Commit(ctx, k.Stop(), result, time.Hour); err != nil {
		log.Print(err) // claim.ErrLost: someone else took over
	}
	if err := c.Release(ctx, l); err != nil {
		log.Print(err)
	}

	// The etcd client underneath, for what the portable API does not cover.
	var cli *clientv3.Client
	if c.As(&cli) {
		fmt.Println(cli.Endpoints())
	}
}

// New takes the caller's own etcd client, for TLS, auth and dial options
// that a URL cannot express. It does no I/O; closing the Client leaves the
// etcd client open.
func ExampleNew() {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{os.Getenv("ETCD_ENDPOINT")},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	c, err := etcd.New(cli, &etcd.Options{Prefix: "myapp", MinTTL: 2 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println(c.Features().TTLGranularity)
}
