//go:build unix

package testserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// spec is what differs between kinds.
type spec struct {
	nports          int                                       // ports[0] is the client port
	binary          func(ctx context.Context) (string, error) // errors wrap ErrMissing
	prepare         func(ctx context.Context, s *Server) error
	keepDataOnRetry bool // the data dir does not depend on the ports
	args            func(s *Server) ([]string, error)
	env             []string
	asPostgres      bool
	stopSignal      syscall.Signal
	ready           func(ctx context.Context, s *Server) error
	setup           func(ctx context.Context, s *Server) error // once, after the first start
	url             func(s *Server) string
}

var specs = map[Kind]*spec{
	Redis: {
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
	},
	Postgres: {
		nports:          1,
		binary:          postgresBinary,
		prepare:         preparePostgres,
		keepDataOnRetry: true,
		asPostgres:      true,
		stopSignal:      syscall.SIGINT, // fast shutdown (SIGTERM waits for clients)
		args: func(s *Server) ([]string, error) {
			a := []string{
				"-D", s.dataDir(), "-p", strconv.Itoa(s.ports[0]),
				"-k", filepath.Join(s.dir, "sock"),
				"-c", "listen_addresses=127.0.0.1",
				"-c", "fsync=off", "-c", "full_page_writes=off", // a process crash (Kill) loses nothing: no synchronous_commit=off
				"-c", "max_connections=200",
				"-c", "password_encryption=scram-sha-256",
			}
			if s.tls != nil {
				a = append(a, "-c", "ssl=on",
					"-c", "ssl_cert_file="+s.tls.ServerCertFile, "-c", "ssl_key_file="+s.tls.ServerKeyFile,
					"-c", "ssl_ca_file="+s.tls.CAFile)
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyPostgres,
		url: func(s *Server) string {
			u := url.URL{Scheme: "postgres", Host: s.addr, Path: "/postgres", User: url.User(s.pgUser())}
			if s.opts.Password != "" {
				u.User = url.UserPassword(s.pgUser(), s.opts.Password)
			}
			if s.tls != nil {
				u.RawQuery = "sslmode=verify-full&" + tlsQuery(s.tls, "sslrootcert", "sslcert", "sslkey")
			} else {
				u.RawQuery = "sslmode=disable"
			}
			return u.String()
		},
	},
	Memcache: {
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
	},
	Etcd: {
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
	},
	Consul: {
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
				q.Set("cafile", s.tls.CAFile)
				q.Set("certfile", s.tls.CertFile)
				q.Set("keyfile", s.tls.KeyFile)
			}
			u.RawQuery = q.Encode()
			return u.String()
		},
	},
	Dynamo: {
		nports:     1,
		binary:     lookPath("node"),
		stopSignal: syscall.SIGTERM,
		args: func(s *Server) ([]string, error) {
			cli, err := dynaliteCLI()
			if err != nil {
				return nil, err
			}
			// serve.js wraps cli.js so that a client aborting a request
			// cannot crash the server (dynalite rethrows ECONNRESET).
			a := []string{
				filepath.Join(filepath.Dir(filepath.Dir(filepath.Dir(cli))), "serve.js"), "--host", "127.0.0.1", "--port", strconv.Itoa(s.ports[0]),
				"--path", s.dataDir(),
				"--createTableMs", "0", "--deleteTableMs", "0", "--updateTableMs", "0",
			}
			return append(a, s.opts.Args...), nil
		},
		ready: readyDynamo,
		url: func(s *Server) string {
			return "dynamodb://stampede?region=us-east-1&endpoint=" + url.QueryEscape("http://"+s.addr)
		},
	},
	ZooKeeper: {
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
	},
}

func init() {
	// Checked here rather than in the literal: dynalite and ZooKeeper need
	// more than the executable.
	node := specs[Dynamo].binary
	specs[Dynamo].binary = func(ctx context.Context) (string, error) {
		bin, err := node(ctx)
		if err != nil {
			return "", err
		}
		if _, err := dynaliteCLI(); err != nil {
			return "", err
		}
		return bin, nil
	}
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

func lookPath(name string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%s not found on PATH: %w", name, ErrMissing)
		}
		return p, nil
	}
}

// repoRoot walks up from the working directory to the directory holding
// go.mod and tools/.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if st, err := os.Stat(filepath.Join(dir, "tools")); err == nil && st.IsDir() {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no repository root (a directory with go.mod and tools/) above the working directory: %w", ErrMissing)
		}
		dir = parent
	}
}

var goTools struct {
	mu    sync.Mutex
	paths map[string]string
}

