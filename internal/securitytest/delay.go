package securitytest

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// Delay says which bytes a DelayProxy holds back, and for how long.
type Delay struct {
	// Up holds the client's bytes to the server, Down the server's
	// bytes to the client (0: passed on at once).
	Up, Down time.Duration
	// Match, if not nil, picks the chunks to hold (a chunk is what one
	// read from a socket returned: one request or reply of a
	// request/response protocol on a quiet link). nil holds every chunk.
	Match func(chunk []byte) bool
}

// DelayProxy forwards TCP connections to a server, holding back the
// bytes its Delay picks: one client's slow link, while other clients
// reach the server directly. Held bytes are still delivered after the
// client closed its connection (they were on the wire), and bytes stay
// in order on each connection (a later chunk waits behind a held one).
type DelayProxy struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu       sync.Mutex
	delay    Delay
	conns    map[net.Conn]struct{}
	held     int // chunks held, not yet passed on
	awaiting int // held requests passed on, not yet answered
	released int // held chunks passed on
}

// NewDelayProxy starts a proxy to target on a loopback port, holding
// nothing back until Set; it is closed when the test ends.
func NewDelayProxy(t testing.TB, target string) *DelayProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &DelayProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's address, host:port.
func (p *DelayProxy) Addr() string { return p.ln.Addr().String() }

// Set makes d apply to every chunk read from now on (chunks held
// already keep their time).
func (p *DelayProxy) Set(d Delay) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// Released returns how many held chunks have been passed on.
func (p *DelayProxy) Released() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.released
}

// Wait returns once no chunk is held and the server has answered every
// held request passed on to it (sent bytes back on that connection, or
// closed it), so what the held requests did is done; or ctx's error.
func (p *DelayProxy) Wait(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		p.mu.Lock()
		done := p.held == 0 && p.awaiting == 0
		p.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (p *DelayProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		l := &delayLink{c: c, s: s}
		p.wg.Add(4)
		up, down := make(chan heldChunk, 1024), make(chan heldChunk, 1024)
		go p.read(c, up, true, l)
		go p.write(s, up, true, l)
		go p.read(s, down, false, l)
		go p.write(c, down, false, l)
	}
}

// delayLink is the state of one proxied connection.
type delayLink struct {
	c, s     net.Conn // client's, server's
	awaiting bool     // a held request was passed on, no answer yet
	ended    int      // writers done; at 2 both connections are closed
}

type heldChunk struct {
	b    []byte
	due  time.Time
	held bool
}

// read reads src into q, stamping each chunk with the time it is due.
// The server's bytes (up false) answer a held request passed on.
func (p *DelayProxy) read(src net.Conn, q chan<- heldChunk, up bool, l *delayLink) {
	defer p.wg.Done()
	defer close(q)
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		if !up && l.awaiting {
			l.awaiting = false
			p.awaiting--
		}
		var c heldChunk
		if n > 0 {
			c = heldChunk{b: append([]byte(nil), buf[:n]...), due: time.Now()}
			d := p.delay.Down
			if up {
				d = p.delay.Up
			}
			if d > 0 && (p.delay.Match == nil || p.delay.Match(c.b)) {
				c.due, c.held = c.due.Add(d), true
				p.held++
			}
		}
		p.mu.Unlock()
		if n > 0 {
			q <- c
		}
		if err != nil {
			return
		}
	}
}

// write passes q's chunks on to dst when they are due, then half-closes
// dst (the peer still answers what it was sent); the second of a link's
// writers to end closes both its connections.
func (p *DelayProxy) write(dst net.Conn, q <-chan heldChunk, up bool, l *delayLink) {
	defer p.wg.Done()
	broken := false
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		p.mu.Lock()
		if c.held {
			p.held--
			p.released++
			if up && !broken && !l.awaiting {
				l.awaiting = true
				p.awaiting++
			}
		}
		p.mu.Unlock()
		if !broken {
			if _, err := dst.Write(c.b); err != nil {
				broken = true
				p.settle(l)
			}
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok && !broken {
		_ = tc.CloseWrite()
	} else {
		dst.Close()
	}
	if !up {
		// The server closed its side: nothing more will answer.
		p.settle(l)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l.ended++; l.ended == 2 {
		l.c.Close()
		l.s.Close()
		delete(p.conns, l.c)
		delete(p.conns, l.s)
	}
}

// settle marks l's held request as answered (it never will be).
func (p *DelayProxy) settle(l *delayLink) {
	p.mu.Lock()
	if l.awaiting {
		l.awaiting = false
		p.awaiting--
	}
	p.mu.Unlock()
}
