package postgres_test

import (
	"context"
	"fmt"
	"log"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/postgres"
)

// Open a Backend by URL: importing this package registers postgres:// and
// postgresql://. stampede_* parameters are this package's; the rest go to
// pgx.
func Example_open() {
	ctx := context.Background()
	b, err := claim.Open(ctx, "postgres://app:secret@db.internal:5432/app?sslmode=verify-full&pool_max_conns=10&stampede_schema=cache")
	if err != nil {
		log.Fatal(err) // never shows the password
	}
	defer b.Close()

	// Run a job once per key fleet-wide: wait for the claim (woken by the
	// holder's release through LISTEN/NOTIFY), keep it alive while
	// working, commit the result fenced by the lease, release.
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

// New takes the caller's own pool (TLS, auth hooks, tracing); Close leaves
// it open. Waiting never takes a pool connection: each Backend LISTENs on
// one connection of its own, made from the pool's configuration.
func ExampleNew() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://app@db.internal/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	b, err := postgres.New(pool, &postgres.Options{Schema: "cache", TablePrefix: "myapp_", SkipMigrate: true})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	// With SkipMigrate, create the tables from a deploy step instead.
	if err := b.Migrate(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(b.Features().MaxValueLen)
}

// ParseURL shows what a URL configures: stampede_* parameters become
// Options, the rest is the connection string pgx parses.
func ExampleParseURL() {
	u, _ := url.Parse("postgresql://app@db/app?sslmode=disable&stampede_prefix=jobs_&stampede_maxvalue=1048576")
	o, conn, err := postgres.ParseURL(u)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(o.TablePrefix, o.MaxValueLen)
	fmt.Println(conn)
	// Output:
	// jobs_ 1048576
	// postgresql://app@db/app?sslmode=disable
}
