package flight

import (
	"sync"
	"time"

	"github.com/maypok86/otter/v2"
)

// l1ClockResolution is how often L1's clock reads the time. L1 judges
// expiry on it, so an L1 entry may be served up to this long past its
// L1 TTL (never past a revocation: Invalidate and Set remove entries,
// whatever the clock says). In exchange an L1 hit reads one atomic
// instead of the system clock: the clock read was a third of a hit's
// cost on a KVM guest (kvm-clock), ~25 ns.
const l1ClockResolution = time.Millisecond

// l1Clock is the clock every Cache's L1 reads, shared by the process: one
// goroutine updates it while any Cache with an L1 is open (counted by
// acquireL1Clock and releaseL1Clock), none after the last one closes.
var l1Clock struct {
	mu    sync.Mutex
	users int
	clock *otter.CoarseClock
}

// acquireL1Clock returns the shared L1 clock, started if no open Cache
// holds it; every call is paired with releaseL1Clock.
func acquireL1Clock() *otter.CoarseClock {
	l1Clock.mu.Lock()
	defer l1Clock.mu.Unlock()
	if l1Clock.users == 0 {
		l1Clock.clock = otter.NewCoarseClock(l1ClockResolution)
	}
	l1Clock.users++
	return l1Clock.clock
}

// releaseL1Clock stops the shared clock's goroutine once no Cache holds
// it. A clock stopped while an L1 still reads it reads the precise time.
func releaseL1Clock() {
	l1Clock.mu.Lock()
	defer l1Clock.mu.Unlock()
	l1Clock.users--
	if l1Clock.users == 0 {
		l1Clock.clock.Stop()
		l1Clock.clock = nil
	}
}
