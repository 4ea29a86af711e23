package flight

import (
	"context"
	"sync"
	"time"
)

// Expiry is the lifetime a loader gives what it loaded (SetExpiry).
type Expiry struct {
	// TTL is how long the value stays fresh (without jitter), or how long
	// a not-found is cached (even when Options.NegativeTTL is 0). Zero:
	// the Cache's Options.TTL (with its jitter), Options.NegativeTTL for a
	// not-found.
	TTL time.Duration
	// StaleTTL is how long the value may be served stale after TTL
	// (stale-while-revalidate). Zero: Options.StaleTTL; negative: none.
	StaleTTL time.Duration
}

// loadExpiry is what a load's SetExpiry calls set: for every key of the
// load (all), and per key (keys, a batch load).
type loadExpiry struct {
	mu   sync.Mutex
	all  *Expiry
	keys map[string]Expiry
}

type expiryKey struct{}

// withExpiry returns ctx carrying ex for SetExpiry.
func withExpiry(ctx context.Context, ex *loadExpiry) context.Context {
	return context.WithValue(ctx, expiryKey{}, ex)
}

// SetExpiry sets, from inside a LoadFunc or a BatchFunc, the lifetime of
// what the load returns, from what it loaded: an adaptive TTL (a price
// that changes every minute, a profile that changes once a month), or a
// short-lived not-found. With no keys it applies to every key the load
// returns; with keys (normalised, as the loader receives them) only to
// those, and over a keyless call. The last call wins. It reports false,
// and does nothing, if ctx is not a load's context. The Expiry travels
// with the value in L2 (so every process serves it the same way), and a
// published load error ignores it.
func SetExpiry(ctx context.Context, e Expiry, keys ...string) bool {
	ex, ok := ctx.Value(expiryKey{}).(*loadExpiry)
	if !ok {
		return false
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if len(keys) == 0 {
		ex.all = &e
		return true
	}
	if ex.keys == nil {
		ex.keys = map[string]Expiry{}
	}
	for _, k := range keys {
		ex.keys[k] = e
	}
	return true
}

// of returns the Expiry the load set for key k, if any.
func (ex *loadExpiry) of(k string) (Expiry, bool) {
	if ex == nil {
		return Expiry{}, false
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if e, ok := ex.keys[k]; ok {
		return e, true
	}
	if ex.all != nil {
		return *ex.all, true
	}
	return Expiry{}, false
}
