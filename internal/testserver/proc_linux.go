package testserver

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func sysProcAttr() *syscall.SysProcAttr {
	// Pdeathsig: the server dies with the test binary, however it ends.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// member is one process of a server, identified by pid and start time so a
// reused pid is never taken for it.
type member struct {
	pid   int
	start string
}

type procStat struct {
	pid, ppid, pgrp int
	state, start    string
}

// readStat parses /proc/<pid>/stat: pid (comm) state ppid pgrp ... with
// starttime the 22nd field; comm may contain spaces or ')'.
func readStat(path string) (procStat, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	j := bytes.IndexByte(b, ' ')
	if i < 0 || j < 0 {
		return procStat{}, false
	}
	f := bytes.Fields(b[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return procStat{}, false
	}
	var st procStat
	st.pid, _ = strconv.Atoi(string(b[:j]))
	st.state = string(f[0])
	st.ppid, _ = strconv.Atoi(string(f[1]))
	st.pgrp, _ = strconv.Atoi(string(f[2]))
	st.start = string(f[19])
	return st, true
}

func allStats() []procStat {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	stats := make([]procStat, 0, len(paths))
	for _, p := range paths {
		if st, ok := readStat(p); ok {
			stats = append(stats, st)
		}
	}
	return stats
}

func live(st procStat) bool { return st.state != "Z" && st.state != "X" }

// family returns the leader, its descendants and the rest of its process
// group, as they are now.
func family(leader int) []member {
	stats := allStats()
	children := map[int][]procStat{}
	for _, st := range stats {
		children[st.ppid] = append(children[st.ppid], st)
	}
	seen := map[int]bool{}
	var fam []member
	add := func(st procStat) {
		if !seen[st.pid] && live(st) {
			seen[st.pid] = true
			fam = append(fam, member{st.pid, st.start})
		}
	}
	for _, st := range stats {
		if st.pid == leader || st.pgrp == leader {
			add(st)
		}
	}
	for i := 0; i < len(fam); i++ {
		for _, c := range children[fam[i].pid] {
			add(c)
		}
	}
	return fam
}

func (m member) alive() bool {
	st, ok := readStat("/proc/" + strconv.Itoa(m.pid) + "/stat")
	return ok && st.start == m.start && live(st)
}

// groupAlive reports whether a live process is in process group pgid; a
// zombie not yet reaped by its parent runs nothing and holds no port.
func groupAlive(pgid int) bool {
	for _, st := range allStats() {
		if st.pgrp == pgid && live(st) {
			return true
		}
	}
	return false
}

// selfTag identifies this process (pid and start time) in the owner file of
// its servers' directories.
func selfTag() string {
	st, ok := readStat("/proc/self/stat")
	if !ok {
		return strconv.Itoa(os.Getpid())
	}
	return strconv.Itoa(st.pid) + " " + st.start
}

// tagAlive reports whether the process a selfTag names is still running.
func tagAlive(tag string) bool {
	pid, start, ok := strings.Cut(strings.TrimSpace(tag), " ")
	n, err := strconv.Atoi(pid)
	if err != nil {
		return true // unknown: keep
	}
	if !ok {
		return syscall.Kill(n, 0) == nil
	}
	return member{n, start}.alive()
}
