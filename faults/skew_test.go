package faults

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/clock"
	"github.com/stampede-go/stampede/internal/testserver"
)

// Clock skew and rate drift (issue 17, item 4).
//
// A holder process (this test binary re-executed, skewChild) runs its
// lease clock (internal/clock: the client's Deadline and KeepAlive, and
// the expiry that Consul, DynamoDB and memcached record and compare) with
// an offset and a rate set from skewEnv by this test code, never by the
// library. libfaketime cannot do this: Go reads the vDSO directly. It
// claims a key for one TTL and does not renew it; it then keeps writing
// (Commit with a lease whose Deadline it pushed an hour ahead, as a holder
// that trusts its own slow clock would) every skewCommitEvery. The test,
// on the real clock, claims the key as soon as the backend lets it and
// compares, on the machine's wall clock (shared by both processes):
//
//   - overlap: how long the skewed holder still believed it held the key
//     after the other holder's claim was granted. "raw" is a holder that
//     stops at its Deadline; "keeper" one that stops at KeepAlive's loss
//     signal (Deadline less the default margin, TTL/10), computed from the
//     skewed clock; the keeper's observed OnLost is logged too.
//   - stale writes: the skewed holder's commits sent after the other
//     holder's grant that the backend accepted. Always 0, or the test
//     fails, and the other holder's value must be the one left.
//
// Within the documented margin (clock_skew for the backends that judge
// expiry on client clocks; KeepAlive's margin for a rate drift) the test
// asserts no overlap; beyond it, it logs and records the overlap.
const (
	skewEnv          = "STAMPEDE_FAULTS_SKEW" // "OFFSET RATE", e.g. "-200ms 0.9"
	skewCommitEvery  = 20 * time.Millisecond
	skewMaxCommitFor = 60 * time.Second
)

func init() {
	if os.Getenv(skewEnv) != "" {
		os.Exit(skewChild())
	}
}

// skewMsg is one line of the skewed holder's output. Times are Unix ns of
// the real wall clock.
type skewMsg struct {
	Event string      `json:"event"` // "claimed", "result", "error"
	Error string      `json:"error,omitempty"`
	Lease claim.Lease `json:"lease"`
	Sent  int64       `json:"sent"` // before the granting TryClaim was sent
	Got   int64       `json:"got"`  // its reply
	// RawEnd is when the holder's clock reaches the lease's Deadline;
	// KeepEnd when it reaches KeepAlive's fence (Deadline − margin).
	RawEnd  int64 `json:"raw_end"`
	KeepEnd int64 `json:"keep_end"`
	// KeeperLost is when KeepAlive's OnLost ran (0: not yet).
	KeeperLost int64        `json:"keeper_lost"`
	Commits    []skewCommit `json:"commits,omitempty"`
}

// skewCommit is one of the skewed holder's commits.
type skewCommit struct {
	Sent    int64  `json:"s"`
	Done    int64  `json:"d"`
	Outcome string `json:"o"` // outcome(): "" accepted, "lost", or the error
}

