package zookeeper

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// ZooKeeper's request opcodes (go-zk does not export them).
const (
	opcodeExists  int32 = 3
	opcodeGetData int32 = 4
	opcodeSync    int32 = 9
	opcodeMulti   int32 = 14
)

// TestBatchPipelined: every Batcher method sends the requests of all its
// keys before any reply comes back. A proxy holds back everything the
// server sends while the batch runs, and counts the requests that reach
// the server: all n arrive, so the batch costs one round trip of latency
// whatever n, and, once the replies are let through, no request more than
// one per key.
func TestBatchPipelined(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	g := newGate(t, srv.Addr())
	c := backendtest.Open(t, backendtest.WithQuery(t, "zookeeper://"+g.addr()+chroot(t, "pipelined"), "op_timeout", "1m"))
	const n = 50
	keys, subKeys := make([]string, n), make([]string, n)
	for i := range n {
		keys[i], subKeys[i] = fmt.Sprint("k", i), fmt.Sprint("s", i)
	}
	// batch runs f with the server's replies held back until op was sent
	// n times, or for 10 s (well within go-zk's receive timeout, two
	// thirds of the session timeout), then lets them through.
	batch := func(name string, op int32, f func() error) {
		t.Helper()
		before := g.count(op)
		g.hold(true)
		done := make(chan error, 1)
		go func() { done <- f() }()
		unanswered := g.await(op, before+n, 10*time.Second) - before
		g.hold(false)
		err := <-done
		if unanswered < n {
			t.Fatalf("%s of %d keys: %d requests sent before the first reply, want %d (a request waits for another's reply)", name, n, unanswered, n)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sent := g.count(op) - before; sent != n {
			t.Errorf("%s of %d keys: %d requests, want %d", name, n, sent, n)
		}
	}

	var subs []*claim.Subscription
	batch("SubscribeMany", opcodeExists, func() (err error) {
		subs, err = c.SubscribeMany(ctx, subKeys)
		return err
	})
	for _, s := range subs {
		s.Close()
	}

	var got []claim.Claimed
	batch("TryClaimMany", opcodeMulti, func() (err error) {
		got, err = c.TryClaimMany(ctx, keys, time.Minute)
		return err
	})
	commits := make([]claim.Commit, n)
	for i, r := range got {
		if r.Err != nil || r.Found {
			t.Fatalf("TryClaimMany: key %q: %+v, want a lease and no value", keys[i], r)
		}
		commits[i] = claim.Commit{Lease: r.Lease, Value: []byte(keys[i]), TTL: time.Minute}
	}

	batch("CommitReleaseMany", opcodeMulti, func() error {
		errs, err := c.CommitReleaseMany(ctx, commits)
		if err == nil {
			err = firstErr(errs)
		}
		return err
	})

	// GetMany syncs first (see Get), once for the batch, and waits for
	// that reply (go-zk has no way to queue two requests in an order
	// without waiting): the sync's reply is let through.
	syncs := g.count(opcodeSync)
	g.pass(opcodeSync)
	var vals [][]byte
	batch("GetMany", opcodeGetData, func() (err error) {
		vals, err = c.GetMany(ctx, keys)
		return err
	})
	if n := g.count(opcodeSync) - syncs; n != 1 {
		t.Errorf("GetMany of %d keys: %d syncs, want 1", len(keys), n)
	}
	for i, v := range vals {
		if string(v) != keys[i] {
			t.Errorf("GetMany: key %q = %q, want the value committed", keys[i], v)
		}
	}
}

// gate is a TCP proxy to a ZooKeeper server that counts the requests it
// passes on, by opcode, and can hold back everything the server sends: a
// request that reaches the server while replies are held was sent without
// waiting for any reply.
type gate struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	cond   *sync.Cond // signalled when held or closed changes
	held   bool
	closed bool
	counts map[int32]int
	conns  []net.Conn
	passOp int32          // requests of this opcode have their replies let through while held
	passed map[int32]bool // by xid: the requests of passOp seen
}

// newGate starts a gate to target, closed when the test ends.
func newGate(t *testing.T, target string) *gate {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{ln: ln, target: target, counts: map[int32]int{}, passed: map[int32]bool{}}
	g.cond = sync.NewCond(&g.mu)
	g.wg.Go(g.accept)
	t.Cleanup(g.close)
	return g
}

func (g *gate) addr() string { return g.ln.Addr().String() }

