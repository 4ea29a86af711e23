package secrettest

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/stampede-go/stampede/claim"
	_ "github.com/stampede-go/stampede/claim/consul"
	_ "github.com/stampede-go/stampede/claim/dynamo"
	_ "github.com/stampede-go/stampede/claim/etcd"
	_ "github.com/stampede-go/stampede/claim/memcache"
	_ "github.com/stampede-go/stampede/claim/memory"
	_ "github.com/stampede-go/stampede/claim/mysql"
	_ "github.com/stampede-go/stampede/claim/nats"
	_ "github.com/stampede-go/stampede/claim/postgres"
	_ "github.com/stampede-go/stampede/claim/redis"
	_ "github.com/stampede-go/stampede/claim/zookeeper"
	"github.com/stampede-go/stampede/flight"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testserver.StopShared()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// sentinel is the secret planted everywhere. It is plain ASCII, so it
// reads the same escaped or not.
const sentinel = "Qz7SentinelPw4x"

// forms are the shapes a leaked secret could take.
func forms() []string {
	return []string{
		sentinel,
		base64.StdEncoding.EncodeToString([]byte("alice:" + sentinel)),
		base64.StdEncoding.EncodeToString([]byte("u:" + sentinel)),
		base64.StdEncoding.EncodeToString([]byte(sentinel)),
	}
}

// sink collects everything that could show a secret, labelled by where it
// came from.
type sink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *sink) add(label string, v any) {
	if v == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fmt.Fprintf(&s.buf, "%s: %v\n%s: %+v\n%s: %#v\n", label, v, label, v, label, v)
	if e, ok := v.(error); ok {
		fmt.Fprintf(&s.buf, "%s: %s\n", label, e.Error())
	}
}

// Printf makes sink go-redis's logger.
func (s *sink) Printf(_ context.Context, format string, v ...any) {
	fmt.Fprintf(s, "go-redis: "+format+"\n", v...)
}

// leaks returns every line of out holding a form of the sentinel.
func leaks(out string) []string {
	var found []string
	for _, line := range strings.Split(out, "\n") {
		for _, f := range forms() {
			if strings.Contains(line, f) {
				found = append(found, line)
				break
			}
		}
	}
	return found
}

type target struct {
	name string
	url  string
	env  []string // KEY=VALUE for the process (and t.Setenv here)
}

