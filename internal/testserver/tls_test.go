package testserver

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestTLSAndAuth starts every kind that supports them with TLS and
// credentials: Start's readiness checks speak TLS with the client
// certificate and log in, so a start proves the server accepts both; a
// plain-text connection must then be refused.
func TestTLSAndAuth(t *testing.T) {
	for _, tc := range []struct {
		kind   Kind
		opts   Options
		scheme string
		params []string
	}{
		{Redis, Options{TLS: true, User: "alice", Password: "alice-pw"}, "rediss", []string{"cacert", "cert", "key"}},
		{Postgres, Options{TLS: true, User: "alice", Password: "alice-pw"}, "postgres", []string{"sslmode", "sslrootcert", "sslcert", "sslkey"}},
		{Etcd, Options{TLS: true, User: "alice", Password: "alice-pw"}, "etcds", []string{"cacert", "cert", "key"}},
		{Memcache, Options{TLS: true}, "memcache", []string{"tls", "cacert", "cert", "key"}},
		{Consul, Options{TLS: true, Password: "mgmt-token"}, "consuls", []string{"token", "cacert", "cert", "key"}},
		{ZooKeeper, Options{TLS: true}, "zookeeper", []string{"tls", "cacert", "cert", "key"}},
	} {
		t.Run(string(tc.kind), func(t *testing.T) {
			t.Parallel()
			s := RequireWith(t, tc.kind, &tc.opts)
			if s.TLS() == nil {
				t.Fatal("TLS() = nil")
			}
			if _, err := s.TLS().ClientConfig(); err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(s.URL())
			if err != nil {
				t.Fatal(err)
			}
			if u.Scheme != tc.scheme {
				t.Errorf("URL scheme %q, want %q", u.Scheme, tc.scheme)
			}
			for _, p := range tc.params {
				if !u.Query().Has(p) {
					t.Errorf("URL %s lacks parameter %s", u.Redacted(), p)
				}
			}
			if tc.opts.User != "" && u.User.Username() != tc.opts.User {
				t.Errorf("URL user %q, want %q", u.User.Username(), tc.opts.User)
			}
			if tc.kind == Postgres {
				return // plain-text refusal is checked by claim/postgres's tests (sslmode=disable)
			}
			// A plain-text client gets no protocol answer.
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			c, err := dial(ctx, s.Addr())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			probe := map[Kind]string{Redis: "PING\r\n", Memcache: "version\r\n", Etcd: "GET /health HTTP/1.0\r\n\r\n", Consul: "GET /v1/status/leader HTTP/1.0\r\n\r\n", ZooKeeper: "ruok"}
			io.WriteString(c, probe[tc.kind])
			line, _ := bufio.NewReader(c).ReadString('\n')
			for _, ok := range []string{"+PONG", "VERSION", `"health":"true"`, "200 OK", "imok"} {
				if strings.Contains(line, ok) {
					t.Errorf("plain-text %s client answered %q", tc.kind, line)
				}
			}
		})
	}
}

func TestOptionsRefused(t *testing.T) {
	for _, tc := range []struct {
		kind Kind
		opts Options
	}{
		{Dynamo, Options{TLS: true}},
		{ZooKeeper, Options{User: "u", Password: "p"}},
		{ZooKeeper, Options{Password: "p"}},
		{Memcache, Options{Password: "p"}},
		{Redis, Options{User: "u"}},
		{Redis, Options{Password: "has space"}},
	} {
		if _, err := Start(context.Background(), tc.kind, &tc.opts); err == nil {
			t.Errorf("Start(%s, %+v) succeeded", tc.kind, tc.opts)
		}
	}
}
