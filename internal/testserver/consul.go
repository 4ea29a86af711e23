//go:build unix

package testserver

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	specs[Consul] = &spec{
		nports:     3, // http, serf lan, server rpc
		binary:     goTool("consul", "consul"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			http, https := strconv.Itoa(s.ports[0]), "-1"
			if s.tls != nil {
				http, https = "-1", http
			}
			a := []string{
				"agent", "-dev", "-node", "stampede",
				"-bind", "127.0.0.1", "-client", "127.0.0.1", "-advertise", "127.0.0.1",
				"-http-port", http,
				"-serf-lan-port", strconv.Itoa(s.ports[1]),
				"-server-port", strconv.Itoa(s.ports[2]),
				"-https-port", https, "-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1",
				"-serf-wan-port", "-1",
				"-data-dir", s.dataDir(),
				"-hcl", "disable_update_check = true",
				"-log-level", "info",
			}
			if s.tls != nil {
				a = append(a, "-hcl", fmt.Sprintf(`tls { https { ca_file = %q, cert_file = %q, key_file = %q, verify_incoming = true } }`,
					s.tls.CAFile, s.tls.ServerCertFile, s.tls.ServerKeyFile))
			}
			if s.opts.Password != "" {
				a = append(a, "-hcl", fmt.Sprintf(`acl { enabled = true, default_policy = "deny", tokens { initial_management = %q } }`, s.opts.Password))
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyConsul,
		url: func(s *Server) string {
			u := url.URL{Scheme: "consul", Host: s.addr}
			q := url.Values{}
			if s.opts.Password != "" {
				q.Set("token", s.opts.Password)
			}
			if s.tls != nil {
				u.Scheme = "consuls"
				q.Set("cacert", s.tls.CAFile)
				q.Set("cert", s.tls.CertFile)
				q.Set("key", s.tls.KeyFile)
			}
			u.RawQuery = q.Encode()
			return u.String()
		},
	}
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
