package driver

import (
	"crypto/sha256"
	"encoding/base64"
)

// KeyEncoder maps arbitrary keys (any bytes, any length) to keys a
// substrate accepts, the same way in every process. A key made only of Safe
// bytes that fits in MaxLen is kept readable as "=" + key; any other key is
// replaced by "#" + base64url(SHA-256(key)) (44 bytes). The two forms never
// collide, so the mapping is injective up to SHA-256 collisions.
type KeyEncoder struct {
	// MaxLen is the longest encoded key the substrate accepts, not counting
	// any prefix the backend adds (0: no limit). It must be 0 or >= 44.
	MaxLen int
	// Safe reports whether a byte may appear in a readable key (nil: any
	// byte may).
	Safe func(b byte) bool
}

// HashedKeyLen is the length of a hashed key.
const HashedKeyLen = 1 + 43

// Encode returns the substrate form of key. It does not check for the empty
// key; the client never passes it one.
func (e KeyEncoder) Encode(key string) string {
	if e.MaxLen <= 0 || 1+len(key) <= e.MaxLen {
		ok := true
		if e.Safe != nil {
			for i := 0; i < len(key); i++ {
				if !e.Safe(key[i]) {
					ok = false
					break
				}
			}
		}
		if ok {
			return "=" + key
		}
	}
	sum := sha256.Sum256([]byte(key))
	return "#" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// PrintableASCII is a Safe function accepting printable ASCII except space.
func PrintableASCII(b byte) bool { return b > 0x20 && b < 0x7f }
