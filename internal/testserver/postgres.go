//go:build unix

package testserver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func init() {
	specs[Postgres] = &spec{
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
	}
}

// readyPostgres opens a real session (startup message as the superuser to
// database postgres) and wants ReadyForQuery; "the database system is
// starting up" comes back as an ErrorResponse. A server with a password or
// TLS is checked through its Unix socket, where pg_hba.conf trusts local
// clients.
func readyPostgres(ctx context.Context, s *Server) error {
	var c net.Conn
	var err error
	if s.pgLocalOnly() {
		var d net.Dialer
		c, err = d.DialContext(ctx, "unix", filepath.Join(s.dir, "sock", ".s.PGSQL."+strconv.Itoa(s.ports[0])))
		if err == nil {
			deadline, ok := ctx.Deadline()
			if !ok {
				deadline = time.Now().Add(2 * time.Second)
			}
			c.SetDeadline(deadline)
		}
	} else {
		c, err = dial(ctx, s.addr)
	}
	if err != nil {
		return err
	}
	defer c.Close()
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608) // protocol 3.0
	for _, kv := range []string{"user", s.pgUser(), "database", "postgres"} {
		body = append(append(body, kv...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	if _, err := c.Write(append(msg, body...)); err != nil {
		return err
	}
	r := bufio.NewReader(c)
	for {
		typ, err := r.ReadByte()
		if err != nil {
			return err
		}
		var n uint32
		if err := binary.Read(r, binary.BigEndian, &n); err != nil {
			return err
		}
		if n < 4 || n > 1<<20 {
			return fmt.Errorf("postgres: bad message length %d", n)
		}
		payload := make([]byte, n-4)
		if _, err := io.ReadFull(r, payload); err != nil {
			return err
		}
		switch typ {
		case 'R': // authentication: 0 is AuthenticationOk (trust)
			if len(payload) >= 4 && binary.BigEndian.Uint32(payload) != 0 {
				return fmt.Errorf("postgres: authentication required (code %d), want trust", binary.BigEndian.Uint32(payload))
			}
		case 'E':
			return fmt.Errorf("postgres: %s", pgError(payload))
		case 'Z':
			c.Write([]byte{'X', 0, 0, 0, 4}) // Terminate
			return nil
		}
	}
}

func pgError(payload []byte) string {
	var parts []string
	for _, f := range bytes.Split(payload, []byte{0}) {
		if len(f) > 1 && (f[0] == 'M' || f[0] == 'C') {
			parts = append(parts, string(f[1:]))
		}
	}
	return strings.Join(parts, " ")
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

// pgDirs makes s's directories ready for a PostgreSQL server: the socket
// directory made, and the server's, the data and the socket directories
// owned by the postgres user when root (whose credential it returns, nil
// otherwise); the data directory mode 0700.
func pgDirs(s *Server) (*syscall.Credential, error) {
	sock := filepath.Join(s.dir, "sock")
	if err := os.MkdirAll(sock, 0o700); err != nil {
		return nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	if cred != nil {
		for _, d := range []string{s.dir, s.dataDir(), sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
	}
	return cred, os.Chmod(s.dataDir(), 0o700)
}

// pgTool runs PostgreSQL's program name (initdb, pg_basebackup, pg_ctl:
// next to the server's binary, else on PATH) with args in s's directory,
// as the postgres user when root.
func pgTool(ctx context.Context, s *Server, cred *syscall.Credential, name string, args ...string) error {
	bin := filepath.Join(filepath.Dir(s.bin), name)
	if !isExec(bin) {
		var err error
		if bin, err = exec.LookPath(name); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = s.dir
	cmd.SysProcAttr = sysProcAttr()
	cmd.SysProcAttr.Credential = cred
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s: %v\n%s", name, err, out)
	}
	return nil
}

// preparePostgres runs initdb (as the postgres user when root) into
// Dir()/data, with trust authentication for the postgres superuser.
func preparePostgres(ctx context.Context, s *Server) error {
	cred, err := pgDirs(s)
	if err != nil {
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
	if err := pgTool(ctx, s, cred, "initdb", args...); err != nil {
		return err
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

// pgUser is the PostgreSQL superuser's name.
func (s *Server) pgUser() string {
	if s.opts.User != "" {
		return s.opts.User
	}
	return "postgres"
}