func skewChild() int {
	out := json.NewEncoder(os.Stdout)
	fail := func(err error) int {
		_ = out.Encode(skewMsg{Event: "error", Error: err.Error()})
		return 2
	}
	off, rate, err := parseSkew(os.Getenv(skewEnv))
	if err != nil {
		return fail(err)
	}
	ttl, err := time.ParseDuration(os.Getenv(ttlEnv))
	if err != nil {
		return fail(err)
	}
	key := os.Getenv(keyEnv)
	cl, err := call(60*time.Second, func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, os.Getenv(urlEnv)) })
	if err != nil {
		return fail(err)
	}
	defer cl.Close()
	// The skew starts here, just before the claim: a rate drift has not
	// yet turned into an offset.
	if err := clock.Set(off, rate); err != nil {
		return fail(err)
	}
	defer clock.Reset()
	sent := time.Now()
	l, err := do(func(ctx context.Context) (claim.Lease, error) { return cl.TryClaim(ctx, key, ttl) })
	got := time.Now()
	if err != nil {
		return fail(err)
	}
	// realAt is when the skewed clock reads c, on the real clock.
	realAt := func(c time.Time) time.Time {
		now := time.Now()
		return now.Add(time.Duration(float64(c.Sub(clock.At(now))) / rate))
	}
	// The keeper never renews (interval of an hour): it only reports the
	// loss at its fence, by the skewed clock.
	var lostAt atomic.Int64
	k := cl.KeepAlive(context.Background(), l, &claim.KeepAliveOptions{
		Interval: time.Hour,
		OnLost:   func(error) { lostAt.Store(time.Now().UnixNano()) },
	})
	defer k.Stop()
	margin := min(l.TTL/10, time.Second) // KeepAliveOptions.Margin's default
	m := skewMsg{Event: "claimed", Lease: l, Sent: sent.UnixNano(), Got: got.UnixNano(),
		RawEnd: realAt(l.Deadline).UnixNano(), KeepEnd: realAt(l.Deadline.Add(-margin)).UnixNano()}
	if err := out.Encode(m); err != nil {
		return 2
	}
	stop := make(chan struct{})
	go func() {
		in := bufio.NewScanner(os.Stdin)
		for in.Scan() {
			if in.Text() == "stop" {
				break
			}
		}
		close(stop) // "stop", or stdin closed
	}()
	// The stale holder: it trusts its own clock and goes on writing.
	var commits []skewCommit
	forged := l
	tick := time.NewTicker(skewCommitEvery)
	defer tick.Stop()
	end := time.After(skewMaxCommitFor)
	// After "stop" (sent once the other holder's grant is known) three
	// more commits, so that some are sent after it whatever the latency.
	after := -1
	for seq := 0; after < 3; seq++ {
		forged.Deadline = clock.Now().Add(time.Hour)
		s := time.Now()
		err := call0(5*time.Second, func(ctx context.Context) error {
			return cl.Commit(ctx, forged, []byte("stale "+strconv.Itoa(seq)), 0)
		})
		commits = append(commits, skewCommit{Sent: s.UnixNano(), Done: time.Now().UnixNano(), Outcome: outcome(err)})
		if after >= 0 {
			after++
			continue
		}
		select {
		case <-stop:
			after = 0
		case <-end:
			after = 3
		case <-tick.C:
		}
	}
	r := skewMsg{Event: "result", Commits: commits, KeeperLost: lostAt.Load()}
	if err := out.Encode(r); err != nil {
		return 2
	}
	return 0
}

// parseSkew reads skewEnv: "OFFSET RATE".
func parseSkew(s string) (time.Duration, float64, error) {
	o, r, ok := strings.Cut(s, " ")
	if !ok {
		return 0, 0, fmt.Errorf("%s=%q: want \"OFFSET RATE\"", skewEnv, s)
	}
	off, err := time.ParseDuration(o)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", skewEnv, err)
	}
	rate, err := strconv.ParseFloat(r, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: %w", skewEnv, err)
	}
	return off, rate, nil
}

// skewCase is one clock of the skewed holder.
type skewCase struct {
	name   string
	offset time.Duration // of the holder's clock: negative, behind
	rate   float64
	// clockSkew sets the URL's clock_skew (0: the backend's default);
	// only for the backends that judge expiry on client clocks.
	clockSkew time.Duration
	// within says which holder must not overlap the next one: "raw" (a
	// holder that stops at its Deadline, and so also one that stops at
	// KeepAlive's loss signal), "keeper" (only the latter), "" (none: the
	// overlap is measured).
	within string
	// judge: "client" for the backends that judge expiry on client clocks
	// only (the case is about clock_skew), "server" for the others only,
	// "" for every backend.
	judge string
}

// clientClocks: the backends that judge lease expiry on client clocks, and
// their default clock_skew.
var clientClocks = map[string]time.Duration{"consul": 50 * time.Millisecond, "dynamo": 100 * time.Millisecond, "memcache": 100 * time.Millisecond}

