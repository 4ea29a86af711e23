package driver

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors, re-exported by package claim under the same names.
// Drivers return them (bare, or wrapped with more detail); the client
// wraps once more with the operation and key ("claim: commit "k": lease
// lost"), so errors.Is works on what users see.
var (
	// ErrHeld: another holder's lease on the key is live.
	ErrHeld = errors.New("held by another holder")
	// ErrLost: the lease is no longer current (expired, released, or taken
	// over by a newer holder), or its local deadline has passed.
	ErrLost = errors.New("lease lost")
	// ErrNotFound: no value is stored under the key.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge: a value exceeds the substrate's limit; reported before
	// any I/O, never truncated.
	ErrTooLarge = errors.New("too large")
	// ErrInvalidKey: the key is empty (or reserved by the client).
	ErrInvalidKey = errors.New("invalid key")
	// ErrClosed: the client (or a subscription) was closed.
	ErrClosed = errors.New("closed")

	// ErrConfig: the backend refuses this client for a reason that waiting
	// will not fix: wrong or missing credentials, a permission the client
	// lacks, a table, schema or bucket that does not exist (and was not to
	// be created), a server of another kind at the address. Drivers wrap
	// their substrate's error with it (Misconfigured); a cache must not
	// fail open on it.
	ErrConfig = errors.New("backend misconfigured")
	// ErrUnavailable: the backend could not be reached or did not answer
	// in time (connection refused or dropped, a timeout, a server
	// shutting down): a condition that may pass. The client wraps every
	// driver error that is neither a sentinel above nor ErrConfig with it;
	// drivers need not.
	ErrUnavailable = errors.New("backend unavailable")
)

// Misconfigured wraps err (nil stays nil) so that it matches ErrConfig;
// its text is "backend misconfigured: " and err's.
func Misconfigured(err error) error {
	if err == nil || errors.Is(err, ErrConfig) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrConfig, err)
}

// HeldError is TryClaim's error when another lease is live. It matches
// ErrHeld with errors.Is.
type HeldError struct {
	// Key is the key asked for (set by the client).
	Key string
	// Remaining is how long the current lease has left, as the substrate
	// reported it, or 0 if the substrate cannot tell.
	Remaining time.Duration
}

func (e *HeldError) Error() string {
	if e.Remaining > 0 {
		return fmt.Sprintf("%v (%s left)", ErrHeld, e.Remaining.Round(time.Millisecond))
	}
	return ErrHeld.Error()
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// TooLargeError reports which limit was exceeded. It matches ErrTooLarge.
type TooLargeError struct {
	What  string // "value", "message"
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%s too large: %d bytes, limit %d", e.What, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }
