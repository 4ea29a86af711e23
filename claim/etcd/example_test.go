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

// Open a Client by URL (importing this package registers etcd:// and
// etcds://; the parameters are in the package doc), and reach the etcd
// client underneath with As, for what the portable API does not cover.
func Example_open() {
	c, err := claim.Open(context.Background(),
		"etcds://app:PASSWORD@etcd-1:2379,etcd-2:2379?prefix=myapp&cacert=/etc/etcd/ca.pem&dial_timeout=2s")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

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
}
