package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

// The fenced-register model. Per key the state is the highest fencing
// token granted so far and the committed value. Expiry makes a lock model
// depend on time, so the model leaves it out and checks what fencing
// promises instead:
//
//   - a granted claim's token is above every token granted before it;
//   - a commit, renewal or release succeeds only with the highest token
//     granted so far (no newer claim was linearized before it);
//   - a read returns the last committed value.
//
// A refused claim (held) and a refused commit, renewal or release (lost)
// are always allowed: whether a lease has expired is not in the model.
// Calls whose outcome is unknown (a timeout, a dropped connection) are
// left out, except commits, which may or may not have taken effect. On a
// backend whose commit is not atomic (memcached) a commit that was not
// acknowledged in time may land regardless of the fence and may then be
// withdrawn (deleted again if still current), as its documentation says.
type linIn struct {
	Key    string
	Op     string // claim, commit, extend, release, read, withdraw
	Token  uint64
	Value  string
	Maybe  bool // commit: outcome unknown
	Loose  bool // commit: not atomic; a maybe-commit ignores the fence
	Forged bool // the lease's local deadline was ignored
}

type linOut struct {
	OK    bool // claim granted; commit, extend, release succeeded; read found a value
	Token uint64
	Value string
}

type linState struct {
	Max   uint64
	Value string
	Has   bool
}

var linModel = porcupine.NondeterministicModel{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range h {
			k := op.Input.(linIn).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() []any { return []any{linState{}} },
	Step: func(state, input, output any) []any {
		s, in, out := state.(linState), input.(linIn), output.(linOut)
		switch in.Op {
		case "claim":
			if !out.OK {
				return []any{s}
			}
			if out.Token <= s.Max {
				return nil
			}
			s.Max = out.Token
			return []any{s}
		case "commit":
			w := s
			w.Value, w.Has = in.Value, true
			switch {
			case in.Maybe && in.Loose:
				return []any{s, w}
			case in.Maybe:
				if in.Token == s.Max {
					return []any{s, w}
				}
				return []any{s}
			case out.OK:
				if in.Token == s.Max {
					return []any{w}
				}
				return nil
			default:
				return []any{s}
			}
		case "withdraw":
			if s.Has && s.Value == in.Value {
				return []any{s, linState{Max: s.Max}}
			}
			return []any{s}
		case "extend", "release":
			if out.OK && in.Token != s.Max {
				return nil
			}
			return []any{s}
		case "read":
			if out.OK == s.Has && (!out.OK || out.Value == s.Value) {
				return []any{s}
			}
			return nil
		}
		return nil
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(linIn), output.(linOut)
		forged := ""
		if in.Forged {
			forged = " (deadline ignored)"
		}
		switch in.Op {
		case "claim":
			if out.OK {
				return fmt.Sprintf("claim -> token %d", out.Token)
			}
			return "claim -> held"
		case "commit":
			switch {
			case in.Maybe:
				return fmt.Sprintf("commit(%d, %s)%s -> unknown", in.Token, in.Value, forged)
			case out.OK:
				return fmt.Sprintf("commit(%d, %s)%s -> ok", in.Token, in.Value, forged)
			}
			return fmt.Sprintf("commit(%d, %s)%s -> lost", in.Token, in.Value, forged)
		case "withdraw":
			return fmt.Sprintf("withdraw(%s) -> unknown", in.Value)
		case "read":
			if out.OK {
				return "read -> " + out.Value
			}
			return "read -> not found"
		}
		res := "lost"
		if out.OK {
			res = "ok"
		}
		return fmt.Sprintf("%s(%d)%s -> %s", in.Op, in.Token, forged, res)
	},
	DescribeState: func(state any) string {
		s := state.(linState)
		if !s.Has {
			return fmt.Sprintf("max token %d, no value", s.Max)
		}
		return fmt.Sprintf("max token %d, value %s", s.Max, s.Value)
	},
}

// TestModel checks that the model rejects what it must (so that a pass of
// TestLinearizable means something).
func TestModel(t *testing.T) {
	m := linModel.ToModel()
	op := func(c int, call, ret int64, in linIn, out linOut) porcupine.Operation {
		in.Key = "k"
		return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
	}
	cases := []struct {
		name string
		ok   bool
		h    []porcupine.Operation
	}{
		{"claim commit read", true, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(0, 2, 3, linIn{Op: "commit", Token: 5, Value: "a"}, linOut{OK: true}),
			op(1, 4, 5, linIn{Op: "read"}, linOut{OK: true, Value: "a"}),
		}},
		{"stale commit accepted after a newer claim", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(1, 2, 3, linIn{Op: "claim"}, linOut{OK: true, Token: 6}),
			op(0, 4, 5, linIn{Op: "commit", Token: 5, Value: "a"}, linOut{OK: true}),
		}},
		{"token went back", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(1, 2, 3, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
		}},
		{"stale release accepted", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(1, 2, 3, linIn{Op: "claim"}, linOut{OK: true, Token: 6}),
			op(0, 4, 5, linIn{Op: "release", Token: 5}, linOut{OK: true}),
		}},
		{"lost commit visible", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(0, 2, 3, linIn{Op: "commit", Token: 5, Value: "a"}, linOut{}),
			op(1, 4, 5, linIn{Op: "read"}, linOut{OK: true, Value: "a"}),
		}},
		{"unknown commit may land later", true, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(0, 2, 100, linIn{Op: "commit", Token: 5, Value: "a", Maybe: true}, linOut{}),
			op(1, 4, 5, linIn{Op: "read"}, linOut{}),
			op(1, 6, 7, linIn{Op: "read"}, linOut{OK: true, Value: "a"}),
		}},
		{"unknown stale commit cannot land", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(1, 2, 3, linIn{Op: "claim"}, linOut{OK: true, Token: 6}),
			op(0, 4, 100, linIn{Op: "commit", Token: 5, Value: "a", Maybe: true}, linOut{}),
			op(1, 6, 7, linIn{Op: "read"}, linOut{OK: true, Value: "a"}),
		}},
		{"stale read", false, []porcupine.Operation{
			op(0, 0, 1, linIn{Op: "claim"}, linOut{OK: true, Token: 5}),
			op(0, 2, 3, linIn{Op: "commit", Token: 5, Value: "a"}, linOut{OK: true}),
			op(0, 4, 5, linIn{Op: "commit", Token: 5, Value: "b"}, linOut{OK: true}),
			op(1, 6, 7, linIn{Op: "read"}, linOut{OK: true, Value: "a"}),
		}},
	}
	for _, c := range cases {
		if got := porcupine.CheckOperations(m, c.h); got != c.ok {
			t.Errorf("%s: linearizable = %v, want %v", c.name, got, c.ok)
		}
	}
}