// targets starts the servers (with the sentinel as their password or
// token where they take one) and returns URLs that succeed and URLs that
// fail (wrong password, wrong token, nothing listening), all carrying the
// sentinel.
func targets(t *testing.T) []target {
	const closed = "127.0.0.1:1" // nothing listens on port 1
	with := func(raw string, f func(u *url.URL)) string {
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatal(err)
		}
		f(u)
		return u.String()
	}
	wrongPW := func(raw string) string {
		return with(raw, func(u *url.URL) { u.User = url.UserPassword(u.User.Username(), "wrong-"+sentinel) })
	}
	var ts []target
	add := func(name, raw string, env ...string) { ts = append(ts, target{name, raw, env}) }

	redis := testserver.RequireWith(t, testserver.Redis, &testserver.Options{User: "alice", Password: sentinel})
	add("redis ok", redis.URL())
	add("redis wrong password", wrongPW(redis.URL()))
	add("redis closed", "redis://alice:"+sentinel+"@"+closed+"/0?dial_timeout=500ms")
	add("rediss closed", "rediss://alice:"+sentinel+"@"+closed+"/0?dial_timeout=500ms")

	pg := testserver.RequireWith(t, testserver.Postgres, &testserver.Options{User: "alice", Password: sentinel})
	add("postgres ok", pg.URL())
	add("postgres wrong password", wrongPW(pg.URL()))
	add("postgres password param", with(pg.URL(), func(u *url.URL) {
		u.User = url.User("alice")
		u.RawQuery += "&password=wrong-" + sentinel
	}))
	add("postgres closed", "postgres://alice:"+sentinel+"@"+closed+"/db?sslmode=disable&connect_timeout=1")
	add("postgres bad stampede param", "postgres://alice:"+sentinel+"@"+closed+"/db?stampede_bogus=1")

	etcd := testserver.RequireWith(t, testserver.Etcd, &testserver.Options{User: "alice", Password: sentinel})
	add("etcd ok", etcd.URL())
	add("etcd wrong password", wrongPW(etcd.URL()))
	add("etcd password param", "etcd://"+etcd.Addr()+"?username=alice&password=wrong-"+sentinel)
	add("etcd closed", "etcd://alice:"+sentinel+"@"+closed+"?dialtimeout=500ms")

	consul := testserver.RequireWith(t, testserver.Consul, &testserver.Options{Password: sentinel})
	add("consul ok", consul.URL())
	add("consul wrong token", "consul://"+consul.Addr()+"?token=wrong-"+sentinel)
	add("consul basic auth", "consul://u:"+sentinel+"@"+consul.Addr()+"?token="+sentinel)
	add("consul closed", "consul://"+closed+"?token="+sentinel)

	zk := testserver.Shared(t, testserver.ZooKeeper)
	add("zookeeper ok", "zookeeper://alice:"+sentinel+"@"+zk.Addr()+"/secrettest")
	add("zookeeper wrong password", "zookeeper://alice:wrong-"+sentinel+"@"+zk.Addr()+"/secrettest")
	add("zookeeper closed", "zookeeper://alice:"+sentinel+"@"+closed)

	dyn := testserver.Shared(t, testserver.Dynamo)
	dynURL := dyn.URL() + "&create_table=true"
	add("dynamo ok", dynURL, "AWS_ACCESS_KEY_ID=AKIDSTAMPEDE", "AWS_SECRET_ACCESS_KEY="+sentinel)
	add("dynamo endpoint credentials", "dynamodb://stampede?region=us-east-1&endpoint="+url.QueryEscape("http://u:"+sentinel+"@"+dyn.Addr()))
	add("dynamo closed", "dynamodb://stampede?region=us-east-1&endpoint="+url.QueryEscape("http://u:"+sentinel+"@"+closed),
		"AWS_ACCESS_KEY_ID=AKIDSTAMPEDE", "AWS_SECRET_ACCESS_KEY="+sentinel)

	mc := testserver.Shared(t, testserver.Memcache)
	add("memcache user info", "memcache://u:"+sentinel+"@"+mc.Addr())
	add("memcache unknown param", "memcache://"+mc.Addr()+"?password="+sentinel)

	ns := testserver.RequireWith(t, testserver.NATS, &testserver.Options{User: "alice", Password: sentinel})
	add("nats ok", ns.URL())
	add("nats wrong password", wrongPW(ns.URL()))
	add("nats token param", "nats://"+ns.Addr()+"?token=wrong-"+sentinel)
	add("nats closed", "nats://alice:"+sentinel+"@"+closed+"?dial_timeout=500ms")

	my := testserver.RequireWith(t, testserver.MySQL, &testserver.Options{User: "alice", Password: sentinel})
	add("mysql ok", my.URL())
	add("mysql wrong password", wrongPW(my.URL()))
	add("mysql closed", "mysql://alice:"+sentinel+"@"+closed+"/db?dial_timeout=500ms")
	add("mysql bad param", "mysql://alice:"+sentinel+"@"+closed+"/db?bogus=1")
	add("mem user info", "mem://u:"+sentinel+"@secrettest")
	add("unknown scheme", "nosuch://u:"+sentinel+"@host/?token="+sentinel)
	add("malformed", "redis://u:"+sentinel+"@[::1/0")
	return ts
}

