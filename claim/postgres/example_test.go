package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/postgres"
)

// Open a Client by URL: importing this package registers postgres:// and
// postgresql://. A postgres URL is a libpq URL (sslmode, pool_max_conns,
// … go to pgx) plus this package's parameters (schema, prefix, …). From
// there on the API is package claim's, the same on every backend.
func Example_open() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "postgres://app:secret@db.internal:5432/app?sslmode=verify-full&pool_max_conns=10&schema=cache")
	if err != nil {
		log.Fatal(err) // never shows the password
	}
	defer c.Close()
	// As reaches the pool the Client opened, for statements of your own.
	var pool *pgxpool.Pool
	if c.As(&pool) {
		fmt.Println(pool.Stat().MaxConns())
	}
}

// New takes the caller's own pool (TLS, auth hooks, tracing); the
// Client's Close leaves it open. Waiting never takes a pool connection:
// each Client LISTENs on one connection of its own, made from the pool's
// configuration. New checks the server (and creates the tables) before
// it returns.
func ExampleNew() {
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig("postgres://app@db.internal/app")
	if err != nil {
		log.Fatal(err)
	}
	cfg.ShouldPing = postgres.ShouldPing // as pools opened by URL do
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	c, err := postgres.New(pool, &postgres.Options{Schema: "cache", TablePrefix: "myapp_"})
	if errors.Is(err, claim.ErrConfig) {
		// A wrong password, a missing privilege, ...: retrying will not help.
		log.Fatal(err)
	}
	if err != nil {
		log.Fatal(err) // claim.ErrUnavailable: the server did not answer in time
	}
	defer c.Close()
	fmt.Println(c.Features().MaxValueLen)
}

// Migrate creates the tables from a deploy step, for Clients that run
// with migrate=false under a role that may not create them. The deploy
// step opens its Client lazily: Open would otherwise fail on the very
// tables it is about to create.
func ExampleMigrate() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "postgres://admin@db.internal/app?schema=cache&migrate=false&lazy=true")
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := postgres.Migrate(ctx, c); err != nil {
		log.Fatal(err)
	}
}

// ParseURL shows what a URL configures: this package's parameters become
// Options, the rest is the connection string pgx parses.
func ExampleParseURL() {
	u, _ := url.Parse("postgresql://app@db/app?sslmode=disable&prefix=jobs_&maxvalue=1048576")
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
