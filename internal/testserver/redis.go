//go:build unix

package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	specs[Redis] = &spec{
		nports:     1,
		binary:     lookPath("redis-server"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			a := []string{
				"--bind", "127.0.0.1",
				"--dir", s.dataDir(), "--save", "", "--protected-mode", "no",
				"--daemonize", "no", "--logfile", "",
			}
			if s.tls != nil {
				a = append(a, "--port", "0", "--tls-port", strconv.Itoa(s.ports[0]),
					"--tls-cert-file", s.tls.ServerCertFile, "--tls-key-file", s.tls.ServerKeyFile,
					"--tls-ca-cert-file", s.tls.CAFile, "--tls-auth-clients", "yes")
			} else {
				a = append(a, "--port", strconv.Itoa(s.ports[0]))
			}
			if s.opts.AppendOnly {
				a = append(a, "--appendonly", "yes", "--appendfsync", "always")
			} else {
				a = append(a, "--appendonly", "no")
			}
			switch {
			case s.opts.User != "":
				// An ACL user; the default user (no password) is off.
				a = append(a, "--user", "default", "off",
					"--user", s.opts.User, "on", ">"+s.opts.Password, "~*", "&*", "+@all")
			case s.opts.Password != "":
				a = append(a, "--requirepass", s.opts.Password)
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyRedis,
		url: func(s *Server) string {
			u := url.URL{Scheme: "redis", Host: s.addr, Path: "/0"}
			if s.opts.Password != "" {
				u.User = url.UserPassword(s.opts.User, s.opts.Password)
			}
			if s.tls != nil {
				u.Scheme = "rediss"
				u.RawQuery = tlsQuery(s.tls, "cacert", "cert", "key")
			}
			return u.String()
		},
	}
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
