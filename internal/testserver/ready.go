package testserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
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

// readyRedis sends (AUTH and) PING and wants +PONG (a loading server says
// -LOADING).
func readyRedis(ctx context.Context, s *Server) error {
	c, err := dialProto(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	r := bufio.NewReader(c)
	if s.opts.User != "" {
		fmt.Fprintf(c, "*3\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(s.opts.User), s.opts.User, len(s.opts.Password), s.opts.Password)
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("redis AUTH: %q", strings.TrimSpace(line))
		}
	} else if s.opts.Password != "" {
		fmt.Fprintf(c, "*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n", len(s.opts.Password), s.opts.Password)
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if !strings.HasPrefix(line, "+OK") {
			return fmt.Errorf("redis AUTH: %q", strings.TrimSpace(line))
		}
	}
	if _, err := io.WriteString(c, "*1\r\n$4\r\nPING\r\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("redis PING: %q", strings.TrimSpace(line))
	}
	return nil
}

// readyMemcache sends "version" and wants "VERSION ...".
func readyMemcache(ctx context.Context, s *Server) error {
	c, err := dialProto(ctx, s)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "version\r\n"); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "VERSION ") {
		return fmt.Errorf("memcached version: %q", strings.TrimSpace(line))
	}
	return nil
}

// readyPostgres opens a real session (startup message as the superuser to
// database postgres) and wants ReadyForQuery; "the database system is
// starting up" comes back as an ErrorResponse. A server with a password or
// TLS is checked through its Unix socket, where pg_hba.conf trusts local
// clients.
func readyPostgres(ctx context.Context, s *Server) error {
	var c net.Conn
	var err error
	if s.pgLocalOnly() {
		var d net.Dialer
		c, err = d.DialContext(ctx, "unix", filepath.Join(s.dir, "sock", ".s.PGSQL."+strconv.Itoa(s.ports[0])))
		if err == nil {
			deadline, ok := ctx.Deadline()
			if !ok {
				deadline = time.Now().Add(2 * time.Second)
			}
			c.SetDeadline(deadline)
		}
	} else {
		c, err = dial(ctx, s.addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608) // protocol 3.0
	for _, kv := range []string{"user", s.pgUser(), "database", "postgres"} {
		body = append(append(body, kv...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	if _, err := c.Write(append(msg, body...)); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return err
		}
		var n uint32
		if err := binary.Read(r, binary.BigEndian, &n); err != nil {
			return err
		}
		if n < 4 || n > 1<<20 {
			return fmt.Errorf("postgres: bad message length %d", n)
		}
		payload := make([]byte, n-4)
		if _, err := io.ReadFull(r, payload); err != nil {
			return err
		}
		switch typ {
		case 'R': // authentication: 0 is AuthenticationOk (trust)
			if len(payload) >= 4 && binary.BigEndian.Uint32(payload) != 0 {
				return fmt.Errorf("postgres: authentication required (code %d), want trust", binary.BigEndian.Uint32(payload))
			}
		case 'E':
			return fmt.Errorf("postgres: %s", pgError(payload))
		case 'Z':
			c.Write([]byte{'X', 0, 0, 0, 4}) // Terminate
			return nil
		}
	}
}

func pgError(payload []byte) string {
	var parts []string
	for _, f := range bytes.Split(payload, []byte{0}) {
		if len(f) > 1 && (f[0] == 'M' || f[0] == 'C') {
			parts = append(parts, string(f[1:]))
		}
	}
	return strings.Join(parts, " ")
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

// readyEtcd wants GET /health to say {"health":"true"} (there is a leader).
func readyEtcd(ctx context.Context, s *Server) error {
	code, body, err := httpDo(ctx, s, "GET", "/health", nil, "")
	if err != nil {
		return err
	}
	if code != 200 || !strings.Contains(body, `"health":"true"`) {
		return fmt.Errorf("etcd /health: %d %s", code, strings.TrimSpace(body))
	}
	return nil
}

// readyConsul wants GET /v1/status/leader to name a leader.
func readyConsul(ctx context.Context, s *Server) error {
	code, body, err := httpDo(ctx, s, "GET", "/v1/status/leader", nil, "")
	if err != nil {
		return err
	}
	body = strings.TrimSpace(body)
	if code != 200 || body == "" || body == `""` {
		return fmt.Errorf("consul /v1/status/leader: %d %s", code, body)
	}
	return nil
}

// readyDynamo makes a ListTables call (dynalite accepts any signature, but
// wants the headers to be there).
func readyDynamo(ctx context.Context, s *Server) error {
	h := map[string]string{
		"Content-Type":  "application/x-amz-json-1.0",
		"X-Amz-Target":  "DynamoDB_20120810.ListTables",
		"X-Amz-Date":    "20200101T000000Z",
		"Authorization": "AWS4-HMAC-SHA256 Credential=stampede/20200101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=0",
	}
	code, body, err := httpDo(ctx, s, "POST", "/", h, "{}")
	if err != nil {
		return err
	}
	if code != 200 || !strings.Contains(body, "TableNames") {
		return fmt.Errorf("dynamo ListTables: %d %s", code, strings.TrimSpace(body))
	}
	return nil
}

// readyZooKeeper wants ruok -> imok, then srvr to report a serving server.
func readyZooKeeper(ctx context.Context, s *Server) error {
	addr := s.addr
	if s.tls != nil {
		addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.ports[1])) // the plain port
	}
	out, err := fourLetter(ctx, addr, "ruok")
	if err != nil {
		return err
	}
	if out != "imok" {
		return fmt.Errorf("zookeeper ruok: %q", out)
	}
	out, err = fourLetter(ctx, addr, "srvr")
	if err != nil {
		return err
	}
	if !strings.Contains(out, "Mode: ") {
		return fmt.Errorf("zookeeper srvr: %q", out)
	}
	return nil
}

func fourLetter(ctx context.Context, addr, cmd string) (string, error) {
	c, err := dial(ctx, addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, cmd); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, io.EOF) && len(b) == 0 {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}
