// Command stampede-bench measures stampede: a real multi-process herd and
// the backends side by side. It lives in the bench module, with the test
// servers it starts and the charts it draws, so that the stampede command
// users run and the library's module do not carry them.
//
//	stampede-bench herd [-backend URL|KIND] [-procs M] [-callers N] [-keys K] [-kill-holder] ...
//	                                       a real multi-process stampede, counted
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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/countdriver"
)

// command is one subcommand. Files add theirs with register from init.
type command struct {
	name    string
	summary string
	// run parses args (after the command name) and runs; it returns
	// flag.ErrHelp for -h.
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

var commands []command

func register(c command) {
	commands = append(commands, c)
	slices.SortFunc(commands, func(a, b command) int { return strings.Compare(a.name, b.name) })
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name := args[0]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, ok := lookup(args[1]); ok {
				return exit(c.run(ctx, []string{"-h"}, stdout, stderr), stderr)
			}
			fmt.Fprintf(stderr, "stampede-bench: unknown command %q\n", args[1])
			return 2
		}
		usage(stdout)
		return 0
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "stampede-bench: unknown command %q\n\n", name)
		usage(stderr)
		return 2
	}
	return exit(c.run(ctx, args[1:], stdout, stderr), stderr)
}

func exit(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "stampede-bench: %v\n", err)
	return 1
}

// errUsage: the flags were wrong (already reported by the FlagSet).
var errUsage = errors.New("usage")

func lookup(name string) (command, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "stampede-bench: one loader call per key, across the whole fleet.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: stampede-bench <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "help", "show a command's flags: stampede-bench help herd")
}

// flags returns a FlagSet for a command that reports errors to stderr.
func flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("stampede-bench "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parse parses args, mapping a bad flag to errUsage.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return errUsage
	}
	return nil
}

// count returns a client on c's driver whose round trips are counted (c
// itself is then not used: closing the new client closes the driver).
func count(c *claim.Client) (*claim.Client, *countdriver.Counter) {
	d, n := countdriver.Wrap(c.Driver(), nil, countdriver.Options{})
	return claim.NewClient(d, nil), n
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// fmtDur prints a latency at a useful precision.
func fmtDur(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}
