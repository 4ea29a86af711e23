// Command stampede-bench measures stampede: a real multi-process herd and
// the backends side by side. It lives in the bench module, with the test
// servers it starts and the charts it draws, so that the stampede command
// users run and the library's module do not carry them.
//
//	stampede-bench herd [-backend URL|KIND] [-procs M] [-callers N] [-keys K] [-kill-holder] ...
//	                                       a real multi-process stampede, counted
//	stampede-bench herd ... -batch B [-loop] each caller asks B keys at once (GetMany, or a loop of Gets)
//	stampede-bench bench [-backends all|URL,...] backends side by side: tables and SVG charts
//	stampede-bench help [command]
//
// Run it from the bench directory: go run ./cmd/stampede-bench herd.
// With no -backend, herd runs in this process on the embedded memory
// backend (several simulated processes sharing one memory.Space). A
// -backend URL (redis://, etcd://, postgres://, consul://, mem://NAME ...)
// or kind (redis, postgres, ...: a test server started here) runs the same
// against a real server: every process opens its own client.
package main

import (
	"context"
	"io"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/cli"
	"github.com/stampede-go/stampede/internal/countdriver"
)

var app = &cli.App{Name: "stampede-bench", Summary: "measures stampede (a multi-process herd, the backends side by side).", Example: "herd"}

func main() { app.Main() }

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return app.Run(ctx, args, stdout, stderr)
}

// count returns a client on c's driver whose round trips are counted (c
// itself is then not used: closing the new client closes the driver).
func count(c *claim.Client) (*claim.Client, *countdriver.Counter) {
	d, n := countdriver.Wrap(c.Driver(), nil, countdriver.Options{})
	return claim.NewClient(d, nil), n
}
