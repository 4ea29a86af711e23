package dynamo_test

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/dynamo"
)

// New takes a client you configured yourself (credentials, region,
// retries); the Client does not own it, and As hands it back. New checks
// the table (one GetItem) unless the Client is lazy, as here, where the
// table is only an example. By URL instead, the blank import of this
// package is enough for claim.Open, which checks the table too:
//
//	dynamodb://stampede?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A4567&create_table=true&clock_skew=250ms
//
// create_table is for development; in production create the table once
// (see the package documentation for its key schema). The portable API is
// shown in package claim's examples.
func ExampleNew() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("eu-west-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	c, err := dynamo.New(dynamodb.NewFromConfig(cfg), &dynamo.Options{
		Table: "locks", Prefix: "myapp", ClockSkew: 250 * time.Millisecond,
		Client: &claim.Options{Lazy: true},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer c.Close()
	var native *dynamodb.Client
	f := c.Features()
	fmt.Println(f.Notify, f.AtomicCommit, f.DurableFence, f.MaxValueLen, c.As(&native))
	// Output: poll true true 405504 true
}
