//go:build unix

package testserver

import (
	"context"
	"fmt"
	"syscall"
	"time"
)

// What the cluster launchers (etcdcluster.go, zkcluster.go,
// consulcluster.go, redissentinel.go) share.

// launchGroup spawns every server of group, then waits for each to be
// ready (a cluster member is not before a quorum runs); on failure none is
// left running. name(i) names server i in the error.
func launchGroup(ctx context.Context, group []*Server, name func(i int) string) error {
	procs := make([]*proc, len(group))
	for i, s := range group {
		p, err := s.spawn()
		if err != nil {
			for _, p := range procs[:i] {
				p.kill()
			}
			return err
		}
		procs[i] = p
	}
	for i, s := range group {
		if err := s.await(ctx, procs[i]); err != nil {
			for _, m := range group[:i] {
				m.Kill()
			}
			for _, p := range procs[i+1:] {
				p.kill()
			}
			return fmt.Errorf("%s: %w", name(i), err)
		}
	}
	return nil
}

// pollIndex calls f every 50 ms until it names a server (a leader, a
// primary) or ctx is done; then it returns f's last error.
func pollIndex(ctx context.Context, f func(ctx context.Context) (int, error)) (int, error) {
	for {
		i, err := f(ctx)
		if err == nil {
			return i, nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-t.C:
		}
	}
}

// signalGroup sends sig to s's process group (SIGSTOP/SIGCONT reach the
// server behind a wrapper such as ip netns exec, and its children).
func signalGroup(s *Server, sig syscall.Signal) error {
	pid := s.Pid()
	if pid == 0 {
		return fmt.Errorf("testserver: signal %v: %s is not running", sig, s.Addr())
	}
	if err := syscall.Kill(-pid, sig); err != nil {
		return fmt.Errorf("testserver: signal %v to %s: %w", sig, s.Addr(), err)
	}
	return nil
}

// groupSetup is what every cluster launcher does first: a copy of opts
// (nil: the zero Options) refusing what a group does not support
// (appendOnly: whether Options.AppendOnly is), StartTimeout defaulting to
// 60 s, the kind's binary, and the sweep of leftovers from killed runs.
// what names the group in errors ("etcd cluster").
func groupSetup(ctx context.Context, kind Kind, what string, opts *Options, appendOnly bool) (Options, string, error) {
	var o Options
	if opts != nil {
		o = *opts
		o.Args = append([]string(nil), opts.Args...)
	}
	if o.Password != "" || o.User != "" || o.TLS || (o.AppendOnly && !appendOnly) {
		supported := "Options.Args and StartTimeout"
		if appendOnly {
			supported = "Options.Args, AppendOnly and StartTimeout"
		}
		return o, "", fmt.Errorf("testserver: %s: only %s are supported", what, supported)
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 60 * time.Second
	}
	bin, err := specs[kind].binary(ctx)
	if err != nil {
		return o, "", fmt.Errorf("testserver: %s: %w", what, err)
	}
	sweepOnce.Do(sweep)
	return o, bin, nil
}

// addrsOf returns the servers' client addresses, host:port, in order.
func addrsOf(servers []*Server) []string {
	a := make([]string, len(servers))
	for i, s := range servers {
		a[i] = s.Addr()
	}
	return a
}

// Rotated returns a copy of list starting at element first (taken modulo
// its length, negative too) and wrapping around: how a cluster's URL(first)
// puts one member first, to spread clients over the members.
func Rotated(list []string, first int) []string {
	n := len(list)
	if n == 0 {
		return nil
	}
	first = ((first % n) + n) % n
	return append(append([]string(nil), list[first:]...), list[:first]...)
}
