// Package cli is what the project's commands (stampede, stampede-bench)
// share: subcommands with their own flags, exit codes, and how durations
// are printed.
package cli

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
)

// Command is one subcommand.
type Command struct {
	Name    string
	Summary string
	// Run parses args (after the command name) and runs; it returns
	// flag.ErrHelp for -h and ErrUsage for bad flags (already reported).
	Run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

// App is a command made of subcommands.
type App struct {
	Name    string // the command's name, e.g. "stampede"
	Summary string // one line under the name in the usage
	Example string // the subcommand shown in "help" (e.g. "demo")

	commands []Command
}

// Register adds c; commands files call it from init.
func (a *App) Register(c Command) {
	a.commands = append(a.commands, c)
	slices.SortFunc(a.commands, func(x, y Command) int { return strings.Compare(x.Name, y.Name) })
}

// Main runs the command on os.Args until done or interrupted, and exits.
func (a *App) Main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := a.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Run is Main without the process: it returns the exit code (0 done, 1
// failed, 2 bad usage).
func (a *App) Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		a.usage(stderr)
		return 2
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		if len(args) > 1 {
			if c, ok := a.lookup(args[1]); ok {
				return a.exit(c.Run(ctx, []string{"-h"}, stdout, stderr), stderr)
			}
			fmt.Fprintf(stderr, "%s: unknown command %q\n", a.Name, args[1])
			return 2
		}
		a.usage(stdout)
		return 0
	}
	c, ok := a.lookup(args[0])
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown command %q\n\n", a.Name, args[0])
		a.usage(stderr)
		return 2
	}
	return a.exit(c.Run(ctx, args[1:], stdout, stderr), stderr)
}

func (a *App) exit(err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		return 2
	}
	fmt.Fprintf(stderr, "%s: %v\n", a.Name, err)
	return 1
}

// ErrUsage: the flags were wrong (already reported by the FlagSet).
var ErrUsage = errors.New("usage")

func (a *App) lookup(name string) (Command, bool) {
	for _, c := range a.commands {
		if c.Name == name {
			return c, true
		}
	}
	return Command{}, false
}

func (a *App) usage(w io.Writer) {
	fmt.Fprintf(w, "%s: %s\n\nUsage: %s <command> [flags]\n\nCommands:\n", a.Name, a.Summary, a.Name)
	for _, c := range a.commands {
		fmt.Fprintf(w, "  %-8s %s\n", c.Name, c.Summary)
	}
	fmt.Fprintf(w, "  %-8s show a command's flags: %s help %s\n", "help", a.Name, a.Example)
}

// Flags returns a FlagSet for subcommand name that reports errors to
// stderr.
func (a *App) Flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(a.Name+" "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// Parse parses args, mapping a bad flag or a stray argument to ErrUsage.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return ErrUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected arguments: %s\n", fs.Name(), strings.Join(fs.Args(), " "))
		return ErrUsage
	}
	return nil
}

// Millis is d in milliseconds, for JSON reports.
func Millis(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// FormatDuration prints a latency at a useful precision.
func FormatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.1fµs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(time.Millisecond).String()
}
