package consul

// NamesForTest returns every KV key the backend derives from key.
func NamesForTest(b *Backend, key string) []string {
	return []string{b.lockKey(key), b.notifyKey(key), b.valueKey(key)}
}

// SafeKeyByte is safeKeyByte, for the external tests.
var SafeKeyByte = safeKeyByte

// WatchesForTest returns how many keys b watches with a blocking query
// and how many with its poll loop.
func WatchesForTest(b *Backend) (blocking, polled int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.watchers), len(b.polled)
}
