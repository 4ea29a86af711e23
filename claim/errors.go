package claim

import (
	"errors"
	"fmt"

	"github.com/stampede-go/stampede/claim/driver"
)

// The user-facing names of package driver's types, so user code reads
// claim.Lease, claim.Features, claim.ErrHeld whoever implements them.
type (
	// Lease is one holder's claim on one key; see driver.Lease.
	Lease = driver.Lease
	// Features describes a backend's real semantic differences; see
	// driver.Features.
	Features = driver.Features
	// NotifyMode says how a backend delivers wake-ups (Push or Poll).
	NotifyMode = driver.NotifyMode
	// HeldError is TryClaim's error when another lease is live (matches
	// ErrHeld); Remaining is the holder's lease left, 0 if unknown.
	HeldError = driver.HeldError
	// TooLargeError reports which limit a value exceeded (matches
	// ErrTooLarge).
	TooLargeError = driver.TooLargeError
)

// Notify modes.
const (
	Push = driver.Push
	Poll = driver.Poll
)

// Sentinel errors, matched with errors.Is. Every error a Client returns is
// "claim: OP KEY: ..." wrapping one of these or the driver's own error.
var (
	// ErrHeld: another holder's lease on the key is live.
	ErrHeld = driver.ErrHeld
	// ErrLost: the lease is no longer current (expired, released, or taken
	// over by a newer holder), or its local deadline has passed.
	ErrLost = driver.ErrLost
	// ErrNotFound: no value is stored under the key.
	ErrNotFound = driver.ErrNotFound
	// ErrTooLarge: a value exceeds the backend's limit (before any I/O).
	ErrTooLarge = driver.ErrTooLarge
	// ErrInvalidKey: the key is empty, or in the namespace the client
	// reserves for itself (keys starting with "\x00stampede:").
	ErrInvalidKey = driver.ErrInvalidKey
	// ErrClosed: the Client (or a subscription) was closed.
	ErrClosed = driver.ErrClosed

	// ErrConfig: the backend refuses this Client for a reason that
	// waiting will not fix: wrong or missing credentials, a missing
	// permission, a table or schema that does not exist, a server of
	// another kind at the address. Open fails with it; a cache must
	// not fail open on it (package flight returns it).
	ErrConfig = driver.ErrConfig
	// ErrUnavailable: the backend could not be reached or did not answer
	// within the operation timeout (Options.OpTimeout): a condition that
	// may pass. Every error from the backend that is neither one of the
	// sentinels above nor ErrConfig matches it, the backend's own error
	// wrapped underneath.
	ErrUnavailable = driver.ErrUnavailable

	// ErrUnsupported: the backend's driver lacks what the call needs and
	// the Client cannot build it from the rest (AcquireFair on a driver
	// without driver.Queuer). It is errors.ErrUnsupported.
	ErrUnsupported = errors.ErrUnsupported
)

// maxKeyShown is how much of a key an error message quotes.
const maxKeyShown = 64

// opError wraps err with the operation and key: claim: OP "KEY": err.
func opError(op, key string, err error) error {
	if len(key) > maxKeyShown {
		return fmt.Errorf("claim: %s %q… (%d bytes): %w", op, key[:maxKeyShown], len(key), err)
	}
	return fmt.Errorf("claim: %s %q: %w", op, key, err)
}
