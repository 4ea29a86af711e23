package zookeeper_test

import (
	"fmt"
	"log"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/stampede-go/stampede/claim/zookeeper"
)

// New takes the caller's own connection, for dialers, host providers and
// auth schemes a URL cannot express. New waits for the session and checks
// that the connection may write under the prefix (claim.ErrConfig if its
// ACL refuses it); closing the Client, or a failed New, leaves the
// connection, and so the session and its leases, open. As hands the
// connection back, for what the portable API does not cover. By URL
// instead, importing this package registers zookeeper:// for claim.Open:
//
//	zookeeper://app:s3cret@zk1:2181,zk2:2181,zk3:2181/myapp?session=20s
//
// Several servers are separated by commas; the path is a chroot under
// which the driver keeps its nodes (here /myapp/stampede). With
// credentials, the session uses digest authentication and nodes are
// created accessible to that user only. The Client is used as in package
// claim's examples.
func ExampleNew() {
	conn, _, err := zk.Connect([]string{"zk1:2181"}, 30*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	c, err := zookeeper.New(conn, &zookeeper.Options{
		Prefix: "myapp/stampede",
		ACL:    zk.WorldACL(zk.PermAll),
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var native *zk.Conn
	if c.As(&native) {
		fmt.Println(native.State())
	}
}
