package clock

import (
	"testing"
	"time"
)

func TestDefaultIsRealClock(t *testing.T) {
	Reset()
	r := time.Now()
	if got := At(r); !got.Equal(r) || got != r {
		t.Fatalf("At(%v) = %v, want the reading itself", r, got)
	}
	a := time.Now()
	n := Now()
	b := time.Now()
	if n.Before(a) || n.After(b) {
		t.Fatalf("Now %v not between %v and %v", n, a, b)
	}
	d := time.Now().Add(time.Hour)
	if u := Until(d); u > time.Hour || u < 59*time.Minute {
		t.Fatalf("Until(+1h) = %v", u)
	}
}

func TestOffsetAndRate(t *testing.T) {
	t.Cleanup(Reset)
	if err := Set(2*time.Second, 0.5); err != nil {
		t.Fatal(err)
	}
	s := cur.Load()
	// Deterministic: readings at chosen real instants.
	r := s.base.Add(10 * time.Second)
	got := At(r)
	if want := s.base.Add(5*time.Second + 2*time.Second); !got.Equal(want) {
		t.Fatalf("At(base+10s) = %v, want base+7s = %v", got, want)
	}
	// The wall clock moves with the monotonic one.
	if w := got.Round(0).Sub(s.base.Round(0)); w != 7*time.Second {
		t.Fatalf("wall reading is %v after base, want 7s", w)
	}
	// Until is the real wait: 1 s of a half-rate clock takes 2 s.
	if u := Until(Now().Add(time.Second)); u < 1900*time.Millisecond || u > 2*time.Second {
		t.Fatalf("Until(now+1s) at rate 0.5 = %v, want about 2s", u)
	}
	if d := Since(Now().Add(-time.Second)); d < time.Second || d > 1100*time.Millisecond {
		t.Fatalf("Since(now-1s) = %v", d)
	}
	Reset()
	if n := Now(); time.Until(n) > time.Second || time.Since(n) > time.Second {
		t.Fatalf("after Reset, Now = %v, not the real clock", n)
	}
}

func TestNegativeOffset(t *testing.T) {
	t.Cleanup(Reset)
	if err := Set(-200*time.Millisecond, 1); err != nil {
		t.Fatal(err)
	}
	d := time.Since(Now())
	if d < 200*time.Millisecond || d > 2*time.Second {
		t.Fatalf("a clock 200 ms behind reads %v behind the real one", d)
	}
}

func TestSetRejectsBadRate(t *testing.T) {
	t.Cleanup(Reset)
	for _, r := range []float64{0, -1, 1e9} {
		if err := Set(0, r); err == nil {
			t.Errorf("Set(0, %v) accepted", r)
		}
	}
	if cur.Load() != nil {
		t.Fatal("a refused Set changed the clock")
	}
}