var skewCases = []skewCase{
	// An offset within clock_skew: no overlap.
	{name: "200ms behind, clock_skew 300ms", offset: -200 * time.Millisecond, rate: 1, clockSkew: 300 * time.Millisecond, within: "raw", judge: "client"},
	{name: "200ms ahead, clock_skew 300ms", offset: 200 * time.Millisecond, rate: 1, clockSkew: 300 * time.Millisecond, within: "raw", judge: "client"},
	{name: "2s behind, clock_skew 2.5s", offset: -2 * time.Second, rate: 1, clockSkew: 2500 * time.Millisecond, within: "raw", judge: "client"},
	{name: "2s ahead, clock_skew 2.5s", offset: 2 * time.Second, rate: 1, clockSkew: 2500 * time.Millisecond, within: "raw", judge: "client"},
	// Beyond clock_skew (the default): measured.
	{name: "200ms behind, default clock_skew", offset: -200 * time.Millisecond, rate: 1, judge: "client"},
	{name: "200ms ahead, default clock_skew", offset: 200 * time.Millisecond, rate: 1, judge: "client"},
	{name: "2s behind, default clock_skew", offset: -2 * time.Second, rate: 1, judge: "client"},
	{name: "2s ahead, default clock_skew", offset: 2 * time.Second, rate: 1, judge: "client"},
	// The server's clock judges: an offset of the holder's changes nothing.
	{name: "2s behind", offset: -2 * time.Second, rate: 1, within: "raw", judge: "server"},
	{name: "2s ahead", offset: 2 * time.Second, rate: 1, within: "raw", judge: "server"},
	// Rate drift, default clock_skew. A fast clock gives up early; a slow
	// one late: 10 % slow is KeepAlive's margin (TTL/10) exactly, 5 %
	// within it.
	{name: "rate x1.1", rate: 1.1, within: "raw"},
	{name: "rate x0.95", rate: 0.95, within: "keeper"},
	{name: "rate x0.9", rate: 0.9},
}

// TestSkew runs every skew case against every backend with a server (the
// memory backend has no second process).
func TestSkew(t *testing.T) {
	forEach(t, needsProcesses, func(t *testing.T, b backend) {
		_, client := clientClocks[b.name]
		for _, sc := range skewCases {
			if (sc.judge == "client" && !client) || (sc.judge == "server" && client) {
				continue
			}
			t.Run(strings.NewReplacer(" ", "_", ",", "").Replace(sc.name), func(t *testing.T) {
				skewOnce(t, b, b.sharedURL(t), sc, client)
			})
		}
	})
}

