package backendtest

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"
)

// LeaseSpan is one lease a worker held, on the test process's monotonic
// clock: from when Acquire returned until the holder stopped counting on
// it (its critical section ended, or its last-renewed local Deadline,
// whichever came first; not when its CommitRelease returned, whose reply
// may arrive after the next holder was granted the key).
type LeaseSpan struct {
	Key           string
	Token         uint64
	Holder        string
	Worker        int
	Acquired, End time.Time
}

// Overlaps checks spans, per key: tokens are distinct, and sorted by token
// each lease's [Acquired, End] ends no later than every later token's lease
// was acquired (so token order is grant order too). It returns one line
// per violation. The cluster fault tests (faults/cluster_test.go,
// claim/etcd/cluster_test.go) check their lease histories with it.
func Overlaps(spans []LeaseSpan) []string {
	byKey := map[string][]LeaseSpan{}
	for _, l := range spans {
		byKey[l.Key] = append(byKey[l.Key], l)
	}
	var bad []string
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		ls := byKey[key]
		slices.SortFunc(ls, func(a, b LeaseSpan) int { return cmp.Compare(a.Token, b.Token) })
		var prev *LeaseSpan // the earlier lease that ended last
		for i := range ls {
			l := &ls[i]
			if i > 0 && ls[i-1].Token == l.Token {
				bad = append(bad, fmt.Sprintf("%s: token %d granted twice (workers %d and %d)", key, l.Token, ls[i-1].Worker, l.Worker))
			}
			if prev != nil && l.Acquired.Before(prev.End) {
				bad = append(bad, fmt.Sprintf("%s: token %d (worker %d) acquired %v before token %d (worker %d) ended",
					key, l.Token, l.Worker, prev.End.Sub(l.Acquired), prev.Token, prev.Worker))
			}
			if prev == nil || l.End.After(prev.End) {
				prev = l
			}
		}
	}
	return bad
}
