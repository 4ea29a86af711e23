package driver

import (
	"testing"
	"time"
)

func TestSightings(t *testing.T) {
	var s Sightings
	t0 := time.Unix(1000, 0)
	ttl := 2 * time.Second
	want := t0.Add(ttl + TakeoverMargin(ttl))
	if got := s.End("k", Rev{7}, ttl, t0); !got.Equal(want) {
		t.Fatalf("first sighting: %v, want %v", got, want)
	}
	// The same write seen again later: judged from its first sighting.
	if got := s.End("k", Rev{7}, ttl, t0.Add(time.Second)); !got.Equal(want) {
		t.Errorf("second sighting of the same write: %v, want %v", got, want)
	}
	// Another write (an Extend, a new claim): from its own first sighting.
	t1 := t0.Add(1500 * time.Millisecond)
	if got, w := s.End("k", Rev{7, 1}, ttl, t1), t1.Add(ttl+TakeoverMargin(ttl)); !got.Equal(w) {
		t.Errorf("a new write: %v, want %v", got, w)
	}
	// Keys are apart; a record without TTL says nothing.
	if got, w := s.End("other", Rev{7}, ttl, t1), t1.Add(ttl+TakeoverMargin(ttl)); !got.Equal(w) {
		t.Errorf("another key: %v, want %v", got, w)
	}
	if got := s.End("k", Rev{7, 1}, 0, t1); !got.IsZero() {
		t.Errorf("no TTL: %v, want the zero time", got)
	}
	s.Forget("k")
	t2 := t1.Add(time.Second)
	if got, w := s.End("k", Rev{7, 1}, ttl, t2), t2.Add(ttl+TakeoverMargin(ttl)); !got.Equal(w) {
		t.Errorf("after Forget: %v, want %v", got, w)
	}
	// Bounded: past maxSightings keys it starts over (a later takeover,
	// never an earlier one).
	for i := range maxSightings + 1 {
		s.End(string(rune('a'+i%26))+time.Duration(i).String(), Rev{uint64(i)}, ttl, t2)
	}
	if n := len(s.m); n > maxSightings {
		t.Errorf("%d keys remembered, more than %d", n, maxSightings)
	}
}

func TestTakeoverAt(t *testing.T) {
	rec := time.Unix(2000, 0)
	skew := 100 * time.Millisecond
	if got := TakeoverAt(rec, skew, time.Time{}); !got.Equal(rec.Add(skew)) {
		t.Errorf("unknown end: %v, want the recorded expiry plus skew", got)
	}
	if e := rec.Add(time.Millisecond); !TakeoverAt(rec, skew, e).Equal(e) {
		t.Errorf("an earlier end is the takeover time")
	}
	if e := rec.Add(time.Second); !TakeoverAt(rec, skew, e).Equal(rec.Add(skew)) {
		t.Errorf("a later end does not delay the recorded expiry plus skew")
	}
}