// skewOnce runs one case: see the comment at the top of the file.
func skewOnce(t *testing.T, b backend, u string, sc skewCase, client bool) {
	if sc.clockSkew != 0 {
		u = withParams(u, "clock_skew="+sc.clockSkew.String())
	}
	k := key(t, "skew")
	h := startSkewHolder(t, u, k, b.ttl, sc)
	claimed := h.next(90 * time.Second)
	if claimed.Event != "claimed" {
		t.Fatalf("skewed holder: %s %s", claimed.Event, claimed.Error)
	}
	a := claimed.Lease
	other := open(t, u)
	// Claim as soon as the backend lets us: poll, sleeping half the
	// Remaining the backend reports (a server whose clock runs fast
	// overstates it), then every skewPoll.
	const skewPoll = 3 * time.Millisecond
	var nl claim.Lease
	var bSent, bGot time.Time
	limit := time.Now().Add(a.TTL + sc.clockSkew + 2*skewAbs(sc.offset) + 30*time.Second)
	for {
		bSent = time.Now()
		// A long lease: only the skewed holder's TTL is measured, and the
		// new holder must still hold the key when it commits.
		l, err := call(5*time.Second, func(ctx context.Context) (claim.Lease, error) { return other.TryClaim(ctx, k, 10*time.Second) })
		bGot = time.Now()
		if err == nil {
			nl = l
			break
		}
		if time.Now().After(limit) {
			t.Fatalf("no takeover %s after the skewed holder's grant: %v", time.Since(time.Unix(0, claimed.Got)), err)
		}
		wait := skewPoll
		var held *claim.HeldError
		if errors.As(err, &held) && held.Remaining > 40*time.Millisecond {
			wait = min(held.Remaining/2, time.Second)
		}
		time.Sleep(wait)
	}
	if nl.Token <= a.Token {
		t.Errorf("token %d after the skewed holder's %d", nl.Token, a.Token)
	}
	const newValue = "new holder"
	if err := do0(func(ctx context.Context) error { return other.Commit(ctx, nl, []byte(newValue), 0) }); err != nil {
		t.Errorf("the new holder's commit: %v", err)
	}
	// Let the skewed holder write past its own deadline, then stop it.
	rawEnd, keepEnd := time.Unix(0, claimed.RawEnd), time.Unix(0, claimed.KeepEnd)
	time.Sleep(time.Until(skewLater(bGot, rawEnd).Add(300 * time.Millisecond)))
	h.send("stop")
	res := h.next(90 * time.Second)
	if res.Event != "result" {
		t.Fatalf("skewed holder: %s %s", res.Event, res.Error)
	}
	h.exit()

	// Stale writes: accepted commits sent after the grant.
	var stale, refused, accepted, straddling, other0 int
	var lastAccepted time.Time
	for _, c := range res.Commits {
		s, d := time.Unix(0, c.Sent), time.Unix(0, c.Done)
		switch {
		case c.Outcome == "" && s.After(bGot):
			stale++
			t.Errorf("stale write accepted: the skewed holder's commit sent %s after the new holder's grant", s.Sub(bGot))
		case c.Outcome == "":
			accepted++
			lastAccepted = s
			if d.After(bGot) {
				straddling++ // sent before the grant was known, answered after
			}
		case c.Outcome == "lost" && s.After(bGot):
			refused++
		case c.Outcome != "lost":
			other0++
			t.Logf("skewed holder's commit at %s: %s", s.Sub(bGot), c.Outcome)
		}
	}
	if refused == 0 {
		t.Errorf("the skewed holder made no commit after the new holder's grant: nothing shows the fence refuses (%d commits)", len(res.Commits))
	}
	if v, err := do(func(ctx context.Context) ([]byte, error) { return other.Get(ctx, k) }); err != nil || string(v) != newValue {
		t.Errorf("value after the skewed holder's writes: %q, %v; want the new holder's %q", v, err, newValue)
	}
	_ = do0(func(ctx context.Context) error { return other.Release(ctx, nl) })

	rawOver, keepOver := rawEnd.Sub(bGot), keepEnd.Sub(bGot)
	obs := "not yet"
	if res.KeeperLost != 0 {
		obs = skewSigned(time.Unix(0, res.KeeperLost).Sub(bGot))
	}
	margin := "n/a"
	if client {
		margin = cmp.Or(sc.clockSkew, clientClocks[b.name]).String()
	}
	t.Logf("%s on %s (TTL %s, clock_skew %s): holder granted %s after sending, taken over %s after its grant (claim sent %s before that); "+
		"holder's Deadline − takeover %s, KeepAlive fence − takeover %s (observed loss signal − takeover %s); "+
		"holder's commits: %d accepted before the takeover (last %s before it; %d answered after it), %d refused after it, %d stale accepted, %d other errors",
		sc.name, b.name, a.TTL, margin, time.Duration(claimed.Got-claimed.Sent), bGot.Sub(time.Unix(0, claimed.Got)), bGot.Sub(bSent),
		skewSigned(rawOver), skewSigned(keepOver), obs,
		accepted, skewBefore(lastAccepted, bGot), straddling, refused, stale, other0)
	figure(t, "clock skew", sc.name+": holder's Deadline / KeepAlive fence − takeover (> 0: overlap); stale writes accepted", b.name,
		"%s / %s; %d of %d", skewSigned(rawOver), skewSigned(keepOver), stale, stale+refused)
	switch sc.within {
	case "raw":
		if rawOver > 0 {
			t.Errorf("within the margin, the skewed holder's Deadline is %s after the new holder's grant: overlap", rawOver)
		}
		fallthrough
	case "keeper":
		if keepOver > 0 {
			t.Errorf("within the margin, the skewed holder's KeepAlive fence is %s after the new holder's grant: overlap", keepOver)
		}
	}
}

