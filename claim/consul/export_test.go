package consul

// NamesForTest returns every KV key the backend derives from key.
func NamesForTest(b *Backend, key string) []string {
	return []string{b.lockKey(key), b.notifyKey(key), b.valueKey(key)}
}

// SafeKeyByte is safeKeyByte, for the external tests.
var SafeKeyByte = safeKeyByte
