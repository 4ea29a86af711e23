package claim

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Backends wrap them once with the operation and key
// ("redis: claim \"k\": claim: held by another holder"), so errors.Is works
// and the substrate's own error, where there is one, is wrapped too.
var (
	// ErrHeld: another holder's lease on the key is live.
	ErrHeld = errors.New("claim: held by another holder")
	// ErrLost: the lease is no longer current (expired, released, or taken
	// over by a newer holder), or its local deadline has passed.
	ErrLost = errors.New("claim: lease lost")
	// ErrNotFound: no value is stored under the key.
	ErrNotFound = errors.New("claim: not found")
	// ErrTooLarge: a value (or key, or payload) exceeds the substrate's
	// limit; reported before any I/O, never truncated.
	ErrTooLarge = errors.New("claim: too large")
	// ErrInvalidKey: the key is empty.
	ErrInvalidKey = errors.New("claim: invalid key")
	// ErrClosed: the backend (or subscription) was closed.
	ErrClosed = errors.New("claim: backend closed")
)

// HeldError is returned by TryClaim when another lease is live. It matches
// ErrHeld with errors.Is.
type HeldError struct {
	Key string
	// Remaining is how long the current lease has left, as the substrate
	// reported it, or 0 if the substrate cannot tell.
	Remaining time.Duration
}

func (e *HeldError) Error() string {
	if e.Remaining > 0 {
		return fmt.Sprintf("claim: held by another holder (key %q, %s left)", e.Key, e.Remaining.Round(time.Millisecond))
	}
	return fmt.Sprintf("claim: held by another holder (key %q)", e.Key)
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// TooLargeError reports which limit was exceeded. It matches ErrTooLarge.
type TooLargeError struct {
	What  string // "value", "key", "payload"
	Size  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("claim: %s too large: %d bytes, limit %d", e.What, e.Size, e.Limit)
}

// Is makes errors.Is(err, ErrTooLarge) true.
func (e *TooLargeError) Is(target error) bool { return target == ErrTooLarge }

// CheckKey returns ErrInvalidKey for an empty key. Every other key (any
// bytes, any length) is valid: backends map it to what their substrate
// accepts with Keys.
func CheckKey(key string) error {
	if key == "" {
		return ErrInvalidKey
	}
	return nil
}

// CheckValue returns a *TooLargeError if limit > 0 and len(value) > limit.
func CheckValue(value []byte, limit int) error {
	if limit > 0 && len(value) > limit {
		return &TooLargeError{What: "value", Size: len(value), Limit: limit}
	}
	return nil
}
