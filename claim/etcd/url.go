package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/stampede-go/stampede/claim"
)

// URLOpener opens etcd:// and etcds:// URLs (see the package doc). Opening
// dials once, asks the server for its minimum lease TTL unless minttl is
// given, and the Backend's Close closes the client.
type URLOpener struct{}

// OpenBackendURL implements claim.URLOpener.
func (*URLOpener) OpenBackendURL(ctx context.Context, u *url.URL) (claim.Backend, error) {
	cfg, opt, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: connect: %w", err)
	}
	b, err := newBackend(ctx, cli, opt, true)
	if err != nil {
		cli.Close()
		return nil, err
	}
	return b, nil
}

// parseURL turns an etcd:// or etcds:// URL into a client config and
// Options. Its errors never contain the password.
func parseURL(u *url.URL) (clientv3.Config, *Options, error) {
	var cfg clientv3.Config
	tlsOn := false
	switch u.Scheme {
	case Scheme:
	case TLSScheme:
		tlsOn = true
	default:
		return cfg, nil, fmt.Errorf("etcd: URL scheme %q: want %s or %s", u.Scheme, Scheme, TLSScheme)
	}
	if u.Opaque != "" || u.Fragment != "" {
		return cfg, nil, errors.New("etcd: malformed URL: want etcd://host:port[,host:port]/prefix")
	}
	p := claim.NewParams(u)
	cfg.DialTimeout = p.Duration("dialtimeout", 5*time.Second)
	opt := &Options{
		Prefix:      strings.Trim(u.Path, "/"),
		MinTTL:      p.Duration("minttl", 0),
		MaxValueLen: p.Int("maxvalue", 0),
	}
	user, pass := p.String("username", ""), p.String("password", "")
	if u.User != nil {
		if user != "" || pass != "" {
			return cfg, nil, errors.New("etcd: credentials given both in the URL's user info and as parameters")
		}
		user = u.User.Username()
		pass, _ = u.User.Password()
	}
	if pass != "" && user == "" {
		return cfg, nil, errors.New("etcd: password given without a user name")
	}
	cfg.Username, cfg.Password = user, pass
	caFile, certFile, keyFile := p.String("cacert", ""), p.String("cert", ""), p.String("key", "")
	serverName := p.String("servername", "")
	if err := p.Err(); err != nil {
		return cfg, nil, fmt.Errorf("etcd: %w", err)
	}
	if !tlsOn && (caFile != "" || certFile != "" || keyFile != "" || serverName != "") {
		return cfg, nil, fmt.Errorf("etcd: cacert, cert, key and servername need %s://", TLSScheme)
	}
	if (certFile == "") != (keyFile == "") {
		return cfg, nil, errors.New("etcd: cert and key must be given together")
	}
	scheme := "http://"
	if tlsOn {
		scheme = "https://"
		tc := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return cfg, nil, fmt.Errorf("etcd: cacert: %w", err)
			}
			tc.RootCAs = x509.NewCertPool()
			if !tc.RootCAs.AppendCertsFromPEM(pem) {
				return cfg, nil, fmt.Errorf("etcd: cacert %q: no PEM certificate", caFile)
			}
		}
		if certFile != "" {
			c, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return cfg, nil, fmt.Errorf("etcd: cert/key: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = tc
	}
	hosts := u.Host
	if hosts == "" {
		hosts = "127.0.0.1"
	}
	for h := range strings.SplitSeq(hosts, ",") {
		if h == "" {
			return cfg, nil, fmt.Errorf("etcd: empty host in %q", hosts)
		}
		if _, port, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "2379")
		} else if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return cfg, nil, fmt.Errorf("etcd: bad port in host %q", h)
		}
		cfg.Endpoints = append(cfg.Endpoints, scheme+h)
	}
	cfg.Logger = zap.NewNop()
	return cfg, opt, nil
}
