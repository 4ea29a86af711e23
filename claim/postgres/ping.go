package postgres

import (
	"context"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// ShouldPing is a pgxpool.Config.ShouldPing that spares the round trip
// pgxpool's default spends on a connection idle for over a second: it
// looks at the connection's socket instead (a non-blocking MSG_PEEK, no
// I/O) and pings only if the server has sent something on the idle
// connection (a termination notice, an error) or closed it, so a
// connection the server dropped (restart, pg_terminate_backend,
// idle_session_timeout) is still replaced before use, even one idle for
// less than a second. Where the socket cannot be looked at (another
// platform, a connection from a custom dialer), it falls back to pgxpool's
// rule: ping after a second idle. Neither check finds a peer that
// vanished silently; the statement's context bounds that case.
//
// Clients opened by URL use it. With a pool of your own, set it on the
// pool's config before pgxpool.NewWithConfig (see ExampleNew; the latency
// it saves on a handoff after a hold over a second: docs/postgres.md).
func ShouldPing(_ context.Context, p pgxpool.ShouldPingParams) bool {
	if p.Conn != nil && p.Conn.PgConn() != nil {
		switch socketState(p.Conn.PgConn().Conn()) {
		case socketQuiet:
			return false
		case socketBusy:
			return true
		}
	}
	return p.IdleDuration > time.Second
}

type sockState int

const (
	socketUnknown sockState = iota // cannot tell
	socketQuiet                    // open, nothing to read
	socketBusy                     // data waiting, EOF or an error
)

// netConner is what *tls.Conn offers to reach the socket under it.
type netConner interface{ NetConn() net.Conn }

func socketState(c net.Conn) sockState {
	for c != nil {
		if n, ok := c.(netConner); ok {
			c = n.NetConn()
			continue
		}
		return peek(c)
	}
	return socketUnknown
}
