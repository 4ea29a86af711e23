package testserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// TLSFiles are the PEM files of a server started with [Options].TLS, all in
// Dir()/tls: a throwaway CA made for this one server, the server's
// certificate (valid for 127.0.0.1, ::1 and localhost; usable as a client
// certificate too, as etcd's gateway needs) and a client
// certificate (common name "stampede-client") that the server accepts.
type TLSFiles struct {
	CAFile         string // the CA certificate that signed both certificates
	CertFile       string // client certificate
	KeyFile        string // client private key (PKCS #8)
	ServerCertFile string
	ServerKeyFile  string
	// ServerName is the name to verify the server's certificate against:
	// "127.0.0.1" (an IP SAN of the certificate).
	ServerName string
}

// ClientConfig returns a tls.Config that trusts only this server's CA and
// presents the client certificate.
func (f *TLSFiles) ClientConfig() (*tls.Config, error) {
	pemCA, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemCA) {
		return nil, errors.New("testserver: no certificate in " + f.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, ServerName: f.ServerName, MinVersion: tls.VersionTLS12}, nil
}

// TLS returns the server's TLS files, or nil when it was not started with
// Options.TLS (or is external).
func (s *Server) TLS() *TLSFiles { return s.tls }

// tlsKinds are the kinds Options.TLS applies to.
var tlsKinds = map[Kind]bool{Redis: true, Postgres: true, Etcd: true, Memcache: true, Consul: true, ZooKeeper: true}

// authKinds are the kinds Options.User applies to.
var authKinds = map[Kind]bool{Redis: true, Postgres: true, Etcd: true}

// checkOptions refuses options a kind does not support, and secrets that
// would not survive a command line or a config file.
func checkOptions(kind Kind, o *Options) error {
	if o.TLS && !tlsKinds[kind] {
		return fmt.Errorf("Options.TLS is not supported for %s", kind)
	}
	if o.User != "" && !authKinds[kind] {
		return fmt.Errorf("Options.User is not supported for %s", kind)
	}
	if o.User != "" && o.Password == "" {
		return errors.New("Options.User needs a Password")
	}
	if o.Password != "" && !authKinds[kind] && kind != Consul {
		return fmt.Errorf("Options.Password is not supported for %s", kind)
	}
	for _, v := range []string{o.User, o.Password} {
		if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune(`"'\:@/%#?&=`, r) }) {
			return errors.New("Options.User and Password must be plain printable ASCII (no spaces, quotes or URL delimiters)")
		}
	}
	return nil
}

// makeTLS writes a fresh CA, server and client certificate into dir/tls.
// The server key belongs to uid/gid when they are >= 0 (PostgreSQL wants
// to own its key).
func makeTLS(dir string, uid, gid int) (*TLSFiles, error) {
	tdir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tdir, 0o755); err != nil {
		return nil, err
	}
	f := &TLSFiles{
		CAFile:         filepath.Join(tdir, "ca.pem"),
		CertFile:       filepath.Join(tdir, "client.pem"),
		KeyFile:        filepath.Join(tdir, "client-key.pem"),
		ServerCertFile: filepath.Join(tdir, "server.pem"),
		ServerKeyFile:  filepath.Join(tdir, "server-key.pem"),
		ServerName:     "127.0.0.1",
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "stampede test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.CAFile, "CERTIFICATE", caDER, 0o644, -1, -1); err != nil {
		return nil, err
	}
	leaf := func(cn string, usage []x509.ExtKeyUsage, certFile, keyFile string, uid, gid int, server bool) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(7 * 24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:  usage,
		}
		if server {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
			tmpl.DNSNames = []string{"localhost"}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der, 0o644, uid, gid); err != nil {
			return err
		}
		return writePEM(keyFile, "PRIVATE KEY", kder, 0o600, uid, gid)
	}
	if err := leaf("127.0.0.1", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, f.ServerCertFile, f.ServerKeyFile, uid, gid, true); err != nil {
		return nil, err
	}
	if err := leaf("stampede-client", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, f.CertFile, f.KeyFile, -1, -1, false); err != nil {
		return nil, err
	}
	return f, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n.Add(n, big.NewInt(1))
}

func writePEM(path, typ string, der []byte, mode os.FileMode, uid, gid int) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode); err != nil {
		return err
	}
	if uid >= 0 {
		return os.Chown(path, uid, gid)
	}
	return nil
}

// dialProto connects to the server's client port for a readiness check or
// a setup step: over TLS (with the client certificate) when the server was
// started with Options.TLS.
func dialProto(ctx context.Context, s *Server) (net.Conn, error) {
	c, err := dial(ctx, s.addr)
	if err != nil || s.tls == nil {
		return c, err
	}
	cfg, err := s.tls.ClientConfig()
	if err != nil {
		c.Close()
		return nil, err
	}
	tc := tls.Client(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// tlsQuery returns URL query parameters naming the CA and the client
// certificate and key, under the given parameter names.
func tlsQuery(f *TLSFiles, ca, cert, key string) string {
	q := url.Values{}
	q.Set(ca, f.CAFile)
	q.Set(cert, f.CertFile)
	q.Set(key, f.KeyFile)
	return q.Encode()
}

// pgLocalOnly: TCP clients must authenticate (or use TLS), so readiness is
// checked over the Unix socket.
func (s *Server) pgLocalOnly() bool { return s.opts.Password != "" || s.tls != nil }

// pgHBA is the pg_hba.conf for the options: local clients are trusted
// (readiness checks, nothing else connects there); TCP clients on loopback
// need TLS (hostssl) with Options.TLS, and scram-sha-256 with a password.
func (s *Server) pgHBA() string {
	method := "trust"
	if s.opts.Password != "" {
		method = "scram-sha-256"
	}
	conn := "host"
	if s.tls != nil {
		conn = "hostssl"
	}
	return "local all all trust\n" +
		conn + " all all 127.0.0.1/32 " + method + "\n" +
		conn + " all all ::1/128 " + method + "\n"
}
