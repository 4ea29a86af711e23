package consul

import "github.com/stampede-go/stampede/claim"

// NamesForTest returns every KV key c's driver derives from key.
func NamesForTest(c *claim.Client, key string) []string {
	b := c.Driver().(*backend)
	return []string{b.lockKey(key), b.notifyKey(key), b.valueKey(key), b.queueKey(key)}
}

// SafeKeyByte is safeKeyByte, for the external tests.
var SafeKeyByte = safeKeyByte

// WatchesForTest returns how many keys c's driver watches with a blocking
// query and how many with its poll loop.
func WatchesForTest(c *claim.Client) (blocking, polled int) {
	b := c.Driver().(*backend)
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.watchers), len(b.polled)
}

// MaxWakeValue is maxWakeValue, for the external tests.
const MaxWakeValue = maxWakeValue

// QueueSeenForTest returns how many waiters the holder's watch of key's
// queue has seen (-1: no watch, or none seen yet).
func QueueSeenForTest(c *claim.Client, key string) int {
	b := c.Driver().(*backend)
	b.mu.Lock()
	w := b.qwatches[key]
	b.mu.Unlock()
	if w == nil {
		return -1
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.known {
		return -1
	}
	n := len(w.q)
	if w.sq != 0 && w.sq == w.qidx {
		n -= min(w.sn, n) // served by hand-overs
	}
	return n
}
