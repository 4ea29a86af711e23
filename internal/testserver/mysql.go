//go:build unix

package testserver

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// MySQL is a MariaDB server (Debian's mariadb-server: mariadbd and
// mariadb-install-db), for the mysql:// backend.
//
// The data directory is made by mariadb-install-db; every start runs an
// init file that creates the database "stampede" and the user
// Options.User (default "stampede") with Options.Password (default
// "stampede"), who may do anything (and grant it: tests make users with
// fewer rights). As root, the server runs as the mysql user: it is started
// through setpriv, which changes the user and sets the parent-death signal
// again (a credential change clears it), then executes mariadbd in place,
// so Pid is the server's. With Options.TLS the server has TLS
// (--ssl-cert/--ssl-key/--ssl-ca) and the user must present a client
// certificate signed by the test CA (REQUIRE X509). InnoDB flushes its log
// to the OS at every commit but does not fsync it
// (innodb_flush_log_at_trx_commit=2): a process crash (Kill) loses
// nothing, a machine crash could.
const MySQL Kind = "mysql"

func init() {
	specs[MySQL] = &spec{
		nports:          1,
		binary:          mysqlBinary,
		prepare:         prepareMySQL,
		keepDataOnRetry: true,
		stopSignal:      syscall.SIGTERM,
		args:            mysqlArgs,
		ready:           readyMySQL,
		url:             mysqlURL,
	}
	tlsKinds[MySQL] = true
	authKinds[MySQL] = true
}

// mysqlDefaultUser and mysqlDefaultPassword are the credentials of a
// server started without Options.User / Password.
const (
	mysqlDefaultUser     = "stampede"
	mysqlDefaultPassword = "stampede"
	mysqlDatabase        = "stampede"
)

func (s *Server) mysqlUser() (string, string) {
	u, p := s.opts.User, s.opts.Password
	if u == "" {
		u = mysqlDefaultUser
	}
	if p == "" {
		p = mysqlDefaultPassword
	}
	return u, p
}

// mysqlBinary returns the program to execute: setpriv as root (it runs
// mariadbd as mysql), mariadbd otherwise.
// mysqlTmp is the server's own temporary directory: its temporary tables
// (mariadb-install-db makes some) are not in the shared /tmp, where a
// cleaner or another server could remove them.
func (s *Server) mysqlTmp() string { return filepath.Join(s.dir, "tmp") }

func mysqlBinary(context.Context) (string, error) {
	if _, err := mysqldPath(); err != nil {
		return "", err
	}
	if _, err := exec.LookPath("mariadb-install-db"); err != nil {
		return "", fmt.Errorf("mariadb-install-db not found on PATH: %w", ErrMissing)
	}
	if os.Geteuid() != 0 {
		return mysqldPath()
	}
	if _, err := user.Lookup("mysql"); err != nil {
		return "", fmt.Errorf("running as root needs a mysql user to run MariaDB as: %v: %w", err, ErrMissing)
	}
	p, err := exec.LookPath("setpriv")
	if err != nil {
		return "", fmt.Errorf("setpriv (util-linux) not found on PATH: %w", ErrMissing)
	}
	return p, nil
}