// exercise opens raw and calls every method, recording every error and
// every printable value, and runs a flight cache on the backend.
func exercise(t *testing.T, s *sink, tg target) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	op := func(label string, v any) { s.add(tg.name+": "+label, v) }
	b, err := claim.Open(ctx, tg.url)
	op("Open", err)
	if err != nil {
		return
	}
	defer func() { op("Close", b.Close()) }()
	op("Backend", b)
	op("Features", b.Features())
	key := "secret-" + strings.ReplaceAll(tg.name, " ", "-")
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	sub, err := b.Subscribe(cctx, key)
	op("Subscribe", err)
	if err == nil {
		defer sub.Close()
	}
	l, err := b.TryClaim(cctx, key, 5*time.Second)
	op("TryClaim", err)
	op("Lease", l)
	if err == nil {
		op("Commit", b.Commit(cctx, l, []byte("v"), time.Minute))
		_, err = b.Extend(cctx, l, 5*time.Second)
		op("Extend", err)
		op("Release", b.Release(cctx, l))
	}
	op("Release stale", b.Release(cctx, claim.Lease{Key: key, Holder: "x", Token: 1, TTL: time.Second, Deadline: time.Now().Add(time.Second)}))
	op("Set", b.Set(cctx, key, []byte("v"), time.Minute))
	_, err = b.Get(cctx, key)
	op("Get", err)
	op("Notify", b.Notify(cctx, key))
	op("Delete", b.Delete(cctx, key))
	op("Set too large", b.Set(cctx, key, make([]byte, b.Features().MaxValueLen+1), 0))
	op("Publish", b.Publish(cctx, "topic", []byte("m")))

	// flight logs through slog.Default (the sink) by default.
	c, err := flight.New[string](b, &flight.Options[string]{Name: key, OpTimeout: time.Second, WaitTimeout: 5 * time.Second})
	op("flight.New", err)
	if err != nil {
		return
	}
	defer c.Close()
	r, err := c.Fetch(ctx, "Some Key", func(context.Context, string) (string, error) { return "loaded", nil })
	op("flight.Fetch", err)
	op("flight.Result", r)
	op("flight.Invalidate", c.Invalidate(ctx, "Some Key"))
	op("flight.Stats", c.Stats())
}

func TestNoSecretAnywhere(t *testing.T) {
	s := &sink{}
	oldSlog := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug})))
	oldLog := log.Writer()
	log.SetOutput(s)
	goredis.SetLogger(s)
	defer func() {
		slog.SetDefault(oldSlog)
		log.SetOutput(oldLog)
	}()

	ts := targets(t)
	for _, tg := range ts {
		for _, kv := range tg.env {
			k, v, _ := strings.Cut(kv, "=")
			t.Setenv(k, v)
		}
		exercise(t, s, tg)
		for _, kv := range tg.env {
			k, _, _ := strings.Cut(kv, "=")
			os.Unsetenv(k)
		}
	}

	// The stampede command, as a user runs it.
	bin := filepath.Join(t.TempDir(), "stampede")
	build := exec.Command("go", "build", "-o", bin, "github.com/stampede-go/stampede/cmd/stampede")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/stampede: %v\n%s", err, out)
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, tg := range ts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "demo", "-backend", tg.url, "-procs", "2", "-callers", "5", "-min", "1ms", "-max", "3ms")
			cmd.Env = append(os.Environ(), tg.env...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err := cmd.Run()
			fmt.Fprintf(s, "stampede demo (%s, exit %v):\n%s\n", tg.name, err, out.String())
			if strings.HasSuffix(tg.name, " ok") && err != nil {
				t.Errorf("stampede demo -backend %s: %v\n%s", claim.RedactURL(tg.url), err, out.String())
			}
		}()
	}
	wg.Wait()

	out := s.buf.String()
	if found := leaks(out); len(found) > 0 {
		t.Errorf("the sentinel secret shows in %d lines, e.g.:\n%s", len(found), strings.Join(found[:min(len(found), 20)], "\n"))
	}
	if testing.Verbose() {
		io.WriteString(os.Stdout, out)
	}
	// The check can fail: the sentinel is really in the URLs it used.
	if len(leaks(fmt.Sprint(ts))) == 0 {
		t.Fatal("the sentinel is in no URL: the test checks nothing")
	}
}
