package backendtest

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
	"github.com/stampede-go/stampede/internal/testserver"
)

// wakeWait bounds every wait for a wake-up these checks expect.
const wakeWait = 15 * time.Second

// PollWakeRules checks, step by step, the states a poll driver reads
// (read is its driver.PollReader, on b's key space): a claim of a free key
// does not wake, nor does Extend; Release and CommitRelease do, and so do
// a claim, release and claim between two reads, and Notify; after lose
// dropped what the substrate keeps of a released key (an evicted counter,
// a reaped item), a release still wakes. End to end: b's subscriber is
// not woken by a's claim, and is by its release. The keys begin with
// "wake-rules-".
func PollWakeRules(t *testing.T, a, b *claim.Client, read driver.PollReader, lose func(ctx context.Context, key string) error) {
	t.Helper()
	ctx := context.Background()
	state := func(key string) driver.PollState {
		t.Helper()
		st, err := read(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	claimKey := func(key string) claim.Lease {
		t.Helper()
		l, err := a.TryClaim(ctx, key, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	release := func(l claim.Lease) {
		t.Helper()
		if err := a.Release(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"wake-rules-new", "wake-rules-used"} {
		if k == "wake-rules-used" {
			release(claimKey(k))
		}
		free := state(k)
		l := claimKey(k)
		held := state(k)
		if driver.Wakes(free, held) {
			t.Errorf("%s: a claim of a free key wakes (%+v -> %+v)", k, free, held)
		}
		l, err := a.Extend(ctx, l, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if st := state(k); driver.Wakes(held, st) {
			t.Errorf("%s: Extend wakes (%+v -> %+v)", k, held, st)
		}
		// Release on the new key, CommitRelease on the used one.
		op := "Release"
		if k == "wake-rules-used" {
			op = "CommitRelease"
			err = a.CommitRelease(ctx, l, []byte("v"), 0)
		} else {
			err = a.Release(ctx, l)
		}
		if err != nil {
			t.Fatal(err)
		}
		if st := state(k); !driver.Wakes(held, st) || !driver.Wakes(free, st) {
			t.Errorf("%s: %s does not wake (%+v, %+v -> %+v)", k, op, free, held, st)
		}
		free = state(k)
		release(claimKey(k))
		l = claimKey(k)
		if st := state(k); !driver.Wakes(free, st) {
			t.Errorf("%s: claim, release, claim between two reads does not wake (%+v -> %+v)", k, free, st)
		}
		held = state(k)
		if err := a.Notify(ctx, k); err != nil {
			t.Fatal(err)
		}
		if st := state(k); !driver.Wakes(held, st) {
			t.Errorf("%s: Notify does not wake (%+v -> %+v)", k, held, st)
		}
		release(l)
	}

	k := "wake-rules-lost"
	release(claimKey(k))
	before := state(k)
	if err := lose(ctx, k); err != nil {
		t.Fatal(err)
	}
	release(claimKey(k))
	if st := state(k); !driver.Wakes(before, st) {
		t.Errorf("a release after the key's state was lost does not wake (%+v -> %+v)", before, st)
	}

	s, err := b.Subscribe(ctx, "wake-rules-sub")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l := claimKey("wake-rules-sub")
	// Ten poll intervals at the cap: a wake-up would have come.
	select {
	case <-s.C():
		t.Fatal("a claim of a free key woke a subscriber")
	case <-time.After(10 * driver.DefaultPollMax):
	}
	release(l)
	select {
	case <-s.C():
	case <-time.After(wakeWait):
		t.Fatal("Release did not wake the subscriber")
	}
}

// PollOwnWakeups checks that c's own Release, CommitRelease and Notify
// wake c's subscriber without waiting for a poll (c is opened with polls
// an hour apart: claim.Client wakes its own subscribers on a poll
// driver), and that loops (the driver's count of poll loops) is 0 once
// the subscriber left.
func PollOwnWakeups(t *testing.T, c *claim.Client, loops func() int) {
	t.Helper()
	ctx := context.Background()
	k := "own-wakeups-" + time.Now().Format("150405.000000000")
	s, err := c.Subscribe(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, op := range []string{"Release", "CommitRelease", "Notify"} {
		if op == "Notify" {
			err = c.Notify(ctx, k)
		} else if l, cerr := c.TryClaim(ctx, k, time.Minute); cerr != nil {
			t.Fatal(cerr)
		} else if op == "Release" {
			err = c.Release(ctx, l)
		} else {
			err = c.CommitRelease(ctx, l, []byte("v"), time.Minute)
		}
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		select {
		case <-s.C():
		case <-time.After(wakeWait):
			t.Fatalf("%s did not wake its own Client's subscriber", op)
		}
	}
	s.Close()
	if n := loops(); n != 0 {
		t.Errorf("after the last subscriber left: %d poll loops", n)
	}
}

// PollRestart kills srv (a server of the test's own) while b holds a key
// and w's subscriber polls it: the subscriber is woken when its polls
// start failing, and a claim fails with a connection error while the
// server is down. After the restart, if the server keeps its data the key
// is still held and b's release wakes the subscriber; if not, the
// subscriber is woken by its first good poll. Either way the next token is
// larger.
func PollRestart(t *testing.T, srv *testserver.Server, b, w *claim.Client, keepsData bool) {
	t.Helper()
	ctx := context.Background()
	k := "restart"
	l1, err := b.TryClaim(ctx, k, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := w.Subscribe(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	woken := func(why string) {
		t.Helper()
		select {
		case <-sub.C():
		case <-time.After(wakeWait):
			t.Fatalf("subscriber not woken %s", why)
		}
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	woken("when its polls started failing")
	if _, err := b.TryClaim(ctx, "other", time.Second); err == nil || errors.Is(err, claim.ErrHeld) {
		t.Errorf("TryClaim with the server down: %v, want a connection error", err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if keepsData {
		if _, err := w.TryClaim(ctx, k, time.Second); !errors.Is(err, claim.ErrHeld) {
			t.Errorf("after restart: %v, want ErrHeld (the server keeps its data)", err)
		}
		if err := b.Release(ctx, l1); err != nil {
			t.Fatal(err)
		}
		woken("by the release after the restart")
	} else {
		woken("after the server came back without the lock")
	}
	l2, err := w.TryClaim(ctx, k, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if l2.Token <= l1.Token {
		t.Errorf("token after restart %d <= %d", l2.Token, l1.Token)
	}
	_ = w.Release(ctx, l2)
}

// PollBatchMatches checks a poll driver's batched read (readMany, for
// driver.NewBatchPoller) against its single-key read (read), both on c's
// key space, key by key, on the real server: a key never used, one held,
// one released, one notified; and what each should show (no holder, a
// holder with its expiry, a counter moved from the unused key's). The
// keys begin with "poll-many-".
func PollBatchMatches(t *testing.T, c *claim.Client, read driver.PollReader, readMany driver.PollManyReader) {
	t.Helper()
	ctx := Context(t)
	// Unique per run: the shared server keeps the last run's claims
	// (held for a minute) under -count > 1.
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	key := func(s string) string { return "poll-many-" + s + " " + t.Name() + " " + run }
	keys := []string{key("never"), key("held"), key("released"), key("notified")}
	Claim(t, c, key("held"), time.Minute)
	if err := c.Release(ctx, Claim(t, c, key("released"), time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := c.Notify(ctx, key("notified")); err != nil {
		t.Fatal(err)
	}
	sts, err := readMany(ctx, keys, make([]string, len(keys)))
	if err != nil {
		t.Fatal(err)
	}
	if len(sts) != len(keys) {
		t.Fatalf("%d states for %d keys", len(sts), len(keys))
	}
	for i, k := range keys {
		want, err := read(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		got := sts[i]
		if got.Token != want.Token || got.Holder != want.Holder || got.Expires.IsZero() != want.Expires.IsZero() || got.Expires.Sub(want.Expires).Abs() > 5*time.Second {
			t.Errorf("%q: batched %+v, single %+v", k, got, want)
		}
	}
	never, held, released, notified := sts[0], sts[1], sts[2], sts[3]
	if never.Holder != "" {
		t.Errorf("never used: %+v, want no holder", never)
	}
	if held.Holder == "" || held.Expires.IsZero() {
		t.Errorf("held: %+v, want its holder and expiry", held)
	}
	if released.Holder != "" || released.Token == never.Token || notified.Token == never.Token {
		t.Errorf("released %+v, notified %+v (never used %+v): want no holder, a counter moved", released, notified, never)
	}
}
