package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/cli"
)

// takeover: how long after a SIGKILLed holder's deadline a waiter in
// another process holds the key. Each round starts a holder process (this
// binary, re-executed), which claims a new key and reports its lease; the
// waiter (this process) starts waiting, the holder is killed with SIGKILL
// (no release, its connection dropped by the kernel), and the time from
// the holder's local Deadline to the waiter's Acquire returning is
// recorded. Both processes read one clock (one machine).

func init() {
	app.Register(cli.Command{Name: "takeover", Summary: "a holder process is SIGKILLed: how long past its deadline until a waiter holds the key", Run: takeoverCmd})
}

// takeoverChildEnv carries the holder process's configuration (JSON).
const takeoverChildEnv = "STAMPEDE_TAKEOVER_CHILD"

type takeoverConfig struct {
	Backend string        `json:"backend"`
	Key     string        `json:"key"`
	TTL     time.Duration `json:"ttl_ns"`
	Fair    bool          `json:"fair"`
}

// takeoverLease is what the holder process reports once it holds the key.
type takeoverLease struct {
	Deadline int64  `json:"deadline_unix_ns"`
	Token    uint64 `json:"token"`
	Err      string `json:"err,omitempty"`
}

// TakeoverReport is the result of a takeover run.
type TakeoverReport struct {
	Backend string  `json:"backend"`
	Mode    string  `json:"mode"` // acquire or fair
	TTLMs   float64 `json:"ttl_ms"`
	Rounds  int     `json:"rounds"`
	// Past the dead holder's local deadline, in ms, sorted.
	PastMs []float64 `json:"past_deadline_ms"`
	P50Ms  float64   `json:"p50_ms"`
	MaxMs  float64   `json:"max_ms"`
	// Tokens not above the dead holder's (must be 0).
	BadTokens int `json:"bad_tokens"`
}

func takeoverCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if conf := os.Getenv(takeoverChildEnv); conf != "" {
		return takeoverChild(ctx, conf, os.Stdin, stdout)
	}
	fs := app.Flags("takeover", stderr)
	backend := fs.String("backend", "redis", "backend URL, or a kind (redis, postgres, memcache, etcd, consul, dynamo, zookeeper, nats, mysql: $STAMPEDE_TEST_<KIND>_URL, else a test server started here)")
	rounds := fs.Int("rounds", 10, "holders killed, one per round")
	ttl := fs.Duration("ttl", time.Second, "the holder's lease TTL")
	fair := fs.Bool("fair", false, "holder and waiter use AcquireFair (the queue's takeover) instead of TryClaim and Acquire")
	asJSON := fs.Bool("json", false, "print one JSON report instead of text")
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if *rounds < 1 || *ttl <= 0 {
		fmt.Fprintln(stderr, "stampede-bench takeover: need -rounds >= 1 and -ttl > 0")
		return cli.ErrUsage
	}
	url, stop, err := resolveBackend(ctx, *backend, stderr)
	if err != nil {
		return fmt.Errorf("takeover: %w", err)
	}
	defer stop()
	rep, err := runTakeover(ctx, url, *rounds, *ttl, *fair, stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "takeover after SIGKILL (%s, %s, lease %s, %d rounds): past the dead holder's deadline p50 %.1f ms, max %.1f ms; all: %v\n",
		rep.Backend, rep.Mode, time.Duration(rep.TTLMs*1e6), rep.Rounds, rep.P50Ms, rep.MaxMs, rep.PastMs)
	if rep.BadTokens > 0 {
		return fmt.Errorf("takeover: %d takeovers got a token not above the dead holder's", rep.BadTokens)
	}
	return nil
}

