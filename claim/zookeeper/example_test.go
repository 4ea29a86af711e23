package zookeeper_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/zookeeper"
)

// Open a Backend by URL: importing this package registers zookeeper://.
// Several servers are separated by commas; the path is a chroot under
// which the backend keeps its nodes (here /myapp/stampede).
func Example_open() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "zookeeper://zk1:2181,zk2:2181,zk3:2181/myapp")
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

// Digest authentication: the credentials go into the session, and nodes
// are then created accessible to that user only. The password never shows
// in errors.
func Example_auth() {
	b, err := claim.Open(context.Background(), "zookeeper://app:s3cret@zk1:2181/myapp?session=20s")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
}

// New takes the caller's own connection, for dialers, host providers and
// auth schemes a URL cannot express. Closing the Backend leaves the
// connection, and so the session and its leases, open.
func ExampleNew() {
	conn, _, err := zk.Connect([]string{"zk1:2181"}, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	b, err := zookeeper.New(conn, &zookeeper.Options{
		Prefix: "myapp/stampede",
		ACL:    zk.WorldACL(zk.PermAll),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(b.Features().TTLGranularity)
}
