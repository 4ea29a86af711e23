package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var fast = []string{"-procs", "4", "-callers", "50", "-min", "1ms", "-max", "3ms"}

func TestDemo(t *testing.T) {
	var out, errs bytes.Buffer
	rep, err := runDemo(context.Background(), demoConfig{Procs: 4, Callers: 50, MinDelay: time.Millisecond, MaxDelay: 3 * time.Millisecond}, &out, &errs)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{"loaded", "L1"}, {"L2", "L1"}, {"L2"}, {"loaded"}}
	for i, w := range want {
		sc := rep.Scenarios[i]
		if len(sc.Steps) != len(w) {
			t.Fatalf("scenario %d: %d steps", i+1, len(sc.Steps))
		}
		for j, s := range sc.Steps {
			if s.Source != w[j] || s.ID != 1 || s.Key != "apple inc" || s.Error != "" {
				t.Errorf("scenario %d step %d: %+v, want source %s, id 1", i+1, j+1, s, w[j])
			}
			if s.Source == "L1" && s.BackendCalls != 0 {
				t.Errorf("scenario %d step %d: an L1 hit made %d backend calls", i+1, j+1, s.BackendCalls)
			}
			// The holder: get, subscribe, claim+read, commit+release.
			if s.Source == "loaded" && s.BackendCalls != 4 {
				t.Errorf("scenario %d step %d: a load made %d backend calls, want 4", i+1, j+1, s.BackendCalls)
			}
		}
	}
	for i, names := range map[int]int{4: 1, 5: 9} {
		sc := rep.Scenarios[i]
		if sc.Herd == nil || sc.LoaderCalls != int64(names) || sc.Herd.Names != names || sc.Herd.Errors != 0 || sc.Herd.Requests != 200 {
			t.Errorf("herd %q: %+v, %d loader calls; want %d", sc.Title, sc.Herd, sc.LoaderCalls, names)
		}
		// At most 4 round trips per process per name, holder and waiters
		// alike (a process that finds the value in L2 makes fewer).
		if sc.Herd != nil && sc.Herd.BackendCalls > int64(4*sc.Herd.Processes*names) {
			t.Errorf("herd %q: %d backend calls, want at most 4 per process per name (%d)", sc.Title, sc.Herd.BackendCalls, 4*sc.Herd.Processes*names)
		}
	}
	el := rep.Scenarios[6].Election
	if el == nil {
		t.Fatalf("scenario 7 is not the election: %+v", rep.Scenarios[6])
	}
	if el.NextTerm <= el.FirstTerm || el.Next == el.First {
		t.Errorf("election: %+v, want another leader with a higher term", el)
	}
	for p, obs := range el.Observed {
		if len(obs) != 2 || obs[0] != el.FirstTerm || obs[1] != el.NextTerm {
			t.Errorf("election: process %s observed %v, want [%d %d]", p, obs, el.FirstTerm, el.NextTerm)
		}
	}
	tot := rep.Totals
	if tot.DistinctNames != 11 || tot.IDsIssued != tot.DistinctNames || tot.LoaderCalls != int64(tot.DistinctNames+tot.Reloads) || tot.Errors != 0 {
		t.Errorf("totals %+v: want one loader call per distinct name (+1 after the L2 loss), one ID per name", tot)
	}
	if !strings.Contains(out.String(), "loader calls  12") {
		t.Errorf("text output lacks the totals:\n%s", out.String())
	}
	if errs.Len() > 0 {
		t.Errorf("warnings: %s", errs.String())
	}
}

func TestDemoJSON(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run(context.Background(), append([]string{"demo", "-json"}, fast...), &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	var rep demoReport
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if len(rep.Scenarios) != 7 || rep.Totals.LoaderCalls != 12 {
		t.Fatalf("report: %+v", rep.Totals)
	}
}

func TestDemoBackendURL(t *testing.T) {
	var out, errs bytes.Buffer
	if code := run(context.Background(), append([]string{"demo", "-backend", "mem://demo-test"}, fast...), &out, &errs); code != 0 {
		t.Fatalf("exit %d: %s", code, errs.String())
	}
	if !strings.Contains(out.String(), "backend mem://demo-test") {
		t.Fatalf("output:\n%s", out.String())
	}
	errs.Reset()
	if code := run(context.Background(), []string{"demo", "-backend", "nosuch://x"}, &out, &errs); code != 1 || !strings.Contains(errs.String(), "unknown scheme") {
		t.Fatalf("unknown scheme: exit %d, %s", code, errs.String())
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage: stampede"},
		{[]string{"help"}, 0, "demo"},
		{[]string{"help", "demo"}, 0, "-backend"},
		{[]string{"demo", "-h"}, 0, "-backend"},
		{[]string{"nosuch"}, 2, "unknown command"},
		{[]string{"demo", "-procs", "x"}, 2, "invalid value"},
		{[]string{"demo", "extra"}, 2, "unexpected arguments"},
	} {
		var out bytes.Buffer
		if code := run(context.Background(), tc.args, &out, &out); code != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("stampede %v: exit %d, output %q; want %d and %q", tc.args, code, out.String(), tc.code, tc.want)
		}
	}
}