// TestLinearizable records histories of claims, fenced commits (some by
// holders that ignore their local deadline), renewals, releases and reads
// from several clients, each through its own proxy with random faults
// (latency, resets, lost replies, blackholes, connection refused), with
// short leases, and checks them with porcupine against the fenced-register
// model. The memory backend runs the same workload without faults.
func TestLinearizable(t *testing.T) {
	forEach(t, nil, func(t *testing.T, b backend) {
		ops, stats := linearizableOnce(t, b)
		if t.Failed() {
			return
		}
		figure(t, "linearizability (porcupine, fenced register)", "violations", b.name, "0 in %d ops", ops)
		figure(t, "linearizability (porcupine, fenced register)", "history", b.name, "%s", stats)
	})
}

func linearizableOnce(t *testing.T, b backend) (nops int, stats string) {
	const clients = 4
	u := b.sharedURL(t)
	probe := open(t, u)
	f := probe.Features()
	ttl := max(300*time.Millisecond, f.MinTTL)
	cls := make([]*claim.Client, clients)
	proxies := make([]*proxy, clients)
	for c := range clients {
		cu := u
		if b.kind != "" {
			cu, proxies[c] = proxied(t, u)
		}
		cls[c] = open(t, cu)
	}
	history := linRun(t, cls, proxies, ttl, !f.AtomicCommit)
	stats = linStats(history)
	res, info, took := linCheck(history)
	t.Logf("%d operations (%s) checked in %s: %s", len(history), stats, took, res)
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("stampede-lin-%s-%d.html", b.name, time.Now().UnixNano()))
		if err := porcupine.VisualizePath(linModel.ToModel(), info, path); err == nil {
			t.Errorf("history not linearizable against the fenced-register model; visualization: %s", path)
		} else {
			t.Errorf("history not linearizable against the fenced-register model (visualization failed: %v)", err)
		}
	default:
		t.Errorf("porcupine could not decide within its time limit (%s); history of %d operations", res, len(history))
	}
	return len(history), stats
}