func (g *gate) accept() {
	for {
		c, err := g.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", g.target)
		if err != nil {
			c.Close()
			continue
		}
		g.mu.Lock()
		if g.closed {
			g.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		g.conns = append(g.conns, c, s)
		g.mu.Unlock()
		g.wg.Go(func() { g.requests(c, s) })
		g.wg.Go(func() { g.replies(s, c) })
	}
}

// requests passes the client's frames on to the server, counting each by
// its opcode; the first frame of a connection is its session request,
// which has none.
func (g *gate) requests(c, s net.Conn) {
	defer c.Close()
	defer s.Close()
	r := bufio.NewReader(c)
	for first := true; ; first = false {
		frame, err := readFrame(r)
		if err != nil {
			return
		}
		if !first && len(frame) >= 12 { // length, xid, opcode
			op := int32(binary.BigEndian.Uint32(frame[8:12]))
			g.mu.Lock()
			g.counts[op]++
			if g.passOp != 0 && op == g.passOp {
				g.passed[int32(binary.BigEndian.Uint32(frame[4:8]))] = true
			}
			g.mu.Unlock()
		}
		if _, err := s.Write(frame); err != nil {
			return
		}
	}
}

// replies passes the server's frames on to the client, except while
// held: then only the replies to requests of passOp go through (a reply
// starts with its request's xid; the first frame, the session's, has
// none of ours).
func (g *gate) replies(s, c net.Conn) {
	defer c.Close()
	defer s.Close()
	r := bufio.NewReader(s)
	for first := true; ; first = false {
		frame, err := readFrame(r)
		if err != nil {
			return
		}
		pass := false
		g.mu.Lock()
		if !first && len(frame) >= 8 {
			pass = g.passed[int32(binary.BigEndian.Uint32(frame[4:8]))]
		}
		for g.held && !g.closed && !pass {
			g.cond.Wait()
		}
		g.mu.Unlock()
		if _, err := c.Write(frame); err != nil {
			return
		}
	}
}

// readFrame reads one length-prefixed frame of the ZooKeeper protocol,
// its length included.
func readFrame(r *bufio.Reader) ([]byte, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, err
	}
	frame := make([]byte, 4+binary.BigEndian.Uint32(size[:]))
	copy(frame, size[:])
	_, err := io.ReadFull(r, frame[4:])
	return frame, err
}

// pass lets the replies to requests of opcode op through while held.
func (g *gate) pass(op int32) {
	g.mu.Lock()
	g.passOp = op
	g.mu.Unlock()
}

// hold starts (true) or ends (false) holding back the server's bytes.
func (g *gate) hold(on bool) {
	g.mu.Lock()
	g.held = on
	g.cond.Broadcast()
	g.mu.Unlock()
}

// count is how many requests with opcode op the gate passed on.
func (g *gate) count(op int32) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.counts[op]
}

// await returns the count of op once it reaches want, or after timeout.
func (g *gate) await(op int32, want int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		got := g.count(op)
		if got >= want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(time.Millisecond)
	}
}

func (g *gate) close() {
	g.ln.Close()
	g.mu.Lock()
	g.closed = true
	g.cond.Broadcast()
	for _, c := range g.conns {
		c.Close()
	}
	g.mu.Unlock()
	g.wg.Wait()
}

// TestGetSyncs: Get sends a sync before its read, so that a server behind
// the leader catches up first (see Get); TryClaimRead's read, which
// follows the session's own claim, sends none.
func TestGetSyncs(t *testing.T) {
	srv := testserver.Shared(t, testserver.ZooKeeper)
	ctx := backendtest.Context(t)
	g := newGate(t, srv.Addr())
	c := backendtest.Open(t, "zookeeper://"+g.addr()+chroot(t, "syncs"))
	if err := c.Set(ctx, "k", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	syncs, reads := g.count(opcodeSync), g.count(opcodeGetData)
	if v, err := c.Get(ctx, "k"); err != nil || string(v) != "v" {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if s, r := g.count(opcodeSync)-syncs, g.count(opcodeGetData)-reads; s != 1 || r != 1 {
		t.Errorf("Get: %d syncs and %d reads, want 1 and 1", s, r)
	}
	syncs = g.count(opcodeSync)
	l, v, found, err := c.TryClaimRead(ctx, "k", time.Minute)
	if err != nil || !found || string(v) != "v" {
		t.Fatalf("TryClaimRead = %q, %v, %v", v, found, err)
	}
	_ = c.Release(ctx, l)
	if s := g.count(opcodeSync) - syncs; s != 0 {
		t.Errorf("TryClaimRead: %d syncs, want none", s)
	}
}
