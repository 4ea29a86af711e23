package driver

import (
	"sync"
	"time"
)

// Sightings is what a process has seen of the claims other processes
// hold: for each lock key, the write of its claim record last seen (Rev)
// and the local time this process first saw that write. It lets a driver
// whose leases expire by a time the holder recorded on its own clock
// (Consul, NATS, DynamoDB, memcached: a waiter takes over only ClockSkew
// after that time, for clocks that differ) take over a claim it watched
// being made within a millisecond or so of the holder's Deadline, whatever
// the two clocks read.
//
// Why that is safe: a holder counts its Deadline from a clock reading
// taken before it sent the write that made or extended its claim
// (driver.Lease's Deadline), for the TTL that write recorded. This
// process saw the write after the server applied it, so after it was
// sent: the holder's Deadline is before the first sighting plus the TTL,
// on clocks that run at the same rate (the assumption Lease.Deadline
// already makes; TakeoverMargin allows 500 ppm), with no assumption on
// what they read. Every later write of the record (an Extend, a new
// claim) is another Rev, judged from its own first sighting. A process
// that first saw a claim late (it started waiting after the claim was
// made) learns nothing early from this and falls back on the recorded
// expiry plus ClockSkew, as before; a driver takes over at the earlier
// of the two times, each of which the holder's Deadline precedes.
//
// The zero Sightings is ready to use; it remembers at most 4096 keys
// (forgetting only delays a takeover until the recorded expiry) and is
// safe for concurrent use.
type Sightings struct {
	mu sync.Mutex
	m  map[string]sighting
}

// Rev identifies one write of a claim record: a revision the server
// assigns (Consul's ModifyIndex, a NATS KV revision, a memcached CAS
// value), or fields of the record every write changes (a fencing token
// and the recorded expiry). Two different writes never have the same Rev.
type Rev [2]uint64

type sighting struct {
	rev Rev
	at  time.Time
}

// maxSightings bounds the keys a Sightings remembers.
const maxSightings = 4096

// TakeoverMargin is how much longer than a claim's TTL a takeover judged
// by sightings waits, for clocks that do not run at quite the same rate:
// 1 ms plus 500 ppm of the TTL.
func TakeoverMargin(ttl time.Duration) time.Duration { return time.Millisecond + ttl/2000 }

// End records that an answer which arrived at local time at showed the
// claim of key at write rev, made for ttl, and returns the local time
// after which the holder's Deadline has passed by this process's
// sightings: the first sighting of rev plus ttl plus TakeoverMargin(ttl).
// A ttl <= 0 (a record that does not say) returns the zero time: nothing
// is known. at is a reading of the clock the driver's Deadlines are on
// (internal/clock's Now in this module).
func (s *Sightings) End(key string, rev Rev, ttl time.Duration, at time.Time) time.Time {
	if ttl <= 0 {
		return time.Time{}
	}
	s.mu.Lock()
	first := at
	if cur, ok := s.m[key]; ok && cur.rev == rev {
		first = cur.at
	} else {
		if s.m == nil || (!ok && len(s.m) >= maxSightings) {
			s.m = make(map[string]sighting)
		}
		s.m[key] = sighting{rev: rev, at: at}
	}
	s.mu.Unlock()
	return first.Add(ttl + TakeoverMargin(ttl))
}

// Forget drops what is known of key's claim (the caller saw it end).
func (s *Sightings) Forget(key string) {
	s.mu.Lock()
	delete(s.m, key)
	s.mu.Unlock()
}

// TakeoverAt is the earlier of a claim's two takeover times: the expiry
// its holder recorded plus the clock-skew margin, and end (from End; zero
// when unknown).
func TakeoverAt(recorded time.Time, skew time.Duration, end time.Time) time.Time {
	t := recorded.Add(skew)
	if !end.IsZero() && end.Before(t) {
		return end
	}
	return t
}
