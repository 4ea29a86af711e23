package testserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	if code == 0 {
		// The package starts no goroutines of its own.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func TestEnvVar(t *testing.T) {
	want := map[Kind]string{
		Redis: "STAMPEDE_TEST_REDIS_URL", Postgres: "STAMPEDE_TEST_POSTGRES_URL",
		Memcache: "STAMPEDE_TEST_MEMCACHE_URL", Etcd: "STAMPEDE_TEST_ETCD_URL",
		Consul: "STAMPEDE_TEST_CONSUL_URL", Dynamo: "STAMPEDE_TEST_DYNAMO_URL",
		ZooKeeper: "STAMPEDE_TEST_ZOOKEEPER_URL", NATS: "STAMPEDE_TEST_NATS_URL",
		MySQL: "STAMPEDE_TEST_MYSQL_URL",
	}
	if len(Kinds) != len(want) {
		t.Fatalf("Kinds has %d entries, want %d", len(Kinds), len(want))
	}
	for _, k := range Kinds {
		if got := k.EnvVar(); got != want[k] {
			t.Errorf("%s.EnvVar() = %q, want %q", k, got, want[k])
		}
	}
}

var urlPrefix = map[Kind]string{
	Redis:     "redis://127.0.0.1:",
	Postgres:  "postgres://postgres@127.0.0.1:",
	Memcache:  "memcache://127.0.0.1:",
	Etcd:      "etcd://127.0.0.1:",
	Consul:    "consul://127.0.0.1:",
	Dynamo:    "dynamodb://stampede?region=us-east-1&endpoint=http%3A%2F%2F127.0.0.1%3A",
	ZooKeeper: "zookeeper://127.0.0.1:",
	NATS:      "nats://127.0.0.1:",
	MySQL:     "mysql://stampede:stampede@127.0.0.1:",
}

// TestEveryKind starts each kind for real (through RequireWith, so a missing
// binary skips, or fails under STAMPEDE_TEST_REQUIRE=1), checks that it
// answers its protocol, kills it, restarts it on the same port, stops it,
// and checks that no process of it is left.
func TestEveryKind(t *testing.T) {
	for _, kind := range Kinds {
		t.Run(string(kind), func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			s := RequireWith(t, kind, nil)
			t.Logf("%s started in %v at %s (pid %d)", kind, time.Since(start).Round(time.Millisecond), s.URL(), s.Pid())

			port := s.Addr()[strings.LastIndex(s.Addr(), ":")+1:]
			if want := urlPrefix[kind] + port; !strings.HasPrefix(s.URL(), want) {
				t.Errorf("URL() = %q, want prefix %q", s.URL(), want)
			}
			if ext, err := External(kind, s.URL()); err != nil || ext.Addr() != s.Addr() {
				t.Errorf("URL() %q does not parse back to Addr() %s: %v", s.URL(), s.Addr(), err)
			}
			if err := specs[kind].ready(ctxT(t), s); err != nil {
				t.Fatalf("protocol check: %v", err)
			}
			addr, dir := s.Addr(), s.Dir()

			pid := s.Pid()
			fam := family(pid)
			if err := s.Kill(); err != nil {
				t.Fatalf("Kill: %v", err)
			}
			if n := leftover(pid, fam); n > 0 {
				t.Fatalf("%d of the %d processes of server %d still alive after Kill", n, len(fam), pid)
			}
			if s.Pid() != 0 || s.Running() {
				t.Errorf("after Kill: Pid() = %d, Running() = %v", s.Pid(), s.Running())
			}
			if err := s.Kill(); err == nil {
				t.Errorf("second Kill succeeded, want an error")
			}
			if _, err := os.Stat(dir); err != nil {
				t.Fatalf("data dir gone after Kill: %v", err)
			}

			start = time.Now()
			if err := s.Restart(ctxT(t)); err != nil {
				t.Fatalf("Restart: %v", err)
			}
			t.Logf("%s restarted in %v", kind, time.Since(start).Round(time.Millisecond))
			if s.Addr() != addr {
				t.Errorf("Restart moved the server from %s to %s", addr, s.Addr())
			}
			if err := s.Restart(ctxT(t)); err == nil {
				t.Errorf("Restart of a running server succeeded, want an error")
			}
			if err := specs[kind].ready(ctxT(t), s); err != nil {
				t.Fatalf("protocol check after Restart: %v", err)
			}

			pid = s.Pid()
			fam = family(pid)
			start = time.Now()
			if err := s.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			t.Logf("%s stopped in %v", kind, time.Since(start).Round(time.Millisecond))
			if n := leftover(pid, fam); n > 0 {
				t.Errorf("%d of the %d processes of server %d still alive after Stop", n, len(fam), pid)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("Stop left %s (stat: %v)", dir, err)
			}
			if err := s.Stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
			if err := s.Restart(ctxT(t)); err == nil {
				t.Errorf("Restart after Stop succeeded, want an error")
			}
		})
	}
}