func mysqldPath() (string, error) {
	for _, n := range []string{"mariadbd", "mysqld"} {
		if p, err := exec.LookPath(n); err == nil {
			return p, nil
		}
		if p := filepath.Join("/usr/sbin", n); isExec(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("mariadbd not found on PATH or in /usr/sbin (apt-get install mariadb-server): %w", ErrMissing)
}

func mysqlIDs() (uid, gid int, err error) {
	u, err := user.Lookup("mysql")
	if err != nil {
		return 0, 0, err
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return uid, gid, nil
}

// sqlString quotes v as an SQL string literal (checkOptions keeps quotes
// and backslashes out of users and passwords; this is belt and braces).
func sqlString(v string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// prepareMySQL makes the data directory (owned by mysql when root) and
// the init file.
func prepareMySQL(ctx context.Context, s *Server) error {
	if err := os.MkdirAll(s.mysqlTmp(), 0o700); err != nil {
		return err
	}
	root := os.Geteuid() == 0
	uid, gid := -1, -1
	if root {
		var err error
		if uid, gid, err = mysqlIDs(); err != nil {
			return fmt.Errorf("%v: %w", err, ErrMissing)
		}
		for _, d := range []string{s.dir, s.dataDir(), s.mysqlTmp()} {
			if err := os.Chown(d, uid, gid); err != nil {
				return err
			}
		}
		if s.tls != nil {
			for _, f := range []string{s.tls.ServerCertFile, s.tls.ServerKeyFile, s.tls.CAFile, filepath.Dir(s.tls.CAFile)} {
				if err := os.Chown(f, uid, gid); err != nil {
					return err
				}
			}
		}
	}
	args := []string{"--no-defaults", "--datadir=" + s.dataDir(), "--auth-root-authentication-method=socket",
		"--skip-test-db", "--skip-name-resolve", "--tmpdir=" + s.mysqlTmp(), "--innodb-log-file-size=16M"}
	if root {
		args = append(args, "--user=mysql")
	}
	cmd := exec.CommandContext(ctx, "mariadb-install-db", args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("mariadb-install-db: %v\n%s", err, out)
	}
	u, p := s.mysqlUser()
	require := ""
	if s.tls != nil {
		require = " REQUIRE X509"
	}
	init := strings.Join([]string{
		"CREATE DATABASE IF NOT EXISTS " + mysqlDatabase,
		"CREATE USER IF NOT EXISTS " + sqlString(u) + "@'%' IDENTIFIED BY " + sqlString(p) + require,
		"GRANT ALL PRIVILEGES ON *.* TO " + sqlString(u) + "@'%' WITH GRANT OPTION",
	}, ";\n") + ";\n"
	initFile := filepath.Join(s.dir, "init.sql")
	if err := os.WriteFile(initFile, []byte(init), 0o600); err != nil {
		return err
	}
	if root {
		return os.Chown(initFile, uid, gid)
	}
	return nil
}

func mysqlArgs(s *Server) ([]string, error) {
	var a []string
	if os.Geteuid() == 0 {
		uid, gid, err := mysqlIDs()
		if err != nil {
			return nil, err
		}
		mysqld, err := mysqldPath()
		if err != nil {
			return nil, err
		}
		a = []string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid), "--init-groups",
			"--pdeathsig=KILL", "--", mysqld}
	}
	a = append(a,
		"--no-defaults", // must come first among mariadbd's options
		"--datadir="+s.dataDir(),
		"--port="+strconv.Itoa(s.ports[0]), "--bind-address=127.0.0.1",
		"--socket="+filepath.Join(s.dir, "mysqld.sock"),
		"--pid-file="+filepath.Join(s.dir, "mysqld.pid"),
		"--init-file="+filepath.Join(s.dir, "init.sql"),
		"--tmpdir="+s.mysqlTmp(),
		"--skip-name-resolve", "--skip-log-bin",
		"--max-connections=500",
		"--innodb-buffer-pool-size=64M",
		"--innodb-log-file-size=16M",         // the default 96 MiB, for every test server, fills /tmp
		"--innodb-flush-log-at-trx-commit=2", // survives a process crash (Kill), no fsync
		"--innodb-doublewrite=0",
	)
	if s.tls != nil {
		a = append(a, "--ssl-cert="+s.tls.ServerCertFile, "--ssl-key="+s.tls.ServerKeyFile, "--ssl-ca="+s.tls.CAFile)
	}
	return append(a, s.opts.Args...), nil
}

// readyMySQL reads the server's greeting (protocol version 10), which a
// server sends once it accepts connections (after the init file ran); an
// error packet (0xff) is not ready.
func readyMySQL(ctx context.Context, s *Server) error {
	c, err := dial(ctx, s.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	var hdr [5]byte
	if _, err := ioReadFull(c, hdr[:]); err != nil {
		return err
	}
	if hdr[4] != 10 {
		return fmt.Errorf("mysql: greeting starts with %#x, want protocol 10", hdr[4])
	}
	return nil
}

func ioReadFull(c interface{ Read([]byte) (int, error) }, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func mysqlURL(s *Server) string {
	u, p := s.mysqlUser()
	r := url.URL{Scheme: "mysql", Host: s.addr, Path: "/" + mysqlDatabase, User: url.UserPassword(u, p)}
	if s.tls != nil {
		r.RawQuery = "tls=true&" + tlsQuery(s.tls, "cacert", "cert", "key")
	}
	return r.String()
}
