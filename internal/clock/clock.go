// Package clock is the clock that lease expiry is judged by: the local
// Deadline of a lease (package claim), KeepAlive's loss signal, and the
// expiry timestamps that the drivers judging expiry on client clocks
// (Consul, DynamoDB, memcached) write to their server and compare.
//
// In production it is time.Now, nothing more: Now returns time.Now's
// reading unchanged (one atomic load on top). Tests of clock skew set an
// offset and a rate with Set, so that one process's lease clock runs
// ahead of, behind, faster or slower than the others' (libfaketime cannot
// do that to a Go binary: Go reads the vDSO directly). Production code
// never calls Set: only this module's tests can (the package is
// internal), and they call it in their own child processes.
//
// What the skewed clock does not touch: timers and sleeps (they run on
// real time; Until converts a clock reading into the real wait), operation
// timeouts, backoff, metrics, and the expiry of stored values. Readings of
// Now keep a monotonic clock reading, shifted along with the wall clock,
// so comparing two readings of Now (or a reading and a time derived from
// one, such as a Deadline) is immune to steps of the system clock, as
// time.Now's readings are.
package clock

import (
	"fmt"
	"sync/atomic"
	"time"
)

// skew is the state Set installs: readings are base + (real elapsed since
// base) × rate + offset.
type skew struct {
	base   time.Time // a real time.Now reading, with its monotonic reading
	offset time.Duration
	rate   float64
}

var cur atomic.Pointer[skew]

// Now returns the current reading of the lease clock: time.Now, unless a
// test set a skew.
func Now() time.Time { return At(time.Now()) }

// At returns the lease clock's reading at the real time t (a time.Now
// reading): t itself unless a test set a skew. It lets a caller that has
// just read time.Now for another purpose (an operation timeout) read the
// lease clock at the same instant without a second system call.
func At(t time.Time) time.Time {
	s := cur.Load()
	if s == nil {
		return t
	}
	el := t.Sub(s.base)
	if s.rate != 1 {
		el = time.Duration(float64(el) * s.rate)
	}
	return s.base.Add(el + s.offset)
}

// Since returns the lease clock's time elapsed since t (a reading of Now
// or a time derived from one).
func Since(t time.Time) time.Duration { return Now().Sub(t) }

// Until returns the real duration to wait until the lease clock reads t:
// t.Sub(Now()) when the clock runs at the real rate (always, outside
// tests), that divided by the rate otherwise, so that a timer of that
// duration fires when Now reaches t. Negative when t has passed.
func Until(t time.Time) time.Duration {
	s := cur.Load()
	if s == nil {
		return time.Until(t)
	}
	d := t.Sub(At(time.Now()))
	if s.rate != 1 {
		d = time.Duration(float64(d) / s.rate)
	}
	return d
}

// Set makes the lease clock read offset ahead of the real clock from now
// on (negative: behind), and then advance rate seconds per real second
// (1: the real rate; 0.9: 10 % slow). It is for tests of clock skew only,
// in a process of their own (a child process of the test): every lease
// of the process is judged by the skewed clock from then on, including
// leases granted before the call. rate must be positive.
func Set(offset time.Duration, rate float64) error {
	if !(rate > 0) || rate > 1e3 {
		return fmt.Errorf("clock: rate %v: want a positive rate (1 is the real rate)", rate)
	}
	cur.Store(&skew{base: time.Now(), offset: offset, rate: rate})
	return nil
}

// Reset makes the lease clock the real clock again.
func Reset() { cur.Store(nil) }