// startSkewHolder starts a skewed holder process; t.Cleanup kills and
// reaps it.
func startSkewHolder(t *testing.T, rawURL, key string, ttl time.Duration, sc skewCase) *skewHolder {
	t.Helper()
	h := &skewHolder{t: t, proc: startProc[skewMsg](t, "skewed holder", 4,
		skewEnv+"="+sc.offset.String()+" "+strconv.FormatFloat(sc.rate, 'f', -1, 64),
		urlEnv+"="+rawURL, keyEnv+"="+key, ttlEnv+"="+ttl.String())}
	t.Cleanup(func() {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
		h.stdin.Close()
		<-h.done
		if t.Failed() {
			t.Logf("skewed holder stderr:\n%s", h.stderr.String())
		}
	})
	return h
}

type skewHolder struct {
	*proc[skewMsg]
	t *testing.T
}

func (h *skewHolder) next(d time.Duration) skewMsg {
	h.t.Helper()
	select {
	case m := <-h.msgs:
		return m
	case <-h.done:
		select {
		case m := <-h.msgs:
			return m
		default:
		}
		h.t.Fatalf("skewed holder ended without answering; stderr:\n%s", h.stderr.String())
	case <-time.After(d):
		h.t.Fatalf("skewed holder did not answer within %s", d)
	}
	return skewMsg{}
}

func (h *skewHolder) send(cmd string) {
	h.t.Helper()
	if _, err := fmt.Fprintln(h.stdin, cmd); err != nil {
		h.t.Fatalf("skewed holder: send %q: %v", cmd, err)
	}
}

