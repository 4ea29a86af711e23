//go:build unix

package testserver

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// proc is a server process: the leader of its own process group (pgid ==
// pid), reaped with wait4 by this package (no goroutine waits on it).
type proc struct {
	pid int

	mu     sync.Mutex
	done   bool
	status string
}

// spawn starts bin in its own process group with stdout and stderr to logf.
// asPostgres runs it as the postgres user when this process is root
// (initdb and postgres refuse to run as root).
func spawn(bin string, args []string, dir string, env []string, asPostgres bool, logf *os.File) (*proc, error) {
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = sysProcAttr()
	if asPostgres {
		cred, err := postgresCredential()
		if err != nil {
			return nil, err
		}
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{pid: cmd.Process.Pid}
	// Reaping is done with wait4 on the pid; drop the os.Process handle.
	cmd.Process.Release()
	return p, nil
}

// postgresCredential returns nil when not root, else the postgres user's.
func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	uid, gid, err := postgresIDs()
	if err != nil {
		return nil, err
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

var pgIDs struct {
	once     sync.Once
	uid, gid int
	err      error
}

func postgresIDs() (uid, gid int, err error) {
	pgIDs.once.Do(func() {
		u, err := user.Lookup("postgres")
		if err != nil {
			pgIDs.err = fmt.Errorf("running as root needs a postgres user to run PostgreSQL as: %v: %w", err, ErrMissing)
			return
		}
		pgIDs.uid, _ = strconv.Atoi(u.Uid)
		pgIDs.gid, _ = strconv.Atoi(u.Gid)
	})
	return pgIDs.uid, pgIDs.gid, pgIDs.err
}

// exited reports (without blocking) whether the leader has exited, reaping
// it if so.
func (p *proc) exited() (bool, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.done {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(p.pid, &ws, syscall.WNOHANG, nil)
		switch {
		case wpid == p.pid:
			p.done, p.status = true, describe(ws)
		case errors.Is(err, syscall.ECHILD):
			p.done, p.status = true, "already reaped"
		}
	}
	return p.done, p.status
}

// wait blocks until the leader has exited and reaps it.
func (p *proc) wait() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for !p.done {
		var ws syscall.WaitStatus
		wpid, err := syscall.Wait4(p.pid, &ws, 0, nil)
		switch {
		case wpid == p.pid:
			p.done, p.status = true, describe(ws)
		case errors.Is(err, syscall.EINTR):
		case err != nil:
			p.done, p.status = true, err.Error()
		}
	}
}

func describe(ws syscall.WaitStatus) string {
	switch {
	case ws.Exited():
		return fmt.Sprintf("exit status %d", ws.ExitStatus())
	case ws.Signaled():
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("wait status %#x", uint32(ws))
}

// kill sends SIGKILL to the process group and to every descendant of the
// leader (PostgreSQL's children call setsid, so they are not in its group)
// and returns once none of them is left.
func (p *proc) kill() error {
	fam := family(p.pid)
	p.signalAll(fam, syscall.SIGKILL)
	p.wait()
	return p.waitGone(fam, 10*time.Second)
}

// stop sends sig to the leader, waits up to timeout for it to exit, then
// kills what is left; it returns once no process of the group, and no
// process that descended from the leader, is left.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	fam := family(p.pid)
	if exited, _ := p.exited(); !exited {
		syscall.Kill(p.pid, sig)
		deadline := time.Now().Add(timeout)
		for {
			if exited, _ := p.exited(); exited {
				break
			}
			if time.Now().After(deadline) {
				return p.kill()
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The leader is gone; its children (PostgreSQL's) go with it.
	if err := p.waitGone(fam, timeout); err == nil {
		return nil
	}
	p.signalAll(fam, syscall.SIGKILL)
	return p.waitGone(fam, timeout)
}

func (p *proc) signalAll(fam []member, sig syscall.Signal) {
	syscall.Kill(-p.pid, sig)
	for _, m := range fam {
		if m.alive() {
			syscall.Kill(m.pid, sig)
		}
	}
}

func (p *proc) waitGone(fam []member, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		left := 0
		if groupAlive(p.pid) {
			left++
		}
		for _, m := range fam {
			if m.alive() {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("testserver: %d processes of server %d still running after %v", left, p.pid, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
