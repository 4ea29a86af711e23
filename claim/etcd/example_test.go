package etcd_test

import (
	"fmt"
	"log"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/stampede-go/stampede/claim/etcd"
)

// New takes the caller's own etcd client, for TLS, auth and dial options
// that a URL cannot express. It does no I/O; closing the Client leaves the
// etcd client open, and As hands it back, for what the portable API does
// not cover (as it reaches the client of a Client opened by URL). By URL
// instead, importing this package registers etcd:// and etcds:// for
// claim.Open (the parameters are in the package doc):
//
//	etcds://app:PASSWORD@etcd-1:2379,etcd-2:2379?prefix=myapp&cacert=/etc/etcd/ca.pem&dial_timeout=2s
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
	var native *clientv3.Client
	fmt.Println(c.As(&native) && native == cli)
}
