package consul

import "github.com/stampede-go/stampede/claim"

// NamesForTest returns every KV key c's driver derives from key.
func NamesForTest(c *claim.Client, key string) []string {
	b := c.Driver().(*backend)
	return []string{b.lockKey(key), b.notifyKey(key), b.valueKey(key)}
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
