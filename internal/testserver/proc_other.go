//go:build unix && !linux

package testserver

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

type member struct{ pid int }

// family is the leader only: without /proc, descendants outside its
// process group are not tracked.
func family(leader int) []member { return []member{{leader}} }

func (m member) alive() bool { return syscall.Kill(m.pid, 0) == nil }

func groupAlive(pgid int) bool { return syscall.Kill(-pgid, 0) == nil }

func selfTag() string { return strconv.Itoa(os.Getpid()) }

func tagAlive(tag string) bool {
	n, err := strconv.Atoi(strings.TrimSpace(tag))
	return err != nil || syscall.Kill(n, 0) == nil
}
