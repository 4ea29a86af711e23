//go:build unix

package testserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

// NATS is a NATS server with JetStream (Debian's nats-server), for the
// nats:// backend: `nats-server -js -sd DIR`, JetStream's file storage in
// the data directory, so streams (and their sequences, the backend's
// fencing tokens) survive Kill and Restart. Options.Password alone makes
// the server require that token (URL: nats://HOST:PORT?token=TOKEN);
// Options.User with Password a user and password. Options.TLS makes it
// accept only TLS clients that present a certificate signed by the test CA
// (--tlsverify); the URL then carries tls=true and the files.
const NATS Kind = "nats"

func init() {
	specs[NATS] = &spec{
		nports:     1,
		binary:     lookPath("nats-server"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			a := []string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.ports[0]),
				"-js", "-sd", s.dataDir(), "-n", "stampede-test"}
			switch {
			case s.opts.User != "":
				a = append(a, "--user", s.opts.User, "--pass", s.opts.Password)
			case s.opts.Password != "":
				a = append(a, "--auth", s.opts.Password)
			}
			if s.tls != nil {
				a = append(a, "--tls", "--tlscert", s.tls.ServerCertFile, "--tlskey", s.tls.ServerKeyFile,
					"--tlscacert", s.tls.CAFile, "--tlsverify")
			}
			return append(a, s.opts.Args...), nil
		},
		keepDataOnRetry: true,
		ready:           readyNATS,
		url: func(s *Server) string {
			u := url.URL{Scheme: "nats", Host: s.addr}
			switch {
			case s.opts.User != "":
				u.User = url.UserPassword(s.opts.User, s.opts.Password)
			}
			q := url.Values{}
			if s.opts.User == "" && s.opts.Password != "" {
				q.Set("token", s.opts.Password)
			}
			if s.tls != nil {
				q.Set("tls", "true")
				q.Set("cacert", s.tls.CAFile)
				q.Set("cert", s.tls.CertFile)
				q.Set("key", s.tls.KeyFile)
			}
			u.RawQuery = q.Encode()
			return u.String()
		},
	}
	tlsKinds[NATS] = true
	authKinds[NATS] = true
}

// readyNATS reads the server's INFO (upgrading to TLS when the server
// asks for it), sends CONNECT with the credentials and PING, and wants
// PONG; then it asks JetStream for its account info, which a server still
// recovering its streams does not answer.
func readyNATS(ctx context.Context, s *Server) error {
	c, err := dial(ctx, s.addr)
	if err != nil {
		return err
	}
	defer func() { c.Close() }() // c may become the TLS connection
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "INFO ") {
		return fmt.Errorf("nats: want INFO, got %q", strings.TrimSpace(line))
	}
	if s.tls != nil {
		cfg, err := s.tls.ClientConfig()
		if err != nil {
			return err
		}
		tc := tls.Client(c, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		c = tc
		r = bufio.NewReader(tc)
	}
	conn := map[string]any{"verbose": false, "pedantic": false, "protocol": 1, "headers": true, "no_responders": true}
	switch {
	case s.opts.User != "":
		conn["user"], conn["pass"] = s.opts.User, s.opts.Password
	case s.opts.Password != "":
		conn["auth_token"] = s.opts.Password
	}
	js, _ := json.Marshal(conn)
	inbox := "_INBOX.testserver"
	fmt.Fprintf(c, "CONNECT %s\r\nSUB %s 1\r\nPUB $JS.API.INFO %s 0\r\n\r\nPING\r\n", js, inbox, inbox)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "-ERR 'Authorization Violation'") && s.opts.User == "" && s.opts.Password == "":
			// Users of its own (a config file in Options.Args): up, and
			// it has read its streams before it accepted connections.
			return nil
		case strings.HasPrefix(line, "-ERR"):
			return fmt.Errorf("nats: %s", line)
		case strings.HasPrefix(line, "MSG "):
			// MSG subject sid [reply] size: the JetStream answer.
			f := strings.Fields(line)
			n, _ := strconv.Atoi(f[len(f)-1])
			body := make([]byte, n+2)
			if _, err := io.ReadFull(r, body); err != nil {
				return err
			}
			if !strings.Contains(string(body), `"type":"io.nats.jetstream.api.v1.account_info_response"`) || strings.Contains(string(body), `"error"`) {
				return fmt.Errorf("nats: JetStream not ready: %s", strings.TrimSpace(string(body)))
			}
			return nil
		case strings.HasPrefix(line, "HMSG "):
			// A no-responders status: JetStream not up yet.
			return fmt.Errorf("nats: JetStream not answering yet")
		}
	}
}
