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

// Open by URL: the blank import of the package is enough for claim.Open.
// create_table is for development; in production create the table once
// (see the package documentation for its key schema).
func Example() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "dynamodb://stampede?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A4567&create_table=true")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	l, err := claim.Acquire(ctx, b, "report:42", 10*time.Second)
	if err != nil {
		fmt.Println(err)
		return
	}
	// ... compute the report, then store it fenced by the lease (one
	// conditional write) and wake the waiters.
	if err := b.Commit(ctx, l, []byte("the report"), time.Hour); err != nil {
		fmt.Println(err)
	}
	_ = b.Release(ctx, l)
}

// New takes a client you configured yourself (credentials, region,
// retries); the Backend does not own it.
func ExampleNew() {
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx, config.WithRegion("eu-west-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	b, err := dynamo.New(dynamodb.NewFromConfig(cfg), &dynamo.Options{Table: "locks", Prefix: "myapp", ClockSkew: 250 * time.Millisecond})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer b.Close()
	f := b.Features()
	fmt.Println(f.Notify, f.AtomicCommit, f.DurableFence, f.MaxValueLen)
	// Output: poll true true 405504
}