// TestLinearizableCatchesUnfencedCommit runs the workload of
// TestLinearizable on a memory backend whose Commit ignores the fence (it
// writes the value whatever the lease): the checker must find the stale
// holders' commits.
func TestLinearizableCatchesUnfencedCommit(t *testing.T) {
	t.Parallel()
	u := "mem://faults-broken-" + randHex(8)
	cls := make([]*claim.Client, 4)
	for c := range cls {
		// The Client in front of the broken driver starts nothing of its
		// own: open's cleanup closes the driver.
		cls[c] = claim.NewClient(unfenced{open(t, u).Driver()}, nil)
	}
	history := linRun(t, cls, make([]*proxy, len(cls)), 100*time.Millisecond, false)
	res, _, _ := linCheck(history)
	if res != porcupine.Illegal {
		t.Errorf("a backend with unfenced commits passed the check (%s; %s)", res, linStats(history))
	}
}

// unfenced is a broken driver: Commit writes the value even when the
// lease is no longer current. (Embedding the Driver interface also hides
// the optional fast paths, so the Client uses its fallbacks.)
type unfenced struct{ driver.Driver }

func (u unfenced) Commit(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	return u.Set(ctx, l.Key, value, ttl)
}

// linRun runs the random workload on the clients (each behind its proxy,
// if any, with random faults) and returns the history.
func linRun(t *testing.T, cls []*claim.Client, proxies []*proxy, ttl time.Duration, loose bool) []porcupine.Operation {
	keys := []string{key(t, "lin-a"), key(t, "lin-b"), key(t, "lin-c")}
	budget, limit := 250, 6*time.Second // ops per client, wall time
	if chaos() {
		budget, limit = 3000, 60*time.Second
	}
	for c, cl := range cls {
		// Connect before the faults start.
		if _, err := do(func(ctx context.Context) ([]byte, error) { return cl.Get(ctx, keys[0]) }); err != nil && !errors.Is(err, claim.ErrNotFound) {
			t.Fatalf("client %d: %v", c, err)
		}
	}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var mu sync.Mutex
	var history []porcupine.Operation
	var maybes []int // indexes of operations whose return is unknown
	record := func(c int, in linIn, call int64, out linOut, known bool) {
		mu.Lock()
		defer mu.Unlock()
		if !known {
			maybes = append(maybes, len(history))
		}
		history = append(history, porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: now()})
	}
	stopChaos := make(chan struct{})
	var chaosWG, wg sync.WaitGroup
	for c := range cls {
		if proxies[c] != nil {
			chaosWG.Go(func() { stir(proxies[c], stopChaos, uint64(c)) })
		}
		wg.Go(func() { linClient(cls[c], c, keys, ttl, loose, budget, start.Add(limit), now, record) })
	}
	wg.Wait()
	close(stopChaos)
	chaosWG.Wait()
	end := now() + 1
	for _, i := range maybes {
		history[i].Return = end
	}
	return history
}

func linStats(history []porcupine.Operation) string {
	var granted, forged, forgedRefused, unknown int
	for _, op := range history {
		in, out := op.Input.(linIn), op.Output.(linOut)
		switch {
		case in.Maybe:
			unknown++
		case in.Op == "claim" && out.OK:
			granted++
		}
		if in.Forged && !in.Maybe {
			forged++
			if !out.OK {
				forgedRefused++
			}
		}
	}
	return fmt.Sprintf("%d claims granted, %d of %d answered stale-holder calls refused, %d commits of unknown outcome", granted, forgedRefused, forged, unknown)
}

func linCheck(history []porcupine.Operation) (porcupine.CheckResult, porcupine.LinearizationInfo, time.Duration) {
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(linModel.ToModel(), history, 2*time.Minute)
	return res, info, time.Since(start)
}