// goTool returns the path of the binary `go tool -n name` prints in
// tools/<module>, building it if needed (the first Consul build takes
// minutes: scripts/install-backends prebuilds both). Cached per process.
func goTool(module, name string) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		goTools.mu.Lock()
		defer goTools.mu.Unlock()
		if p, ok := goTools.paths[module]; ok {
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		gobin, err := exec.LookPath("go")
		if err != nil {
			return "", fmt.Errorf("go not found on PATH (needed to build %s): %w", module, ErrMissing)
		}
		cmd := exec.CommandContext(ctx, gobin, "tool", "-n", name)
		cmd.Dir = filepath.Join(root, "tools", module)
		cmd.Env = append(os.Environ(), "GOWORK=off")
		out, err := cmd.Output()
		if ctx.Err() != nil {
			return "", fmt.Errorf("go tool -n %s in tools/%s: %w", name, module, ctx.Err())
		}
		if err != nil {
			msg := err.Error()
			if ee, ok := err.(*exec.ExitError); ok {
				msg = strings.TrimSpace(string(ee.Stderr))
			}
			return "", fmt.Errorf("go tool -n %s in tools/%s: %s: %w", name, module, msg, ErrMissing)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		p := strings.TrimSpace(lines[len(lines)-1])
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("go tool -n %s printed %q: %v: %w", name, p, err, ErrMissing)
		}
		if goTools.paths == nil {
			goTools.paths = map[string]string{}
		}
		goTools.paths[module] = p
		return p, nil
	}
}

func dynaliteCLI() (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	cli := filepath.Join(root, "tools", "dynalite", "node_modules", "dynalite", "cli.js")
	if _, err := os.Stat(cli); err != nil {
		return "", fmt.Errorf("dynalite not installed (%s; npm ci in tools/dynalite): %w", cli, ErrMissing)
	}
	return cli, nil
}

// postgresBinary finds postgres and initdb on PATH, else in Debian's
// /usr/lib/postgresql/<major>/bin (the newest).
func postgresBinary(context.Context) (string, error) {
	pg, err1 := exec.LookPath("postgres")
	_, err2 := exec.LookPath("initdb")
	if err1 == nil && err2 == nil {
		return pg, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return pgMajor(dirs[i]) > pgMajor(dirs[j]) })
	for _, d := range dirs {
		if isExec(filepath.Join(d, "postgres")) && isExec(filepath.Join(d, "initdb")) {
			return filepath.Join(d, "postgres"), nil
		}
	}
	return "", fmt.Errorf("postgres and initdb not found on PATH or in /usr/lib/postgresql/*/bin: %w", ErrMissing)
}

func pgMajor(bindir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(bindir)), 64)
	return v
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

func initdbPath(postgres string) string {
	if p := filepath.Join(filepath.Dir(postgres), "initdb"); isExec(p) {
		return p
	}
	p, _ := exec.LookPath("initdb")
	return p
}

// preparePostgres runs initdb (as the postgres user when root) into
// Dir()/data, with trust authentication for the postgres superuser.
func preparePostgres(ctx context.Context, s *Server) error {
	sock := filepath.Join(s.dir, "sock")
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return err
	}
	cred, err := postgresCredential()
	if err != nil {
		return err
	}
	if cred != nil {
		for _, d := range []string{s.dir, s.dataDir(), sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
	}
	if err := os.Chmod(s.dataDir(), 0o700); err != nil {
		return err
	}
	args := []string{"-D", s.dataDir(), "-U", s.pgUser(), "-A", "trust", "-E", "UTF8", "--no-locale", "-N"}
	if s.opts.Password != "" {
		// The superuser's password, stored as SCRAM-SHA-256 (initdb's
		// default password_encryption since PostgreSQL 14).
		pw := filepath.Join(s.dir, "pwfile")
		if err := os.WriteFile(pw, []byte(s.opts.Password+"\n"), 0o600); err != nil {
			return err
		}
		defer os.Remove(pw)
		if cred != nil {
			if err := os.Chown(pw, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
		args = append(args, "--pwfile", pw)
	}
	cmd := exec.CommandContext(ctx, initdbPath(s.bin), args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = cred
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if s.pgLocalOnly() {
		hba := filepath.Join(s.dataDir(), "pg_hba.conf")
		if err := os.WriteFile(hba, []byte(s.pgHBA()), 0o600); err != nil {
			return err
		}
		if cred != nil {
			if err := os.Chown(hba, int(cred.Uid), int(cred.Gid)); err != nil {
				return err
			}
		}
	}
	return nil
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
