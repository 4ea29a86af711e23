package nats_test

import (
	"fmt"
	"log"
	"os"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/nats"
)

// New takes the caller's own NATS connection, for credentials, TLS and
// options that a URL cannot express (NKeys, credential files). It checks
// the server and finds (or creates) the bucket; closing the Client leaves
// the connection open, and As hands it back. By URL instead, importing
// this package registers nats:// for claim.Open (the parameters are in
// the package doc):
//
//	nats://app:PASSWORD@nats-1:4222,nats-2:4222?bucket=myapp&tls=true&cacert=/etc/nats/ca.pem
func ExampleNew() {
	nc, err := natsgo.Connect(os.Getenv("NATS_URL"), natsgo.UserCredentials("/etc/nats/app.creds"), natsgo.Timeout(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	c, err := nats.New(nc, &nats.Options{Bucket: "myapp", Client: &claim.Options{OpTimeout: 2 * time.Second}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var native *natsgo.Conn
	fmt.Println(c.As(&native) && native == nc)
}
