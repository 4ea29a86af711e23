//go:build unix

package faults

import (
	"os"
	"syscall"
)

// lockFile takes an exclusive lock on f (released when f is closed), so
// that two soak passes writing one report do not interleave.
func lockFile(f *os.File) error { return syscall.Flock(int(f.Fd()), syscall.LOCK_EX) }
