//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package postgres

import (
	"errors"
	"net"
	"syscall"
)

// peek reads one byte of c with MSG_PEEK|MSG_DONTWAIT, leaving it queued:
// EAGAIN means open and quiet.
func peek(c net.Conn) sockState {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return socketUnknown
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return socketUnknown
	}
	st := socketUnknown
	var buf [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
			st = socketQuiet
		case errors.Is(err, syscall.EINTR):
			st = socketUnknown
		default: // a byte waiting, EOF (n == 0), or a socket error
			st = socketBusy
		}
		return true // one attempt; never wait for readability
	})
	if err != nil {
		return socketBusy // closed locally
	}
	return st
}
