// Command stampede shows stampede's one-loader-call-per-key guarantee.
//
//	stampede demo [-backend URL] [-json]   replay the design's scenarios
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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
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
			fmt.Fprintf(stderr, "stampede: unknown command %q\n", args[1])
			return 2
		}
		usage(stdout)
		return 0
	}
	c, ok := lookup(name)
	if !ok {
		fmt.Fprintf(stderr, "stampede: unknown command %q\n\n", name)
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
	fmt.Fprintf(stderr, "stampede: %v\n", err)
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
	fmt.Fprintln(w, "stampede: one loader call per key, across the whole fleet.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: stampede <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "help", "show a command's flags: stampede help demo")
}

// flags returns a FlagSet for a command that reports errors to stderr.
func flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("stampede "+name, flag.ContinueOnError)
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