// linClient runs one client's random operations.
func linClient(b *claim.Client, id int, keys []string, ttl time.Duration, loose bool, budget int, until time.Time,
	tick func() int64, record func(c int, in linIn, call int64, out linOut, known bool)) {
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	held := map[string]claim.Lease{}
	var stale []claim.Lease
	const timeout = time.Second
	ctxCall := func(f func(ctx context.Context) error) error {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		return f(ctx)
	}
	seq := 0
	for n := 0; n < budget && time.Now().Before(until); n++ {
		k := keys[rng.IntN(len(keys))]
		l, holding := held[k]
		r := rng.Float64()
		in := linIn{Key: k}
		var out linOut
		var err error
		var start int64
		switch {
		case holding && r < 0.45:
			seq++
			in.Op, in.Token, in.Value, in.Loose = "commit", l.Token, fmt.Sprintf("c%d-%d", id, seq), loose
			start = tick()
			err = ctxCall(func(ctx context.Context) error { return b.Commit(ctx, l, []byte(in.Value), 0) })
		case holding && r < 0.55:
			in.Op, in.Token = "extend", l.Token
			start = tick()
			var nl claim.Lease
			err = ctxCall(func(ctx context.Context) (err error) { nl, err = b.Extend(ctx, l, ttl); return err })
			if err == nil {
				held[k] = nl
			}
		case holding && r < 0.75:
			in.Op, in.Token = "release", l.Token
			start = tick()
			err = ctxCall(func(ctx context.Context) error { return b.Release(ctx, l) })
			delete(held, k)
			if err != nil {
				stale = append(stale, l)
			}
		case holding && r < 0.85:
			// Abandon the lease: it expires, someone takes over, and
			// this client may later act as a paused holder with it.
			delete(held, k)
			stale = append(stale, l)
			continue
		case !holding && r < 0.5:
			in.Op = "claim"
			start = tick()
			var nl claim.Lease
			err = ctxCall(func(ctx context.Context) (err error) { nl, err = b.TryClaim(ctx, k, ttl); return err })
			if err == nil {
				held[k] = nl
				out.Token = nl.Token
			}
		case !holding && r < 0.62 && len(stale) > 0 && !loose:
			// A paused holder wakes up and acts on an old lease, its
			// deadline ignored: only the server's fence stands between
			// it and the current holder.
			sl := stale[rng.IntN(len(stale))]
			in.Key, in.Token, in.Forged = sl.Key, sl.Token, true
			fl := sl
			fl.Deadline = time.Now().Add(time.Hour)
			switch rng.IntN(3) {
			case 0:
				seq++
				in.Op, in.Value = "commit", fmt.Sprintf("c%d-%d", id, seq)
				start = tick()
				err = ctxCall(func(ctx context.Context) error { return b.Commit(ctx, fl, []byte(in.Value), 0) })
			case 1:
				in.Op = "extend"
				start = tick()
				err = ctxCall(func(ctx context.Context) error { _, err := b.Extend(ctx, fl, ttl); return err })
			default:
				in.Op = "release"
				start = tick()
				err = ctxCall(func(ctx context.Context) error { return b.Release(ctx, fl) })
			}
		default:
			in.Op = "read"
			start = tick()
			var v []byte
			err = ctxCall(func(ctx context.Context) (err error) { v, err = b.Get(ctx, k); return err })
			out.Value = string(v)
		}
		out.OK = err == nil
		answered := err == nil || errors.Is(err, claim.ErrLost) || errors.Is(err, claim.ErrHeld) ||
			(in.Op == "read" && errors.Is(err, claim.ErrNotFound))
		switch {
		case in.Op == "commit" && (!answered || (loose && !out.OK)):
			// May have landed (and, if not atomic, may be withdrawn).
			in.Maybe = true
			record(id, in, start, linOut{}, false)
			if loose {
				record(id, linIn{Key: in.Key, Op: "withdraw", Value: in.Value}, start, linOut{}, false)
			}
		case answered:
			record(id, in, start, out, true)
		}
		if in.Op == "claim" && !answered {
			// A claim of unknown outcome: stay off the key for a lease.
			time.Sleep(ttl)
		}
		time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond)
	}
}

// stir switches random faults on and off on p until stop is closed:
// healthy spells, latency, connection resets, lost replies, blackholes
// and refused connections, each for 50-300 ms.
func stir(p *proxy, stop <-chan struct{}, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))
	for {
		down := false
		switch r := rng.IntN(10); {
		case r < 4:
		case r < 6:
			p.add("lat", "latency", "upstream", 1, map[string]any{"latency": 5 + rng.IntN(60), "jitter": 5})
			p.add("lat-down", "latency", "downstream", 1, map[string]any{"latency": rng.IntN(30), "jitter": 5})
		case r < 7:
			p.add("reset", "reset_peer", "upstream", 0.3, map[string]any{"timeout": rng.IntN(30)})
		case r < 8:
			p.add("lose-replies", "timeout", "downstream", 1, map[string]any{"timeout": 0})
		case r < 9:
			p.blackhole()
		default:
			p.down()
			down = true
		}
		select {
		case <-stop:
		case <-time.After(time.Duration(50+rng.IntN(250)) * time.Millisecond):
		}
		if down {
			p.up()
		}
		p.heal()
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(50+rng.IntN(250)) * time.Millisecond):
		}
	}
}
