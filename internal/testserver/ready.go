package testserver

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The readiness checks speak a few lines of each protocol over a plain
// connection: no client library, and no goroutine left behind.

func dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(2 * time.Second)
	}
	c.SetDeadline(deadline)
	return c, nil
}

// httpDo makes one HTTP/1.0 request (no keep-alive, no chunking) and
// returns the status code and body.
func httpDo(ctx context.Context, s *Server, method, path string, header map[string]string, body string) (int, string, error) {
	addr := s.addr
	c, err := dialProto(ctx, s)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	var req strings.Builder
	fmt.Fprintf(&req, "%s %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\nContent-Length: %d\r\n", method, path, addr, len(body))
	for k, v := range header {
		fmt.Fprintf(&req, "%s: %s\r\n", k, v)
	}
	req.WriteString("\r\n")
	req.WriteString(body)
	if _, err := io.WriteString(c, req.String()); err != nil {
		return 0, "", err
	}
	resp, err := io.ReadAll(c)
	if err != nil && len(resp) == 0 {
		return 0, "", err
	}
	head, rest, ok := strings.Cut(string(resp), "\r\n\r\n")
	if !ok {
		return 0, "", fmt.Errorf("incomplete HTTP response %q", resp)
	}
	status := strings.Fields(strings.SplitN(head, "\r\n", 2)[0])
	if len(status) < 2 {
		return 0, "", fmt.Errorf("bad HTTP status line in %q", head)
	}
	code, err := strconv.Atoi(status[1])
	if err != nil {
		return 0, "", fmt.Errorf("bad HTTP status line in %q", head)
	}
	return code, rest, nil
}
