package memcache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gomemcache "github.com/bradfitz/gomemcache/memcache"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/conformance"
	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/securitytest"
	"github.com/stampede-go/stampede/internal/testserver"
)

func TestMain(m *testing.M) { backendtest.Main(m) }

// drv is the driver behind c.
func drv(c *claim.Client) *backend { return c.Driver().(*backend) }

// harness runs on the shared memcached. The isolated namespace's prefix
// looks like the default prefix's value items ("stampede:v:..."), so the
// Isolation check also proves such a prefix never touches them.
func harness(tb testing.TB) conformance.Harness {
	srv := testserver.Shared(tb, testserver.Memcache)
	return backendtest.Harness(srv, func(ns string) string {
		if ns == "" {
			return srv.URL()
		}
		return backendtest.WithQuery(tb, srv.URL(), "prefix", "stampede:v")
	})
}

func TestConformance(t *testing.T) { conformance.Run(t, harness(t)) }

// TestFlight: flight's fenced invalidation, and invalidation reaching
// every process's L1 (through the topic log, polled), on this backend.
func TestFlight(t *testing.T) { backendtest.FlightOn(t, harness(t)) }

func TestURL(t *testing.T) {
	ctx := context.Background()
	// No error shows a password or a secret-named parameter.
	securitytest.OpenFails(t, "hunter",
		"memcache://user:hunter2@127.0.0.1:1?secret_token=hunter3",
		"memcache://127.0.0.1:1?tls=true&cacert=/nonexistent/ca.pem&key=hunter4.pem&cert=c.pem",
		"memcache://127.0.0.1:1?nosuch=1",
		"memcache://127.0.0.1:1?io_timeout=soon",
		"memcache://127.0.0.1:1/path",
		"memcache://?prefix=x",
		"memcache://127.0.0.1:1?prefix=has%20space",
		"memcache://127.0.0.1:1?maxvalue=1023",
		"memcache://127.0.0.1:1?maxvalue=-1",
		"memcache://127.0.0.1:1?prefix=a&prefix=b",
		"memcache://127.0.0.1:1?prefix=a;poll_max=1s",
		"memcache://127.0.0.1:1?cacert=ca.pem",
		"memcache://127.0.0.1:1?tls=true&cert=only-the-cert.pem",
		// The names before the shared vocabulary.
		"memcache://127.0.0.1:1?timeout=1s",
		"memcache://127.0.0.1:1?item_size_max=2097152",
		"memcache://127.0.0.1:1?clock_skew=-1ms",
		"memcache://127.0.0.1:1?poll_learn=maybe",
	)
	// lazy: nothing listens there.
	c, err := claim.Open(ctx, "memcache://127.0.0.1:1,localhost:2?prefix=app&io_timeout=1s&max_idle_conns=4&poll_min=1ms&poll_max=20ms&poll_learn=false&maxvalue=2097152&clock_skew=250ms&lazy=true")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := drv(c)
	if b.prefix != "app" || b.c.Timeout != time.Second || b.c.MaxIdleConns != 4 || b.skew != 250*time.Millisecond {
		t.Errorf("options not applied: prefix %q timeout %s idle %d clock skew %s", b.prefix, b.c.Timeout, b.c.MaxIdleConns, b.skew)
	}
	for _, p := range []*driver.Poller{b.Poller, b.grants.Poller} {
		if o := p.Options(); o.Min != time.Millisecond || o.Max != 20*time.Millisecond || !o.NoHoldEstimate {
			t.Errorf("poll options not applied: %+v", o)
		}
	}
	if got := c.Features().MaxValueLen; got != 2097152 {
		t.Errorf("MaxValueLen = %d with maxvalue=2097152", got)
	}
	var mc *gomemcache.Client
	if !c.As(&mc) || mc != b.c {
		t.Errorf("As(**gomemcache.Client) did not give the client")
	}
	if def := backendtest.Open(t, "memcache://127.0.0.1:1?lazy=true"); def.Features().MaxValueLen != DefaultItemSizeMax-itemOverhead {
		t.Errorf("default MaxValueLen = %d", def.Features().MaxValueLen)
	}
}

