package mysql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/mysql"
)

// Open a Client by URL: importing this package registers mysql:// and
// mariadb://. From there on the API is package claim's, the same on
// every backend.
func Example_open() {
	ctx := context.Background()
	c, err := claim.Open(ctx, "mysql://app:secret@db.internal:3306/app?prefix=cache_&tls=true&cacert=/etc/ssl/db-ca.pem")
	if err != nil {
		log.Fatal(err) // never shows the password
	}
	defer c.Close()
	// As reaches the pool the Client opened, for statements of your own.
	var db *sql.DB
	if c.As(&db) {
		fmt.Println(db.Stats().MaxOpenConnections)
	}
}

// New takes the caller's own pool; the Client's Close leaves it open.
// Give it InterpolateParams and ClientFoundRows, as pools opened by URL
// have. New checks the server (and creates the tables) before it
// returns.
func ExampleNew() {
	cfg := gomysql.NewConfig()
	cfg.Addr, cfg.User, cfg.Passwd, cfg.DBName = "db.internal:3306", "app", "secret", "app"
	cfg.InterpolateParams = true // one round trip per statement
	cfg.ClientFoundRows = true
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	c, err := mysql.New(db, &mysql.Options{TablePrefix: "myapp_"})
	if errors.Is(err, claim.ErrConfig) {
		// A wrong password, a missing privilege, ...: retrying will not help.
		log.Fatal(err)
	}
	if err != nil {
		log.Fatal(err) // claim.ErrUnavailable: the server did not answer in time
	}
	defer c.Close()
	fmt.Println(c.Features().Notify)
}
