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

// Open a Client by URL: importing this package registers consul:// and
// consuls://. The token is sent as X-Consul-Token and never printed
// (errors show the URL redacted).
func Example_open() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "consul://127.0.0.1:8500?prefix=myapp/cache&token=SECRET&dc=dc1")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Run a job once per key fleet-wide: wait for the claim (woken by the
	// holder's release through a blocking query), keep it alive while
	// working, commit the result fenced by the lease, release.
	l, err := c.Acquire(ctx, "report:42", 5*time.Second)
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
}

// Use a Consul client you already configured (TLS, ACL token,
// datacenter, HTTP transport), with a key prefix of your own.
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
	// Output: true push true
}

// Sweep from one process now and then (Consul KV has no TTL: values nobody
// reads again, and crashed holders' lease records, stay until swept).
func ExampleSweep() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "consul://127.0.0.1:8500?prefix=myapp/cache")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	n, err := consul.Sweep(ctx, c)
	if err != nil {
		log.Print(err)
	}
	log.Printf("swept %d keys", n)
}
