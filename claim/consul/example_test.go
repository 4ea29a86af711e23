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

// Open a backend by URL: the token is sent as X-Consul-Token and never
// printed (errors show the URL redacted).
func Example_open() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "consul://127.0.0.1:8500/myapp/cache?token=SECRET&dc=dc1")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	l, err := claim.Acquire(ctx, b, "report:42", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	if err := b.Commit(ctx, l, []byte("result"), time.Hour); err != nil {
		log.Fatal(err)
	}
	if err := b.Release(ctx, l); err != nil {
		log.Fatal(err)
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
	b, err := consul.New(client, &consul.Options{Prefix: "myapp/stampede", ClockSkew: 20 * time.Millisecond})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	fmt.Println(b.Features().AtomicCommit, b.Features().Notify)
	// Output: true push
}

// Sweep from one process now and then (Consul KV has no TTL: values nobody
// reads again, and crashed holders' lease records, stay until swept).
func ExampleBackend_Sweep() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "consul://127.0.0.1:8500")
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	n, err := b.(*consul.Backend).Sweep(ctx)
	if err != nil {
		log.Print(err)
	}
	log.Printf("swept %d keys", n)
}
