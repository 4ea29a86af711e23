package driver

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// TLSFiles are a URL's TLS parameters (see Params.TLS), for drivers that
// read them under other names too. Every zero field is a default: the
// system roots, no client certificate, the server name taken from the
// address dialled.
type TLSFiles struct {
	CA         string // PEM file of the CA certificates to trust instead of the system roots
	Cert, Key  string // PEM files of the client certificate and its private key (both or neither)
	ServerName string // name to verify the server's certificate against
	SkipVerify bool   // do not verify the server's certificate (testing only)
}

// Empty reports whether no parameter was given.
func (f TLSFiles) Empty() bool { return f == TLSFiles{} }

// Config returns a tls.Config (TLS 1.2 or later) for f.
func (f TLSFiles) Config() (*tls.Config, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, errors.New("a client certificate and its key must be given together")
	}
	c := &tls.Config{ServerName: f.ServerName, MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.SkipVerify}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA certificate %q: no PEM certificate in it", f.CA)
		}
	}
	if f.Cert != "" {
		cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			// LoadX509KeyPair's errors describe the PEM blocks, not the key.
			return nil, fmt.Errorf("client certificate %q / key %q: %w", f.Cert, f.Key, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// TLSRefused reports whether err is a TLS handshake that failed for a
// reason that persists, a configuration error (wrap it with
// Misconfigured): a server certificate the client does not trust or that
// does not name the host, a server that does not speak TLS, or an alert
// from the server (no client certificate, an unknown CA, no common
// version).
func TLSRefused(err error) bool {
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		header    tls.RecordHeaderError
		alert     tls.AlertError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid),
		errors.As(err, &verify), errors.As(err, &header), errors.As(err, &alert):
		return true
	case errors.As(err, &op) && op.Op == "remote error":
		// An alert from the server (crypto/tls's type is unexported).
		return strings.HasPrefix(op.Err.Error(), "tls: ")
	}
	return false
}
