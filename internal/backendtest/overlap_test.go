package backendtest

import (
	"testing"
	"time"
)

// TestOverlaps: the checker catches an overlap, a reused token and a token
// granted out of order, and passes a clean history.
func TestOverlaps(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	span := func(key string, token uint64, from, to int) LeaseSpan {
		return LeaseSpan{Key: key, Token: token, Acquired: at(from), End: at(to)}
	}
	clean := []LeaseSpan{span("a", 5, 0, 10), span("a", 9, 10, 20), span("b", 7, 5, 30), span("a", 12, 25, 26)}
	if bad := Overlaps(clean); len(bad) != 0 {
		t.Errorf("clean history: %q", bad)
	}
	for name, ls := range map[string][]LeaseSpan{
		"overlap": {span("a", 5, 0, 10), span("a", 9, 9, 20)},
		// The middle lease is clean against the first, not the third
		// against the first.
		"overlap with an older lease": {span("a", 1, 0, 50), span("a", 2, 60, 70), span("a", 3, 40, 45)},
		"token reused":                {span("a", 5, 0, 10), span("a", 5, 20, 30)},
		"token order inverted":        {span("a", 9, 0, 10), span("a", 5, 20, 30)},
	} {
		if bad := Overlaps(ls); len(bad) == 0 {
			t.Errorf("%s: not caught", name)
		}
	}
}

// TestTimeOverlaps: MeasureFailover's checker finds an intersection
// whatever the tokens, and passes leases that touch.
func TestTimeOverlaps(t *testing.T) {
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ok := []LeaseSpan{
		{Key: "a", Token: 5, Acquired: at(0), End: at(10)},
		{Key: "a", Token: 1, Acquired: at(10), End: at(20)}, // token repeated lower, but no overlap
		{Key: "b", Token: 1, Acquired: at(5), End: at(30)},
	}
	if bad := TimeOverlaps(ok); len(bad) != 0 {
		t.Fatalf("false positives: %v", bad)
	}
	bad := TimeOverlaps(append(ok, LeaseSpan{Key: "a", Token: 9, Acquired: at(15), End: at(40)}))
	if len(bad) != 1 {
		t.Fatalf("found %v, want one overlap", bad)
	}
}
