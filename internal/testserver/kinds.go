//go:build unix

package testserver

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// spec is what differs between kinds.
type spec struct {
	nports          int                                       // ports[0] is the client port
	binary          func(ctx context.Context) (string, error) // errors wrap ErrMissing
	prepare         func(ctx context.Context, s *Server) error
	keepDataOnRetry bool // the data dir does not depend on the ports
	args            func(s *Server) ([]string, error)
	env             []string
	asPostgres      bool
	stopSignal      syscall.Signal
	ready           func(ctx context.Context, s *Server) error
	setup           func(ctx context.Context, s *Server) error // once, after the first start
	url             func(s *Server) string
}

// specs holds what differs between kinds; each kind's file (redis.go,
// postgres.go, ...) adds its own from init.
var specs = map[Kind]*spec{}

func lookPath(name string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s not found on PATH: %w", name, ErrMissing)
		}
		return p, nil
	}
}

// repoRoot walks up from the working directory to the directory holding
// go.mod and tools/.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "tools")); err == nil && st.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no repository root (a directory with go.mod and tools/) above the working directory: %w", ErrMissing)
		}
		dir = parent
	}
}

var goTools struct {
	mu    sync.Mutex
	paths map[string]string
}

// goTool returns the path of the binary `go tool -n name` prints in
// tools/<module>, building it if needed (the first Consul build takes
// minutes: scripts/install-backends prebuilds both). Cached per process.
func goTool(module, name string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		goTools.mu.Lock()
		defer goTools.mu.Unlock()
		if p, ok := goTools.paths[module]; ok {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		gobin, err := exec.LookPath("go")
		if err != nil {
			return "", fmt.Errorf("go not found on PATH (needed to build %s): %w", module, ErrMissing)
		}
		cmd := exec.CommandContext(ctx, gobin, "tool", "-n", name)
		cmd.Dir = filepath.Join(root, "tools", module)
		cmd.Env = append(os.Environ(), "GOWORK=off")
		out, err := cmd.Output()
		if ctx.Err() != nil {
			return "", fmt.Errorf("go tool -n %s in tools/%s: %w", name, module, ctx.Err())
		}
		if err != nil {
			msg := err.Error()
			if ee, ok := err.(*exec.ExitError); ok {
				msg = strings.TrimSpace(string(ee.Stderr))
			}
			return "", fmt.Errorf("go tool -n %s in tools/%s: %s: %w", name, module, msg, ErrMissing)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		p := strings.TrimSpace(lines[len(lines)-1])
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("go tool -n %s printed %q: %v: %w", name, p, err, ErrMissing)
		}
		if goTools.paths == nil {
			goTools.paths = map[string]string{}
		}
		goTools.paths[module] = p
		return p, nil
	}
}
