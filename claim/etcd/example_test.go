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

// Open a Backend by URL: the blank import (or any import) of this package
// registers etcd:// and etcds://.
func Example_open() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "etcd://127.0.0.1:2379/myapp")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()

	// Run a job once per key fleet-wide: wait for the claim, keep it
	// alive while working, commit the result fenced by the lease.
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

// New takes the caller's own client, for TLS, auth and dial options that
// a URL cannot express. Closing the Backend leaves the client open.
func ExampleNew() {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{os.Getenv("ETCD_ENDPOINT")},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	b, err := etcd.New(cli, &etcd.Options{Prefix: "myapp", MinTTL: 2 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(b.Features().TTLGranularity)
}
