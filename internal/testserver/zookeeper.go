//go:build unix

package testserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

func init() {
	specs[ZooKeeper] = &spec{
		nports:     2, // client; with Options.TLS the client port is the TLS one and this the plain one (readiness)
		binary:     lookPath("java"),
		stopSignal: syscall.SIGTERM,
		args:       zookeeperArgs,
		ready:      readyZooKeeper,
		url: func(s *Server) string {
			if s.tls != nil {
				return "zookeeper://" + s.addr + "?tls=true&" + tlsQuery(s.tls, "cacert", "cert", "key")
			}
			return "zookeeper://" + s.addr
		},
	}
	// ZooKeeper needs more than java: its jars.
	java := specs[ZooKeeper].binary
	specs[ZooKeeper].binary = func(ctx context.Context) (string, error) {
		bin, err := java(ctx)
		if err != nil {
			return "", err
		}
		if _, err := zookeeperClasspath(); err != nil {
			return "", err
		}
		return bin, nil
	}
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

var zkCP struct {
	once sync.Once
	cp   string
	err  error
}

// zookeeperClasspath finds ZooKeeper's jars: Debian's /usr/share/java (whose
// zookeeper.jar lists its dependencies in its manifest) plus an SLF4J
// binding, or the lib/ directory of an upstream install ($ZOOKEEPER_HOME,
// /usr/share/zookeeper, /opt/zookeeper).
func zookeeperClasspath() (string, error) {
	zkCP.once.Do(func() {
		if _, err := os.Stat("/usr/share/java/zookeeper.jar"); err == nil {
			cp := []string{"/usr/share/java/zookeeper.jar"}
			for _, b := range []string{"/usr/share/java/slf4j-simple.jar", "/usr/share/java/slf4j-jdk14.jar"} {
				if _, err := os.Stat(b); err == nil {
					cp = append(cp, b)
					break
				}
			}
			zkCP.cp = strings.Join(cp, ":")
			return
		}
		var homes []string
		if h := os.Getenv("ZOOKEEPER_HOME"); h != "" {
			homes = append(homes, h)
		}
		homes = append(homes, "/usr/share/zookeeper", "/opt/zookeeper")
		for _, h := range homes {
			jars, _ := filepath.Glob(filepath.Join(h, "lib", "*.jar"))
			main, _ := filepath.Glob(filepath.Join(h, "zookeeper-*.jar"))
			jars = append(jars, main...)
			if len(jars) > 0 {
				zkCP.cp = filepath.Join(h, "conf") + ":" + strings.Join(jars, ":")
				return
			}
		}
		zkCP.err = fmt.Errorf("ZooKeeper jars not found (/usr/share/java/zookeeper.jar, $ZOOKEEPER_HOME/lib): %w", ErrMissing)
	})
	return zkCP.cp, zkCP.err
}

// zookeeperArgs writes Dir()/zoo.cfg for the current port and returns the
// java command line of a standalone server.
func zookeeperArgs(s *Server) ([]string, error) {
	cp, err := zookeeperClasspath()
	if err != nil {
		return nil, err
	}
	cfg := []string{
		"tickTime=100", // minimum session timeout 2 x tickTime = 200 ms
		"maxSessionTimeout=60000",
		"dataDir=" + s.dataDir(),
		"clientPortAddress=127.0.0.1",
		"admin.enableServer=false",
		"4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons,envi,wchs",
		"forceSync=no",
		"maxClientCnxns=0",
	}
	jvm := []string{
		"-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Djava.net.preferIPv4Stack=true",
		"-Dzookeeper.extendedTypesEnabled=true", // TTL nodes
		"-Dzookeeper.admin.enableServer=false",
	}
	if s.tls == nil {
		cfg = append(cfg, "clientPort="+strconv.Itoa(s.ports[0]))
	} else {
		// TLS on the client port (Netty, client certificates required);
		// a plain port for the four-letter readiness checks only.
		combined := filepath.Join(s.dir, "tls", "server-combined.pem")
		cert, err := os.ReadFile(s.tls.ServerCertFile)
		if err != nil {
			return nil, err
		}
		key, err := os.ReadFile(s.tls.ServerKeyFile)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(combined, append(cert, key...), 0o600); err != nil {
			return nil, err
		}
		cfg = append(cfg,
			"clientPort="+strconv.Itoa(s.ports[1]),
			"secureClientPort="+strconv.Itoa(s.ports[0]),
			"secureClientPortAddress=127.0.0.1",
			"serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
			"ssl.keyStore.location="+combined, "ssl.keyStore.type=PEM",
			"ssl.trustStore.location="+s.tls.CAFile, "ssl.trustStore.type=PEM",
			"ssl.clientAuth=need",
		)
		// Debian's zookeeper.jar manifest lists only some of Netty.
		for _, j := range []string{"/usr/share/java/netty-codec.jar", "/usr/share/java/netty-resolver.jar"} {
			if _, err := os.Stat(j); err == nil {
				cp += ":" + j
			}
		}
	}
	for _, a := range s.opts.Args {
		if strings.HasPrefix(a, "-") {
			jvm = append(jvm, a)
		} else {
			cfg = append(cfg, a)
		}
	}
	path := filepath.Join(s.dir, "zoo.cfg")
	if err := os.WriteFile(path, []byte(strings.Join(cfg, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	return append(jvm, "-cp", cp, "org.apache.zookeeper.server.ZooKeeperServerMain", path), nil
}