func TestKeys(t *testing.T) {
	b, err := newBackend(gomemcache.New("127.0.0.1:1"), Options{Prefix: strings.Repeat("p", 200)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, k := range []string{"a", strings.Repeat("x", 1000), "sp ace", "ctl\x01", "del\x7f", "ünï", "\xff\xfe"} {
		for _, role := range []byte("lfnv") {
			s := b.item(role, k)
			if len(s) > 250 {
				t.Errorf("key %q: item key %d bytes > 250", k, len(s))
			}
			for i := 0; i < len(s); i++ {
				if s[i] <= ' ' || s[i] == 0x7f {
					t.Errorf("key %q: item key %q has byte %#x", k, s, s[i])
				}
			}
		}
	}
	if _, err := New(gomemcache.New("127.0.0.1:1"), &Options{Prefix: strings.Repeat("p", 201)}); err == nil {
		t.Errorf("a 201-byte prefix was accepted")
	}
}

func TestExptime(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, c := range []struct {
		sec  int64
		want int32
	}{
		{1, 1},
		{maxRelative, maxRelative},
		{maxRelative + 1, 1_800_000_000 + maxRelative + 1}, // absolute
	} {
		if got, err := exptime(c.sec, now); err != nil || got != c.want {
			t.Errorf("exptime(%d) = %d, %v; want %d", c.sec, got, err, c.want)
		}
	}
	if _, err := exptime(1<<31, now); err == nil {
		t.Errorf("exptime past 2038 accepted")
	}
	for _, c := range []struct {
		ttl  time.Duration
		want int64
	}{{time.Nanosecond, 1}, {time.Second, 1}, {1001 * time.Millisecond, 2}, {90 * time.Second, 90}} {
		if got := seconds(c.ttl); got != c.want {
			t.Errorf("seconds(%s) = %d, want %d", c.ttl, got, c.want)
		}
	}
}

// TestLongTTL: a lease and a value longer than 30 days are stored with an
// absolute exptime and live.
func TestLongTTL(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	b := backendtest.Open(t, srv.URL())
	ctx := context.Background()
	l, err := b.TryClaim(ctx, "long-ttl", 40*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryClaim(ctx, "long-ttl", time.Second); !errors.Is(err, claim.ErrHeld) {
		t.Errorf("a 40-day lease did not hold: %v", err)
	}
	if err := b.Commit(ctx, l, []byte("v"), 40*24*time.Hour); err != nil {
		t.Fatal(err)
	}
	if v, err := b.Get(ctx, "long-ttl"); err != nil || string(v) != "v" {
		t.Errorf("Get of a 40-day value = %q, %v", v, err)
	}
	if err := b.Release(ctx, l); err != nil {
		t.Error(err)
	}
}

// TestMaxValueAtServerLimit: a value of MaxValueLen under the longest
// item key fits the server's default 1 MiB item limit, and one byte more
// than the server's limit is reported as ErrTooLarge even when the client
// was told a larger limit.
func TestMaxValueAtServerLimit(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := context.Background()
	b, err := New(gomemcache.New(srv.Addr()), &Options{Prefix: strings.Repeat("p", 200)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	k := strings.Repeat("k", 46) // the longest readable key with this prefix
	if n := len(drv(b).item('v', k)); n != 250 {
		t.Fatalf("item key %d bytes, want 250", n)
	}
	if err := b.Set(ctx, k, bytes.Repeat([]byte{1}, b.Features().MaxValueLen), time.Minute); err != nil {
		t.Errorf("Set of MaxValueLen under a 250-byte key: %v", err)
	}
	big, err := New(gomemcache.New(srv.Addr()), &Options{ItemSizeMax: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer big.Close()
	if err := big.Set(ctx, k, make([]byte, 2<<20), 0); !errors.Is(err, claim.ErrTooLarge) {
		t.Errorf("Set of 2 MiB on a 1 MiB server: %v, want ErrTooLarge", err)
	}
}

// TestEviction: items memcached may drop under a holder. After the lock
// vanished (eviction, or expiry while its holder paused), another holder
// gets a larger token, and the stale holder's Release (compare-and-delete)
// leaves the new holder's lock alone. A fence counter lost to eviction (or
// a restart) comes back larger than it was.
func TestEviction(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a, b := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
	ctx := context.Background()
	for _, role := range []byte("lf") {
		k := "evict-" + string(role)
		l1, err := a.TryClaim(ctx, k, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if role == 'f' {
			if err := a.Release(ctx, l1); err != nil {
				t.Fatal(err)
			}
		}
		if err := drv(a).c.Delete(drv(a).item(role, k)); err != nil {
			t.Fatal(err)
		}
		l2, err := b.TryClaim(ctx, k, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if l2.Token <= l1.Token {
			t.Errorf("%s: token %d after %d", k, l2.Token, l1.Token)
		}
		if role == 'l' {
			if err := a.Release(ctx, l1); !errors.Is(err, claim.ErrLost) {
				t.Errorf("stale Release: %v, want ErrLost", err)
			}
			if _, err := a.TryClaim(ctx, k, time.Minute); !errors.Is(err, claim.ErrHeld) {
				t.Errorf("after a stale Release the key is not held: %v", err)
			}
		}
		if err := b.Release(ctx, l2); err != nil {
			t.Error(err)
		}
	}
}

// slowConn delays writes of storage commands (storageCommand).
type slowConn struct {
	net.Conn
	delay *atomic.Int64 // nanoseconds; 0: none
}

func (c slowConn) Write(p []byte) (int, error) {
	if d := c.delay.Load(); d > 0 && storageCommand(p) {
		time.Sleep(time.Duration(d))
	}
	return c.Conn.Write(p)
}

// TestLateCommitWithdrawn: a Commit whose write is acknowledged only after
// the lease's local deadline (a slow network) returns ErrLost and takes
// its value back.
func TestLateCommitWithdrawn(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	ctx := context.Background()
	var delay atomic.Int64
	c := gomemcache.New(srv.Addr())
	c.Timeout = 10 * time.Second
	c.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		return slowConn{conn, &delay}, err
	}
	defer c.Close()
	b, err := New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	l, err := b.TryClaim(ctx, "late", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	delay.Store(int64(time.Until(l.Deadline) + 100*time.Millisecond))
	err = b.Commit(ctx, l, []byte("late"), 0)
	delay.Store(0)
	if !errors.Is(err, claim.ErrLost) {
		t.Fatalf("late Commit: %v, want ErrLost", err)
	}
	if v, err := b.Get(ctx, "late"); !errors.Is(err, claim.ErrNotFound) {
		t.Errorf("late Commit's value still there: %q, %v", v, err)
	}
}

// TestServerRestart: a restart loses every lock (see
// backendtest.PollRestart).
func TestServerRestart(t *testing.T) {
	srv := testserver.RequireWith(t, testserver.Memcache, nil)
	backendtest.PollRestart(t, srv, backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL()), false)
}

func BenchmarkConformance(b *testing.B) { conformance.Bench(b, harness(b)) }

// FuzzOpenURL: no URL makes the opener panic, and a password in a URL
// never reaches an error.
func FuzzOpenURL(f *testing.F) {
	securitytest.FuzzURL(f, securitytest.OpenURL,
		"memcache://127.0.0.1:11211",
		"memcache://a:1,b:2?prefix=x&io_timeout=1s",
		"memcache://u:secretpw@h:1",
		"memcache://h:1?maxvalue=-1&poll_max=x",
		"memcache://h:1?tls=true&cacert=x&servername=h&skip_verify=1",
		"memcache://h:1/%zz",
		"memcache://[::1]:1,[::2]:2?max_idle_conns=99999999999999999999",
	)
}

// TestWakeRules: an evicted notify counter comes back at a value no
// poller saw.
func TestWakeRules(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a, b := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
	backendtest.PollWakeRules(t, a, b, drv(b).readState, func(_ context.Context, key string) error {
		return drv(a).c.Delete(drv(a).item('n', key))
	})
}

func TestOwnWakeups(t *testing.T) {
	c := backendtest.Open(t, backendtest.WithQuery(t, testserver.Shared(t, testserver.Memcache).URL(), "poll_min", "1h", "poll_max", "1h"))
	backendtest.PollOwnWakeups(t, c, drv(c).Len)
}

// storageCommand picks memcached's storage commands (set, add, cas):
// the chunks a DelayProxy holds to make one client's writes late.
func storageCommand(chunk []byte) bool {
	for _, c := range []string{"set ", "add ", "cas "} {
		if bytes.HasPrefix(chunk, []byte(c)) {
			return true
		}
	}
	return false
}

// TestLateWriteLoses: a Commit whose write is held on the way past the
// old holder's I/O timeout (the Commit fails, the bytes are still on the
// wire) reaches the server after the key was taken over and the new
// holder's Commit was acknowledged: the new holder's value stays. With
// and without a value stored before.
func TestLateWriteLoses(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	p := securitytest.NewDelayProxy(t, srv.Addr())
	old := backendtest.Open(t, "memcache://"+p.Addr()+"?io_timeout=300ms")
	cur := backendtest.Open(t, srv.URL())
	ctx := backendtest.Context(t)
	for _, stored := range []bool{false, true} {
		key := fmt.Sprintf("%slate-write-%v", securitytest.Unique(t), stored)
		if stored {
			if err := cur.Set(ctx, key, []byte("before"), 0); err != nil {
				t.Fatal(err)
			}
		}
		l := backendtest.Claim(t, old, key, 10*time.Second)
		released := p.Released()
		p.Set(securitytest.Delay{Up: 2 * time.Second, Match: storageCommand})
		err := old.Commit(ctx, l, []byte("old"), 0)
		p.Set(securitytest.Delay{})
		if err == nil {
			t.Fatal("a Commit whose write was held past the I/O timeout succeeded")
		}
		// The old holder gives the key up (its write still on the
		// wire); the new holder takes it over and commits.
		if err := old.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
		nl := backendtest.Claim(t, cur, key, 10*time.Second)
		if err := cur.Commit(ctx, nl, []byte("new"), 0); err != nil {
			t.Fatal(err)
		}
		if p.Released() != released {
			t.Fatal("the held write reached the server before the new holder's Commit: the test proves nothing")
		}
		if err := p.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		if p.Released() != released+1 {
			t.Fatalf("%d writes held and passed on, want 1", p.Released()-released)
		}
		if v, err := cur.Get(ctx, key); err != nil || string(v) != "new" {
			t.Errorf("stored before: %v. After the old holder's late write: Get = %q, %v; want the new holder's value", stored, v, err)
		}
		if err := cur.Release(ctx, nl); err != nil {
			t.Error(err)
		}
	}
}

// TestRevokeTombstone: between the lease's end and the value's
// replacement, Revoke's tombstone holds the key (TryClaim: ErrHeld), has
// ended the lease (Extend, Commit, Release: ErrLost), and wakes no poller;
// freeing it does. Also on a key without a lease.
func TestRevokeTombstone(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	a, b := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
	ctx := backendtest.Context(t)
	d := drv(b)
	for _, held := range []bool{true, false} {
		key := fmt.Sprintf("%stomb-%v", securitytest.Unique(t), held)
		var l claim.Lease
		if held {
			l = backendtest.Claim(t, a, key, 10*time.Second)
		}
		before, err := d.readState(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		lock, err := d.c.Get(d.item('l', key))
		if errors.Is(err, gomemcache.ErrCacheMiss) {
			lock, err = nil, nil
		}
		if err != nil || (lock == nil) == held {
			t.Fatalf("lock of a key held %v: %v, %v", held, lock, err)
		}
		tomb, err := d.entomb(ctx, key, lock)
		if err != nil {
			t.Fatal(err)
		}
		during, err := d.readState(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if driver.Wakes(before, during) {
			t.Errorf("held %v: the tombstone wakes pollers (state %+v, then %+v)", held, before, during)
		}
		if _, err := a.TryClaim(ctx, key, time.Second); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("held %v: TryClaim of a tombstoned key: %v, want ErrHeld", held, err)
		}
		if held {
			if _, err := a.Extend(ctx, l, 10*time.Second); !errors.Is(err, claim.ErrLost) {
				t.Errorf("Extend of a tombstoned lease: %v, want ErrLost", err)
			}
			if err := a.Commit(ctx, l, []byte("stale"), 0); !errors.Is(err, claim.ErrLost) {
				t.Errorf("Commit of a tombstoned lease: %v, want ErrLost", err)
			}
			if err := a.Release(ctx, l); !errors.Is(err, claim.ErrLost) {
				t.Errorf("Release of a tombstoned lease: %v, want ErrLost", err)
			}
		}
		if err := d.unblock(ctx, tomb); err != nil {
			t.Fatal(err)
		}
		after, err := d.readState(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if !driver.Wakes(during, after) {
			t.Errorf("held %v: freeing the tombstone wakes no poller (state %+v, then %+v)", held, during, after)
		}
		nl := backendtest.Claim(t, a, key, 10*time.Second)
		if held && nl.Token <= l.Token {
			t.Errorf("token %d after the tombstone, %d before", nl.Token, l.Token)
		}
		if err := a.Release(ctx, nl); err != nil {
			t.Error(err)
		}
	}
}

// TestRevokeRacesCommit: a Commit of the revoked lease that read the lock
// before Revoke, and whose write is held on the way until after Revoke
// returned (past its own I/O timeout), is refused when it lands: Revoke's
// value (RevokeSet) or absence (Revoke) stays. With and without a value
// stored before: the late write is a cas, or an add that Revoke's
// deleted-value item makes fail.
func TestRevokeRacesCommit(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	for _, stored := range []bool{false, true} {
		for _, set := range []bool{false, true} {
			t.Run(fmt.Sprintf("stored=%v/set=%v", stored, set), func(t *testing.T) {
				t.Parallel()
				p := securitytest.NewDelayProxy(t, srv.Addr())
				old := backendtest.Open(t, "memcache://"+p.Addr()+"?io_timeout=300ms")
				cur := backendtest.Open(t, srv.URL())
				ctx := backendtest.Context(t)
				key := securitytest.Unique(t) + "revoke-race"
				if stored {
					if err := cur.Set(ctx, key, []byte("before"), 0); err != nil {
						t.Fatal(err)
					}
				}
				l := backendtest.Claim(t, old, key, 10*time.Second)
				released := p.Released()
				p.Set(securitytest.Delay{Up: 2 * time.Second, Match: storageCommand})
				err := old.Commit(ctx, l, []byte("old"), 0)
				p.Set(securitytest.Delay{})
				if err == nil {
					t.Fatal("a Commit whose write was held past the I/O timeout succeeded")
				}
				if set {
					err = cur.RevokeSet(ctx, key, []byte("new"), 0)
				} else {
					err = cur.Revoke(ctx, key)
				}
				if err != nil {
					t.Fatal(err)
				}
				if p.Released() != released {
					t.Fatal("the held write reached the server before Revoke returned: the test proves nothing")
				}
				if err := p.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				if p.Released() != released+1 {
					t.Fatalf("%d writes held and passed on, want 1", p.Released()-released)
				}
				v, err := cur.Get(ctx, key)
				switch {
				case set && (err != nil || string(v) != "new"):
					t.Errorf("after the revoked holder's late write: Get = %q, %v; want RevokeSet's value", v, err)
				case !set && !errors.Is(err, claim.ErrNotFound):
					t.Errorf("after the revoked holder's late write: Get = %q, %v; want ErrNotFound", v, err)
				}
				nl := backendtest.Claim(t, cur, key, 10*time.Second)
				if nl.Token <= l.Token {
					t.Errorf("token %d after Revoke, %d before", nl.Token, l.Token)
				}
				if err := cur.Release(ctx, nl); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

// TestTakeoverByRecordedEnd: a lock memcached still keeps (a dead
// holder's: its item lives lockKeep seconds past the lease) is taken
// over as soon as the end it records plus ClockSkew has passed by the
// claimer's clock, not when memcached drops it; before that the claim
// answers ErrHeld with Remaining up to that moment, and the poll shows
// the holder until then and wakes when it passes. The claimer is a late
// observer: it first sees the lock after its lease ended, so its own
// sighting plus the TTL the lock records (a minute) is later than that,
// and the clock rule decides (heldUntil); so too for a lock that records
// no TTL (the format of earlier versions). The old holder's Extend and
// Release then answer ErrLost, and the new token is larger.
func TestTakeoverByRecordedEnd(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	for _, format := range []string{"ttl", "plain"} {
		t.Run(format, func(t *testing.T) {
			a, b := backendtest.Open(t, srv.URL()), backendtest.Open(t, srv.URL())
			ctx := context.Background()
			k := fmt.Sprintf("takeover-%s-%d", format, time.Now().UnixNano())
			old, err := a.TryClaim(ctx, k, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			db := drv(b)
			// Rewrite the lock as the dead holder's would be once its
			// lease of a minute has ended by the clocks, while memcached
			// keeps the item a minute longer.
			setEnd := func(end time.Time) {
				t.Helper()
				h := old.Holder
				if format == "ttl" {
					h += ";0;60"
				}
				v := h + " " + strconv.FormatInt(end.Add(lockSlack*time.Second).UnixMilli(), 10)
				if err := db.c.Set(&gomemcache.Item{Key: db.item('l', k), Value: []byte(v), Expiration: 60}); err != nil {
					t.Fatal(err)
				}
			}
			// Ended, but not ClockSkew ago: held, for at most ClockSkew more.
			setEnd(time.Now())
			_, err = b.TryClaim(ctx, k, time.Minute)
			var he *claim.HeldError
			if !errors.As(err, &he) || he.Remaining <= 0 || he.Remaining > db.skew {
				t.Fatalf("claim within ClockSkew of the recorded end: %v, want ErrHeld with 0 < Remaining <= %s", err, db.skew)
			}
			st, err := db.readState(ctx, k)
			if err != nil || st.Holder != old.Holder || st.Expires.IsZero() || st.Expires.After(time.Now().Add(db.skew)) {
				t.Fatalf("poll within ClockSkew of the end: %+v, %v; want the holder, and when it may be taken over (within %s)", st, err, db.skew)
			}
			// Ended more than ClockSkew ago: the poll shows no holder
			// (which wakes the waiters) and the claim takes the lock over.
			setEnd(time.Now().Add(-db.skew - time.Millisecond))
			ns, err := db.readState(ctx, k)
			if err != nil || ns.Holder != "" || !driver.Wakes(st, ns) {
				t.Fatalf("poll past the end + ClockSkew: %+v, %v; want no holder, waking", ns, err)
			}
			nl, err := b.TryClaim(ctx, k, time.Minute)
			if err != nil {
				t.Fatalf("takeover past the end + ClockSkew: %v", err)
			}
			if nl.Token <= old.Token {
				t.Errorf("takeover token %d not above the old holder's %d", nl.Token, old.Token)
			}
			if _, err := a.Extend(ctx, old, time.Minute); !errors.Is(err, claim.ErrLost) {
				t.Errorf("old holder's Extend after the takeover: %v, want ErrLost", err)
			}
			if err := a.Release(ctx, old); !errors.Is(err, claim.ErrLost) {
				t.Errorf("old holder's Release after the takeover: %v, want ErrLost", err)
			}
			if _, err := a.TryClaim(ctx, k, time.Minute); !errors.Is(err, claim.ErrHeld) {
				t.Errorf("claim of the new holder's live lease: %v, want ErrHeld", err)
			}
			if err := b.Release(ctx, nl); err != nil {
				t.Errorf("new holder's Release: %v", err)
			}
		})
	}
}

// TestTakeoverBySightings: a client that saw a lease's lock written when
// it was made (its first TryClaim, or Enqueue, came right after the
// claim) takes the lease over the lease's TTL after that first sighting
// (driver.Sightings), long before the recorded end plus its ClockSkew of
// 2 s: ErrHeld with Remaining within the TTL and a little, the poll's
// takeover time as early, then the takeover, with a larger token, after
// the holder's Deadline (one process, one clock). For TryClaim and for
// the fair queue (Enqueue's takeover of a holder that died).
func TestTakeoverBySightings(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	const ttl = time.Second
	for _, fair := range []bool{false, true} {
		t.Run(fmt.Sprintf("fair=%v", fair), func(t *testing.T) {
			a := backendtest.Open(t, srv.URL())
			b := backendtest.Open(t, backendtest.WithQuery(t, srv.URL(), "clock_skew", "2s"))
			db := drv(b)
			ctx := backendtest.Context(t)
			k := fmt.Sprintf("%ssight-%v", securitytest.Unique(t), fair)
			var old claim.Lease
			var err error
			try := func() (claim.Lease, error) { return b.TryClaim(ctx, k, ttl) }
			if fair {
				old, err = a.AcquireFair(ctx, k, ttl)
				try = func() (claim.Lease, error) { return db.Enqueue(ctx, k, "b0b0", ttl) }
			} else {
				old, err = a.TryClaim(ctx, k, ttl)
			}
			if err != nil {
				t.Fatal(err)
			}
			_, err = try()
			seen := time.Now() // after the answer that showed b the lock
			var he *claim.HeldError
			if !errors.As(err, &he) || he.Remaining <= 0 || he.Remaining > ttl+100*time.Millisecond {
				t.Fatalf("claim right after the holder's: %v, want ErrHeld with 0 < Remaining <= TTL + 100ms (the clock rule: about TTL + %s)", err, db.skew)
			}
			st, err := db.readState(ctx, k)
			if err != nil || st.Holder != old.Holder {
				t.Fatalf("poll of the held key: %+v, %v; want holder %s", st, err, old.Holder)
			}
			if latest := seen.Add(ttl + driver.TakeoverMargin(ttl)); st.Expires.After(latest) || !st.Expires.After(old.Deadline) {
				t.Errorf("poll's takeover time %s after the holder's Deadline, want after it and by the first sighting + TTL (%s after)",
					st.Expires.Sub(old.Deadline), latest.Sub(old.Deadline))
			}
			time.Sleep(he.Remaining + 20*time.Millisecond)
			sent := time.Now()
			nl, err := try()
			if err != nil {
				t.Fatalf("claim %s after the holder's Deadline, past the first sighting + TTL: %v", sent.Sub(old.Deadline), err)
			}
			if !sent.After(old.Deadline) {
				t.Errorf("taken over %s before the holder's Deadline", old.Deadline.Sub(sent))
			}
			if nl.Token <= old.Token {
				t.Errorf("takeover token %d not above the old holder's %d", nl.Token, old.Token)
			}
			t.Logf("taken over %s after the holder's Deadline (clock rule: %s)", sent.Sub(old.Deadline), db.skew)
		})
	}
}

// BenchmarkPollHandoff: handoff p50 with the waiter's polls counted
// (backendtest.PollHandoff; STAMPEDE_POLL_MIN and STAMPEDE_POLL_MAX set
// the poller).
func BenchmarkPollHandoff(b *testing.B) {
	backendtest.PollHandoff(b, open, func(waiter *claim.Client, poll func()) {
		wb := drv(waiter)
		wb.Poller.Close()
		wb.Poller = driver.NewPoller(func(ctx context.Context, k string) (driver.PollState, error) {
			poll()
			return wb.readState(ctx, k)
		}, backendtest.PollOptions())
	})
}

// BenchmarkTakeover: from a dead holder's Deadline to a waiter's takeover
// (backendtest.Takeover; ClockSkew, 100 ms by default, is part of it).
func BenchmarkTakeover(b *testing.B) { backendtest.Takeover(b, open) }

// open opens a client of the shared test server for a benchmark.
var open = func(t testing.TB) *claim.Client {
	return backendtest.Open(t, testserver.Shared(t, testserver.Memcache).URL())
}

// TestExtendRecordsLaterEnd: every write of one lease records a later end
// than the write before it, even when the renewing client's clock is
// behind the one that wrote the lock (here the lock says an end ten
// minutes away), so that each write is one of its own to the takeovers
// by sightings (lockState.rev): a renewal that repeated the grant's end
// would be judged from the grant's sighting, before the renewed Deadline.
func TestExtendRecordsLaterEnd(t *testing.T) {
	b := backendtest.Open(t, testserver.Shared(t, testserver.Memcache).URL())
	db := drv(b)
	ctx := backendtest.Context(t)
	k := securitytest.Unique(t) + "later-end"
	l := backendtest.Claim(t, b, k, time.Minute)
	ahead, err := db.lockItem(k, l.Holder, 60, time.Now().Add(10*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.c.Set(ahead); err != nil {
		t.Fatal(err)
	}
	before := parseState(ahead.Value)
	if _, err := b.Extend(ctx, l, time.Minute); err != nil {
		t.Fatal(err)
	}
	it, err := db.c.Get(db.item('l', k))
	if err != nil {
		t.Fatal(err)
	}
	after := parseState(it.Value)
	if after.holder != l.Holder || after.latest.UnixMilli() != before.latest.UnixMilli()+1 {
		t.Errorf("after Extend the lock records %q ending %s, want %q ending 1 ms after the %s it recorded", after.holder, after.latest, l.Holder, before.latest)
	}
	if after.rev() == before.rev() {
		t.Errorf("Extend's write has the same rev as the write before it: %v", after.rev())
	}
	_ = b.Release(ctx, l)
}

// TestEarlierVersionsByClockRule: a lock of the fair format whose TTLSEC
// has no leading 0 was written by, or granted to, a process of a version
// before takeover by sightings, whose Deadline may run past a sighting
// plus the TTL (its Enqueue's lease carried the granter's clock offset,
// its Extend could record the grant's end again): a waiter that saw it
// written still waits for the recorded end plus clock_skew. With the
// mark (";7;01"), the same lock is taken over by the sighting.
func TestEarlierVersionsByClockRule(t *testing.T) {
	srv := testserver.Shared(t, testserver.Memcache)
	b := backendtest.Open(t, srv.URL()+"?clock_skew=2s")
	db := drv(b)
	backendtest.EarlierVersionsByClockRule(t, b, 2*time.Second, func(k string, marked bool) {
		end := time.Now().Add(time.Second)
		v := "old;7;" + secField(1, marked) + " " + strconv.FormatInt(end.Add(lockSlack*time.Second).UnixMilli(), 10)
		if err := db.c.Set(&gomemcache.Item{Key: db.item('l', k), Value: []byte(v), Expiration: 60}); err != nil {
			t.Fatal(err)
		}
	})
}
