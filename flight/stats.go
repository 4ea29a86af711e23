package flight

import (
	"sync/atomic"
	"unsafe"
)

// Source says where a caller's answer came from.
type Source uint8

const (
	// SourceNone: the call failed before any tier answered.
	SourceNone Source = iota
	// SourceL1: this process's in-memory cache.
	SourceL1
	// SourceL2: the shared store, read by this process without waiting.
	SourceL2
	// SourceLoaded: this process called the loader (for this caller, or
	// for another caller it was coalesced with: see Result.Shared).
	SourceLoaded
	// SourceRemote: another process held the claim and loaded the value;
	// this process waited for its release and read the value from L2.
	SourceRemote
	// SourceStale: a value past its TTL, within Options.StaleTTL, returned
	// while a refresh runs (stale-while-revalidate), or because the
	// refresh failed.
	SourceStale
	// SourceFallback: the caller's fallback (Policy Fallback), returned
	// at once while the load runs in the background.
	SourceFallback
	// SourceFailSafe: an expired value, within Options.FailSafeTTL,
	// returned because refreshing it failed (the loader or the backend),
	// or took longer than Options.SoftTimeout.
	SourceFailSafe
)

var sourceNames = [...]string{"none", "L1", "L2", "loaded", "remote", "stale", "fallback", "fail-safe"}

func (s Source) String() string {
	if int(s) < len(sourceNames) {
		return sourceNames[s]
	}
	return "unknown"
}

// Stats are a Cache's counters since New. The per-caller counters (L1Hits
// to Errors) add up to Requests; the others count flights (one per key
// per process however many callers are coalesced on it) and events.
type Stats struct {
	Requests uint64 // Get and Fetch calls

	// Per caller, by Source. A cached not-found counts under the tier
	// that answered it, not under Errors.
	L1Hits    uint64
	L2Hits    uint64
	Loaded    uint64
	Remote    uint64
	Stale     uint64
	Fallbacks uint64
	FailSafe  uint64 // answered with an expired value (Options.FailSafeTTL)
	Errors    uint64 // callers that got an error other than ErrNotFound

	Coalesced uint64 // callers that joined a flight another caller started

	Misses       uint64 // flights that found no usable value in L2
	Loads        uint64 // loader calls
	LoadErrors   uint64 // loader calls that failed (panics and timeouts included)
	Waits        uint64 // flights that waited for another process's holder
	Takeovers    uint64 // claims won after waiting for another holder
	Commits      uint64 // values committed to L2
	ErrorCommits uint64 // load errors committed to L2 (Options.ErrorTTL)
	ErrorHits    uint64 // callers answered with a published load error (ErrRemoteLoad), without a load; in Errors too
	LostCommits  uint64 // commits refused because the lease was lost
	Refreshes    uint64 // background refreshes (stale-while-revalidate, early refresh)
	FailOpen     uint64 // flights that loaded without the backend
	DecodeErrors uint64 // L2 values that failed to decode (read as misses)
	Invalidated  uint64 // L1 drops by Invalidate, local or broadcast

	// Health is the Cache's view of its backend now: Healthy, or
	// Degraded since a failed backend call, with its cause.
	Health Health
}

type counters struct {
	l1                                          hitCounter
	l2, loaded, remote, stale, fallback, errors atomic.Uint64
	failSafe                                    atomic.Uint64
	coalesced                                   atomic.Uint64
	misses, loads, loadErrors, waits, takeovers atomic.Uint64
	commits, lostCommits, refreshes, failOpen   atomic.Uint64
	decodeErrors, invalidated                   atomic.Uint64
	errorCommits, errorHits                     atomic.Uint64
}

// Stats returns a snapshot of the counters. Safe for concurrent use.
func (c *Cache[V]) Stats() Stats {
	s := &c.stats
	st := Stats{
		L1Hits:       s.l1.load(),
		L2Hits:       s.l2.Load(),
		Loaded:       s.loaded.Load(),
		Remote:       s.remote.Load(),
		Stale:        s.stale.Load(),
		Fallbacks:    s.fallback.Load(),
		FailSafe:     s.failSafe.Load(),
		Errors:       s.errors.Load(),
		Coalesced:    s.coalesced.Load(),
		Misses:       s.misses.Load(),
		Loads:        s.loads.Load(),
		LoadErrors:   s.loadErrors.Load(),
		Waits:        s.waits.Load(),
		Takeovers:    s.takeovers.Load(),
		Commits:      s.commits.Load(),
		ErrorCommits: s.errorCommits.Load(),
		ErrorHits:    s.errorHits.Load(),
		LostCommits:  s.lostCommits.Load(),
		Refreshes:    s.refreshes.Load(),
		FailOpen:     s.failOpen.Load(),
		DecodeErrors: s.decodeErrors.Load(),
		Invalidated:  s.invalidated.Load(),
		Health:       c.health.snapshot(),
	}
	st.Requests = st.L1Hits + st.L2Hits + st.Loaded + st.Remote + st.Stale + st.Fallbacks + st.FailSafe + st.Errors
	return st
}

// tally counts the answer a call got.
func (c *Cache[V]) tally(a answer[V], err error) {
	if a.e != nil && a.e.failed != nil {
		c.stats.errorHits.Add(1)
	}
	c.stats.count(a.src, err)
}

func (s *counters) count(src Source, err error) {
	if err != nil && !isNotFound(err) {
		s.errors.Add(1)
		return
	}
	switch src {
	case SourceL1:
		s.l1.add()
	case SourceL2:
		s.l2.Add(1)
	case SourceLoaded:
		s.loaded.Add(1)
	case SourceRemote:
		s.remote.Add(1)
	case SourceStale:
		s.stale.Add(1)
	case SourceFallback:
		s.fallback.Add(1)
	case SourceFailSafe:
		s.failSafe.Add(1)
	default:
		s.errors.Add(1)
	}
}

// hitCounter counts L1 hits, the one counter on the hit path. One atomic
// word would be shared by every core serving hits (its cache line moving
// between them on every hit: in a parallel benchmark on two cores, more
// than otter's own lookup); this one has a cache line per stripe, and a
// goroutine adds to the stripe picked by its stack's address (as otter
// does for its read buffers), so goroutines running at the same time
// mostly add to different lines. load sums the stripes.
type hitCounter struct {
	_       [128]byte // off the lines of the Cache's fields that every hit reads
	stripes [hitStripes]struct {
		n atomic.Uint64
		_ [120]byte // a stripe per 128 bytes: adjacent lines are prefetched in pairs
	}
}

const hitStripes = 16

func (h *hitCounter) add() {
	var x byte
	// The bits below 2 KiB (the smallest stack) follow the call depth,
	// not the goroutine; a multiplicative hash mixes the rest.
	a := uint64(uintptr(unsafe.Pointer(&x))) >> 11
	h.stripes[(a*0x9E3779B97F4A7C15)>>60].n.Add(1)
}

func (h *hitCounter) load() uint64 {
	var n uint64
	for i := range h.stripes {
		n += h.stripes[i].n.Load()
	}
	return n
}