// TestRedisKillKeepsAOF: with AppendOnly, a key written before Kill is
// there after Restart; without it, Shutdown and Restart come back empty.
func TestRedisKillKeepsAOF(t *testing.T) {
	t.Parallel()
	s := RequireWith(t, Redis, &Options{AppendOnly: true, Password: "s3cret"})
	if !strings.HasPrefix(s.URL(), "redis://:s3cret@127.0.0.1:") {
		t.Errorf("URL() = %q, want the password in it", s.URL())
	}
	if got := redisDo(t, s, "SET", "k", "v"); got != "+OK" {
		t.Fatalf("SET: %q", got)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := redisDo(t, s, "GET", "k"); got != "v" {
		t.Fatalf("GET after Kill+Restart with AOF = %q, want v", got)
	}

	p := RequireWith(t, Redis, nil)
	redisDo(t, p, "SET", "k", "v")
	if err := p.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := p.Restart(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := redisDo(t, p, "GET", "k"); got != "(nil)" {
		t.Fatalf("GET after Shutdown+Restart without persistence = %q, want (nil)", got)
	}
}

// TestPostgresKillRestart: a committed row survives SIGKILL of the whole
// server (postmaster and backends) and a restart on the same port.
func TestPostgresKillRestart(t *testing.T) {
	t.Parallel()
	s := RequireWith(t, Postgres, nil)
	pgExec(t, s, "CREATE TABLE t (v text); INSERT INTO t VALUES ('survives')")
	// A second session keeps a backend process alive across the Kill.
	c := pgConnect(t, s)
	defer c.Close()
	pid := s.Pid()
	fam := family(pid)
	if len(fam) < 3 {
		t.Errorf("postgres family %v: want the postmaster, its helpers and our backend", fam)
	}
	if err := s.Kill(); err != nil {
		t.Fatal(err)
	}
	if n := leftover(pid, fam); n > 0 {
		t.Fatalf("%d of the %d postgres processes left after Kill", n, len(fam))
	}
	if err := s.Restart(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if got := pgExec(t, s, "SELECT v FROM t"); got != "survives" {
		t.Fatalf("after Kill+Restart: SELECT = %q, want survives", got)
	}
}

func TestShared(t *testing.T) {
	t.Parallel()
	a := Shared(t, Memcache)
	b := Shared(t, Memcache)
	if a != b {
		t.Fatalf("Shared returned two servers: %v, %v", a, b)
	}
	if err := readyMemcache(ctxT(t), a); err != nil {
		t.Fatal(err)
	}
}

func TestRequireFromEnv(t *testing.T) {
	t.Setenv(Redis.EnvVar(), ComposeURLs[Redis])
	s := Require(t, Redis)
	if !s.External() || s.URL() != ComposeURLs[Redis] || s.Addr() != "127.0.0.1:16379" || s.Pid() != 0 {
		t.Fatalf("Require with %s set: %+v", Redis.EnvVar(), s)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("Stop of external server: %v", err)
	}
	if err := s.Kill(); !errors.Is(err, ErrExternal) {
		t.Errorf("Kill of external server: %v, want ErrExternal", err)
	}
	if err := s.Restart(ctxT(t)); !errors.Is(err, ErrExternal) {
		t.Errorf("Restart of external server: %v, want ErrExternal", err)
	}
	if sh := Shared(t, Redis); !sh.External() || sh.URL() != ComposeURLs[Redis] {
		t.Errorf("Shared with %s set: %+v", Redis.EnvVar(), sh)
	}
}

func TestExternalAddr(t *testing.T) {
	want := map[Kind]string{
		Redis: "127.0.0.1:16379", Postgres: "127.0.0.1:15432", Memcache: "127.0.0.1:21211",
		Etcd: "127.0.0.1:12379", Consul: "127.0.0.1:18500", Dynamo: "127.0.0.1:18000",
		ZooKeeper: "127.0.0.1:12181", NATS: "127.0.0.1:14222", MySQL: "127.0.0.1:13306",
	}
	for _, k := range Kinds {
		s, err := External(k, ComposeURLs[k])
		if err != nil {
			t.Errorf("External(%s): %v", k, err)
			continue
		}
		if s.Addr() != want[k] {
			t.Errorf("External(%s).Addr() = %q, want %q", k, s.Addr(), want[k])
		}
	}
	if _, err := External(Dynamo, "dynamodb://stampede?region=us-east-1"); err == nil {
		t.Errorf("External(dynamo) without endpoint succeeded")
	}
	if _, err := External(Redis, "redis://:pw@nohostport/0"); err == nil || strings.Contains(err.Error(), "pw") {
		t.Errorf("External(redis) without port: %v (want an error without the password)", err)
	}
}

func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	for _, k := range []Kind{Redis, Memcache, Dynamo, ZooKeeper} {
		_, err := Start(context.Background(), k, nil)
		if !errors.Is(err, ErrMissing) {
			t.Errorf("Start(%s) with empty PATH: %v, want ErrMissing", k, err)
		}
	}
	if _, err := Start(context.Background(), "nosuch", nil); err == nil || errors.Is(err, ErrMissing) {
		t.Errorf("Start(nosuch): %v", err)
	}
}

// leftover counts the live processes of a server's group and family.
func leftover(pgid int, fam []member) int {
	n := 0
	if groupAlive(pgid) {
		n++
	}
	for _, m := range fam {
		if m.alive() {
			n++
		}
	}
	return n
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// redisDo runs one command and returns a simple or bulk reply as text.
func redisDo(t *testing.T, s *Server, args ...string) string {
	t.Helper()
	c, err := dial(ctxT(t), s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	send := func(args ...string) string {
		fmt.Fprintf(c, "*%d\r\n", len(args))
		for _, a := range args {
			fmt.Fprintf(c, "$%d\r\n%s\r\n", len(a), a)
		}
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "$-1" {
			return "(nil)"
		}
		if strings.HasPrefix(line, "$") {
			v, err := r.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			return strings.TrimRight(v, "\r\n")
		}
		return line
	}
	if s.opts.Password != "" {
		if got := send("AUTH", s.opts.Password); got != "+OK" {
			t.Fatalf("AUTH: %q", got)
		}
	}
	return send(args...)
}

func pgConnect(t *testing.T, s *Server) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608)
	for _, kv := range []string{"user", "postgres", "database", "postgres"} {
		body = append(append(body, kv...), 0)
	}
	body = append(body, 0)
	c.Write(append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...))
	if _, err := pgRead(c); err != nil {
		t.Fatal(err)
	}
	return c
}

// pgRead reads messages until ReadyForQuery, returning the first column of
// the last DataRow.
func pgRead(c net.Conn) (string, error) {
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var val string
	var perr error
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return "", err
		}
		payload := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(c, payload); err != nil {
			return "", err
		}
		switch hdr[0] {
		case 'E':
			perr = errors.New(pgError(payload))
		case 'D':
			if n := binary.BigEndian.Uint16(payload); n > 0 {
				l := int32(binary.BigEndian.Uint32(payload[2:]))
				if l >= 0 {
					val = string(payload[6 : 6+l])
				}
			}
		case 'Z':
			return val, perr
		}
	}
}

func pgExec(t *testing.T, s *Server, sql string) string {
	t.Helper()
	c := pgConnect(t, s)
	defer c.Close()
	msg := append([]byte{'Q'}, binary.BigEndian.AppendUint32(nil, uint32(len(sql)+5))...)
	msg = append(append(msg, sql...), 0)
	c.Write(msg)
	v, err := pgRead(c)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func TestSweep(t *testing.T) {
	dead, err := os.MkdirTemp("", "stampede-sweeptest-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dead)
	live, err := os.MkdirTemp("", "stampede-sweeptest-*")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(live)
	os.WriteFile(dead+"/"+ownerFile, []byte("1 0\n"), 0o644) // pid 1, but not started at tick 0
	os.WriteFile(live+"/"+ownerFile, []byte(selfTag()+"\n"), 0o644)
	sweep()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Errorf("sweep kept the directory of a dead owner: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("sweep removed the directory of a live owner: %v", err)
	}
}
