package consul_test

import (
	"context"
	"fmt"
	"log"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/consul"
)

// Use a Consul client you already configured (TLS, ACL token,
// datacenter, HTTP transport), with a key prefix of your own; As gives it
// back. By URL instead, importing this package registers consul:// and
// consuls:// for claim.Open:
//
//	consul://127.0.0.1:8500?prefix=myapp/cache&token=SECRET&dc=dc1&maxwatches=20
//
// The token is sent as X-Consul-Token and never printed (errors show the
// URL redacted). New, like claim.Open, checks the agent (a KV read under
// the prefix): a token the agent refuses fails it with claim.ErrConfig,
// an agent that does not answer with claim.ErrUnavailable; set
// Options.Client.Lazy (lazy=true in a URL) to start before the agent is
// up. The Client is then used as in package claim's examples.
func ExampleNew() {
	cfg := capi.DefaultConfig()
	cfg.Address = "127.0.0.1:8500"
	client, err := capi.NewClient(cfg)
	if err != nil {
		log.Fatal(err)
	}
	c, err := consul.New(client, &consul.Options{Prefix: "myapp/stampede", ClockSkew: 20 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var native *capi.Client
	fmt.Println(c.Features().AtomicCommit, c.Features().Notify, c.As(&native) && native == client)
}

// Sweep from one process now and then (Consul KV has no TTL: values nobody
// reads again, and crashed holders' lease records, stay until swept).
func ExampleSweep() {
	var c *claim.Client // a Client of this package, from claim.Open or New
	n, err := consul.Sweep(context.Background(), c)
	if err != nil {
		log.Print(err)
	}
	log.Printf("swept %d keys", n)
}
