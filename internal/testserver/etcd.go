//go:build unix

package testserver

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"syscall"
	"time"
)

func init() {
	specs[Etcd] = &spec{
		nports:     2, // client, peer
		binary:     goTool("etcd", "server"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			client := "http://" + s.addr
			if s.tls != nil {
				client = "https://" + s.addr
			}
			peer := fmt.Sprintf("http://127.0.0.1:%d", s.ports[1])
			a := []string{
				"--name", "stampede", "--data-dir", s.dataDir(),
				"--listen-client-urls", client, "--advertise-client-urls", client,
				"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
				"--initial-cluster", "stampede=" + peer, "--initial-cluster-state", "new",
				// 500 ms election timeout: leases down to 1 s are granted
				// as asked (the minimum is 1.5 x election timeout).
				"--heartbeat-interval", "50", "--election-timeout", "500",
				"--unsafe-no-fsync", "--log-level", "warn",
			}
			if s.tls != nil {
				a = append(a, "--cert-file", s.tls.ServerCertFile, "--key-file", s.tls.ServerKeyFile,
					"--client-cert-auth", "--trusted-ca-file", s.tls.CAFile)
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyEtcd,
		setup: setupEtcd,
		url: func(s *Server) string {
			u := url.URL{Scheme: "etcd", Host: s.addr}
			if s.opts.Password != "" {
				u.User = url.UserPassword(s.etcdUser(), s.opts.Password)
			}
			if s.tls != nil {
				u.Scheme = "etcds"
				u.RawQuery = tlsQuery(s.tls, "cacert", "cert", "key")
			}
			return u.String()
		},
	}
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

// etcdUser is the user etcd's URL logs in as.
func (s *Server) etcdUser() string {
	if s.opts.User != "" {
		return s.opts.User
	}
	return "root"
}

// setupEtcd creates the users and enables authentication through etcd's
// JSON gateway, once, after the first start (etcd keeps it across
// restarts).
func setupEtcd(ctx context.Context, s *Server) error {
	if s.opts.Password == "" {
		return nil
	}
	all := base64.StdEncoding.EncodeToString([]byte{0}) // key "\x00" to range end "\x00": every key
	steps := []struct{ path, body string }{
		{"/v3/auth/user/add", fmt.Sprintf(`{"name":"root","password":%q}`, s.opts.Password)},
		{"/v3/auth/user/grant", `{"user":"root","role":"root"}`},
	}
	if u := s.opts.User; u != "" && u != "root" {
		steps = append(steps,
			struct{ path, body string }{"/v3/auth/user/add", fmt.Sprintf(`{"name":%q,"password":%q}`, u, s.opts.Password)},
			struct{ path, body string }{"/v3/auth/role/add", `{"name":"stampede-rw"}`},
			struct{ path, body string }{"/v3/auth/role/grant", fmt.Sprintf(`{"name":"stampede-rw","perm":{"permType":"READWRITE","key":%q,"range_end":%q}}`, all, all)},
			struct{ path, body string }{"/v3/auth/user/grant", fmt.Sprintf(`{"user":%q,"role":"stampede-rw"}`, u)},
		)
	}
	steps = append(steps, struct{ path, body string }{"/v3/auth/enable", `{}`})
	for _, st := range steps {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		code, body, err := httpDo(cctx, s, "POST", st.path, map[string]string{"Content-Type": "application/json"}, st.body)
		cancel()
		if err != nil {
			return fmt.Errorf("etcd %s: %w", st.path, err)
		}
		if code != 200 {
			return fmt.Errorf("etcd %s: %d %s", st.path, code, strings.TrimSpace(body))
		}
	}
	return nil
}
