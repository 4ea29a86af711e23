//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package postgres

import (
	"net"
	"testing"
	"time"
)

// A connection with a goroutine parked in Read (as pgconn's background
// reader can be, on an idle pooled connection) is looked at without
// waiting for that Read: ShouldPing runs inside pool.Acquire, where no
// context can end a wait. Then data the server sends shows as busy.
func TestPeekDoesNotWaitForParkedRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()

	parked := make(chan struct{})
	readDone := make(chan error, 1)
	go func() {
		close(parked)
		var b [1]byte
		_, err := client.Read(b[:])
		readDone <- err
	}()
	<-parked
	time.Sleep(50 * time.Millisecond) // let the reader block in Read (a longer wait only makes the check stricter)

	looked := make(chan sockState, 1)
	go func() { looked <- socketState(client) }()
	select {
	case st := <-looked:
		if st != socketQuiet {
			t.Errorf("open, quiet connection with a parked reader: state %d, want quiet (%d)", st, socketQuiet)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("socketState waited for a Read parked on the connection (it must never block)")
	}

	// The parked reader takes the first byte; a second stays queued.
	if _, err := server.Write([]byte("ab")); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for socketState(client) != socketBusy {
		if time.Now().After(deadline) {
			t.Fatal("a byte queued on the socket: state never busy")
		}
		time.Sleep(time.Millisecond)
	}
	_ = server.Close()
	var b [1]byte
	if _, err := client.Read(b[:]); err != nil { // drain "b"
		t.Fatal(err)
	}
	for socketState(client) != socketBusy { // EOF
		if time.Now().After(deadline) {
			t.Fatal("peer closed: state never busy")
		}
		time.Sleep(time.Millisecond)
	}
}
