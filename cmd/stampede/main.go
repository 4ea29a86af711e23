// Command stampede shows stampede's one-loader-call-per-key guarantee.
//
//	stampede demo [-backend URL] [-json] [-metrics ADDR]   replay the design's scenarios
//	stampede help [command]
//
// The measuring tools (a multi-process herd, the backend benchmarks, the
// rivals) are in the bench module: github.com/stampede-go/stampede/bench.
//
// With no -backend, everything runs in this process on the embedded
// memory backend (several simulated processes sharing one memory.Space):
// nothing to install but Go. A -backend URL (redis://, etcd://, postgres://,
// consul://, mem://NAME ...) runs the same against a real server: every
// simulated process opens its own client.
package main

import (
	"context"
	"io"

	"github.com/stampede-go/stampede/internal/cli"
)

var app = &cli.App{Name: "stampede", Summary: "one loader call per key, across the whole fleet.", Example: "demo"}

func main() { app.Main() }

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return app.Run(ctx, args, stdout, stderr)
}
