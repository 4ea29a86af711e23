//go:build unix

package testserver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

func init() {
	specs[Memcache] = &spec{
		nports: 1,
		binary: lookPath("memcached"),
		// memcached keeps nothing, and takes up to a second (its clock
		// tick) to act on SIGTERM.
		stopSignal: syscall.SIGKILL,
		args: func(s *Server) ([]string, error) {
			a := []string{"-l", "127.0.0.1", "-p", strconv.Itoa(s.ports[0]), "-U", "0", "-m", "64", "-c", "4096"}
			if os.Geteuid() == 0 {
				a = append(a, "-u", "root") // memcached refuses root without -u
			}
			if s.tls != nil {
				// ssl_verify_mode=2: a client certificate is required.
				a = append(a, "-Z", "-o", "ssl_chain_cert="+s.tls.ServerCertFile+",ssl_key="+s.tls.ServerKeyFile+
					",ssl_ca_cert="+s.tls.CAFile+",ssl_verify_mode=2")
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyMemcache,
		url: func(s *Server) string {
			if s.tls != nil {
				return "memcache://" + s.addr + "?tls=true&" + tlsQuery(s.tls, "cacert", "cert", "key")
			}
			return "memcache://" + s.addr
		},
	}
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
