//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package postgres

import (
	"errors"
	"net"
	"syscall"
)

// peek reads one byte of c with MSG_PEEK|MSG_DONTWAIT, leaving it queued:
// EAGAIN means open and quiet.
//
// It goes through RawConn.Control, not RawConn.Read: Read takes the
// descriptor's read lock, and an idle pgx connection can still have a
// goroutine parked in Read holding it (pgconn's background reader, started
// when a write was slow, stops only after its pending Read returns, that
// is when the server next sends something). Waiting for that lock hung
// pool.Acquire, with no context to end it, until the server spoke: in CI
// it hung TestPoolStarvation for 29 minutes. Control only pins the
// descriptor; the peek never blocks and consumes nothing. If the parked
// reader has already taken what the server sent, the peek sees a quiet
// socket, and the statement gets that data (say, a termination notice)
// from pgconn's buffer instead: an error, and the pool drops the
// connection.
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
	err = rc.Control(func(fd uintptr) {
		_, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EWOULDBLOCK):
			st = socketQuiet
		case errors.Is(err, syscall.EINTR):
			st = socketUnknown
		default: // a byte waiting, EOF (n == 0), or a socket error
			st = socketBusy
		}
	})
	if err != nil {
		return socketBusy // closed locally
	}
	return st
}