func runTakeover(ctx context.Context, url string, rounds int, ttl time.Duration, fair bool, stderr io.Writer) (*TakeoverReport, error) {
	waiter, err := claim.Open(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("takeover: %w", err)
	}
	defer waiter.Close()
	mode := "acquire"
	acquire := waiter.Acquire
	if fair {
		mode, acquire = "fair", waiter.AcquireFair
	}
	rep := &TakeoverReport{Backend: waiter.Features().Name, Mode: mode, TTLMs: float64(ttl) / 1e6, Rounds: rounds}
	for i := range rounds {
		key := fmt.Sprintf("takeover/%d/%d", time.Now().UnixNano(), i)
		cfg, _ := json.Marshal(takeoverConfig{Backend: url, Key: key, TTL: ttl, Fair: fair})
		exe, args, err := childCommand("takeover")
		if err != nil {
			return nil, err
		}
		cmd := exec.CommandContext(ctx, exe, args...)
		cmd.Env = append(os.Environ(), takeoverChildEnv+"="+string(cfg))
		cmd.Stderr = stderr
		stdin, _ := cmd.StdinPipe()
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("takeover: starting the holder: %w", err)
		}
		held, err := readTakeoverLease(out)
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return nil, err
		}
		type result struct {
			l   claim.Lease
			at  time.Time
			err error
		}
		res := make(chan result, 1)
		wctx, cancel := context.WithTimeout(ctx, ttl+30*time.Second)
		go func() {
			l, err := acquire(wctx, key, ttl)
			res <- result{l, time.Now(), err}
		}()
		time.Sleep(min(ttl/4, 100*time.Millisecond)) // the waiter subscribes (queues) first
		if err := cmd.Process.Kill(); err != nil {
			cancel()
			return nil, fmt.Errorf("takeover: SIGKILL: %w", err)
		}
		stdin.Close()
		cmd.Wait()
		r := <-res
		cancel()
		if r.err != nil {
			return nil, fmt.Errorf("takeover: round %d: the waiter: %w", i, r.err)
		}
		rep.PastMs = append(rep.PastMs, float64(r.at.Sub(time.Unix(0, held.Deadline)).Microseconds())/1e3)
		if r.l.Token <= held.Token {
			rep.BadTokens++
		}
		_ = waiter.Release(ctx, r.l)
	}
	slices.Sort(rep.PastMs)
	rep.P50Ms, rep.MaxMs = rep.PastMs[(len(rep.PastMs)-1)/2], rep.PastMs[len(rep.PastMs)-1]
	return rep, nil
}

func readTakeoverLease(out io.Reader) (takeoverLease, error) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue // not ours (a test binary's output)
		}
		var l takeoverLease
		if err := json.Unmarshal(line, &l); err != nil {
			return l, fmt.Errorf("takeover: the holder's report: %w", err)
		}
		if l.Err != "" {
			return l, fmt.Errorf("takeover: the holder: %s", l.Err)
		}
		return l, nil
	}
	return takeoverLease{}, errors.New("takeover: the holder exited without a lease")
}

// takeoverChild is the holder process: it claims the key, reports its
// lease, and holds it (never releasing) until it is killed or stdin ends.
func takeoverChild(ctx context.Context, conf string, stdin io.Reader, stdout io.Writer) error {
	var cfg takeoverConfig
	if err := json.Unmarshal([]byte(conf), &cfg); err != nil {
		return err
	}
	report := func(l takeoverLease) {
		b, _ := json.Marshal(l)
		fmt.Fprintf(stdout, "%s\n", b)
	}
	c, err := claim.Open(ctx, cfg.Backend)
	if err != nil {
		report(takeoverLease{Err: err.Error()})
		return err
	}
	var l claim.Lease
	if cfg.Fair {
		l, err = c.AcquireFair(ctx, cfg.Key, cfg.TTL)
	} else {
		l, err = c.TryClaim(ctx, cfg.Key, cfg.TTL)
	}
	if err != nil {
		report(takeoverLease{Err: err.Error()})
		return err
	}
	report(takeoverLease{Deadline: l.Deadline.UnixNano(), Token: l.Token})
	_, _ = io.Copy(io.Discard, stdin) // held until killed
	return nil
}
