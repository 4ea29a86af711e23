//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package postgres

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestSilentListenConnection: the LISTEN connection goes silent (its
// server process stopped: the socket stays open, nothing arrives) while a
// waiter waits and the holder releases. The health check finds the dead
// connection, the driver reconnects and wakes the waiter.
func TestSilentListenConnection(t *testing.T) {
	ctx := backendtest.Context(t)
	if testserver.Shared(t, testserver.Postgres).External() {
		t.Skip("needs to stop a process of the server: not an external server")
	}
	prefix := "sl" + randID() + "_"
	// The LISTEN connection gets an application_name of its own.
	lc, err := pgx.ParseConfig(serverURL(t, "application_name", prefix+"listen"))
	if err != nil {
		t.Fatal(err)
	}
	holder, hd := newClient(t, nil, "prefix", prefix)
	waiter, _ := newClient(t, &Options{HealthInterval: 200 * time.Millisecond, ListenConfig: lc}, "prefix", prefix)
	l, sub := waitForHolder(ctx, t, holder, waiter, "silent", time.Hour)
	var pid int
	if err := hd.pool.QueryRow(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", prefix+"listen").Scan(&pid); err != nil {
		t.Fatalf("pid of the LISTEN connection: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	if err := holder.Release(ctx, l); err != nil {
		t.Fatal(err)
	}
	awaitWake(ctx, t, sub, "after the LISTEN connection went silent")
	if _, err := waiter.TryClaim(ctx, "silent", time.Minute); err != nil {
		t.Fatalf("TryClaim after wake-up: %v", err)
	}
}

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