// exit closes stdin (the holder has answered) and checks a clean exit.
func (h *skewHolder) exit() {
	h.t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- h.cmd.Wait() }()
	select {
	case err := <-errc:
		if err != nil {
			h.t.Errorf("skewed holder exit: %v; stderr:\n%s", err, h.stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = h.cmd.Process.Kill()
		<-errc
		h.t.Errorf("skewed holder did not exit; stderr:\n%s", h.stderr.String())
	}
}

func skewLater(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func skewAbs(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}

// skewSigned formats d in ms with its sign ("+61 ms", "-39 ms").
func skewSigned(d time.Duration) string {
	s := strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 0, 64)
	if d >= 0 {
		s = "+" + s
	}
	return s + " ms"
}

// skewBefore formats how long before ref t was ("none" for a zero t).
func skewBefore(t, ref time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return ref.Sub(t).String()
}

// Server-side skew: the backends that judge expiry on the server's clock
// (PostgreSQL's clock_timestamp(), Redis's, ZooKeeper's leader's) trust
// that clock to run at the real rate. PostgreSQL runs under libfaketime
// (LD_PRELOAD, as Debian's faketime does; it works on C servers, not on
// Go ones) with its clock offset or running fast or slow; the holders'
// clocks are real. Redis (jemalloc) does not start under libfaketime
// ("unexpected recursive calls to clock_gettime"), ZooKeeper's JVM is not
// tried, Consul and etcd are Go; DynamoDB and memcached judge expiry on
// client clocks, which the cases above skew.
var serverSkewCases = []struct {
	faketime string // FAKETIME: "+0 x1.1" runs 10 % fast from the start
	sc       skewCase
}{
	{"-2s", skewCase{name: "PostgreSQL's clock 2s behind (faketime)", rate: 1, within: "raw"}},
	{"+2s", skewCase{name: "PostgreSQL's clock 2s ahead (faketime)", rate: 1, within: "raw"}},
	{"+0 x0.9", skewCase{name: "PostgreSQL's clock x0.9 (faketime)", rate: 1, within: "raw"}},
	{"+0 x1.1", skewCase{name: "PostgreSQL's clock x1.1 (faketime)", rate: 1}},
}

// TestSkewServerClock runs a holder with a real clock against a PostgreSQL
// server whose clock is skewed.
func TestSkewServerClock(t *testing.T) {
	t.Parallel()
	var pg backend
	for _, b := range backends {
		if b.name == "postgres" {
			pg = b
		}
	}
	for _, c := range serverSkewCases {
		t.Run(strings.NewReplacer(" ", "_", "'", "").Replace(c.sc.name), func(t *testing.T) {
			u := startFaketimePostgres(t, c.faketime)
			skewOnce(t, pg, pg.urlOf(u, ioTimeout), c.sc, false)
		})
	}
}

// startFaketimePostgres starts a PostgreSQL server of this test's own
// under libfaketime with FAKETIME=fake, on a free loopback port, and
// returns its URL; t.Cleanup stops it (SIGINT, then SIGKILL) and removes
// its directory. A missing PostgreSQL or libfaketime skips the test, or
// fails it under STAMPEDE_TEST_REQUIRE=1.
func startFaketimePostgres(t *testing.T, fake string) string {
	t.Helper()
	missing := func(what string) {
		t.Helper()
		if os.Getenv(testserver.RequireEnv) == "1" {
			t.Fatalf("%s=1 but %s (scripts/install-backends installs it)", testserver.RequireEnv, what)
		}
		t.Skipf("%s (scripts/install-backends installs it)", what)
	}
	lib, _ := filepath.Glob("/usr/lib/*/faketime/libfaketime.so.1")
	if len(lib) == 0 {
		missing("libfaketime not found in /usr/lib/*/faketime")
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(bins) == 0 {
		missing("postgres not found in /usr/lib/postgresql/*/bin")
	}
	sort.Strings(bins)
	bin := bins[len(bins)-1]
	var cred *syscall.Credential
	if os.Geteuid() == 0 { // initdb and postgres refuse to run as root
		u, err := user.Lookup("postgres")
		if err != nil {
			missing("no postgres user to run PostgreSQL as")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
	}
	dir, err := os.MkdirTemp("", "stampede-skew-pg-*") // not t.TempDir: the postgres user must reach it
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if cred != nil {
		for _, d := range []string{dir, data, sock} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				t.Fatal(err)
			}
		}
	}
	initdb := exec.Command(filepath.Join(filepath.Dir(bin), "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	logf, err := os.Create(filepath.Join(dir, "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "-D", data, "-p", strconv.Itoa(port), "-k", sock,
		"-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50")
	cmd.Env = append(os.Environ(), "LD_PRELOAD="+lib[0], "FAKETIME="+fake, "FAKETIME_DONT_RESET=1")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start postgres under libfaketime: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT) // fast shutdown
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			t.Logf("PostgreSQL (FAKETIME=%q) log:\n%s", fake, out)
		}
	})
	u := "postgres://postgres@127.0.0.1:" + strconv.Itoa(port) + "/postgres?sslmode=disable"
	end := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			cl, err := call(10*time.Second, func(ctx context.Context) (*claim.Client, error) { return claim.Open(ctx, u) })
			if err == nil {
				_ = cl.Close()
				return u
			}
		}
		select {
		case <-exited:
			out, _ := os.ReadFile(filepath.Join(dir, "server.log"))
			t.Fatalf("postgres under libfaketime exited during start:\n%s", out)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(end) {
			t.Fatalf("postgres under libfaketime not ready within 60s")
		}
	}
}
