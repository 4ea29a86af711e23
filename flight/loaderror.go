package flight

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

// ErrRemoteLoad matches the error of a caller answered with a load error
// that the key's holder published (Options.ErrorTTL) instead of a value:
// no load ran for that caller. The error is a *RemoteError.
var ErrRemoteLoad = errors.New("flight: load failed in the key's holder")

// maxErrorText bounds the error text a holder publishes (bytes of UTF-8).
const maxErrorText = 512

// RemoteError is the error of a caller answered with a load error that the
// key's holder published for Options.ErrorTTL: the holder in another
// process, or an earlier flight of this process. It matches ErrRemoteLoad,
// and ErrLoadTimeout too when the holder's load timed out. In the process
// that loaded, it wraps the loader's own error (errors.Is and errors.As
// see it); elsewhere only the text travels.
type RemoteError struct {
	// Key is the normalised key.
	Key string
	// Text is the holder's error text: the loader's error, its panic or
	// its timeout, cut to 512 bytes.
	Text string
	// TimedOut: the holder's load timed out (Options.LoadTimeout, or the
	// loader returned context.DeadlineExceeded).
	TimedOut bool
	// Written is when the holder published the error (its clock).
	Written time.Time

	err error // the loader's error, in the process that loaded
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("flight: load %q failed in the key's holder: %s", e.Key, e.Text)
}

// Is matches ErrRemoteLoad, and ErrLoadTimeout if the load timed out.
func (e *RemoteError) Is(target error) bool {
	return target == ErrRemoteLoad || (e.TimedOut && target == ErrLoadTimeout)
}

// Unwrap returns the loader's own error in the process that loaded, nil
// elsewhere.
func (e *RemoteError) Unwrap() error { return e.err }

// Timeout reports whether the holder's load timed out (the net.Error
// convention).
func (e *RemoteError) Timeout() bool { return e.TimedOut }

// loadError is a failed load as callLoader returns it: the loader's error
// (its own, a *PanicError, ErrGoexit) or ErrLoadTimeout, with the key.
type loadError struct {
	key string
	err error
}

func (e *loadError) Error() string { return fmt.Sprintf("flight: load %q: %v", e.key, e.err) }

func (e *loadError) Unwrap() error { return e.err }

// errorText is what a holder publishes of load error err: the loader's
// part of it (not the "flight: load KEY:" prefix), cut to maxErrorText
// bytes on a character boundary.
func errorText(err error) string {
	var le *loadError
	if errors.As(err, &le) {
		err = le.err
	}
	s := err.Error()
	if len(s) <= maxErrorText {
		return s
	}
	const more = "…"
	n := maxErrorText - len(more)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + more
}

// failedEntry is the entry that publishes flight f's load error err for
// Options.ErrorTTL, or nil when it is not published: ErrorTTL is off; the
// Cache is closing (Close cancelled the load, which says nothing of the
// key); the error is a not-found (NegativeTTL decides those); or f has a
// value that can still be served (a stale value, or a fresh one being
// refreshed early), which the error would replace.
func (c *Cache[V]) failedEntry(ctx context.Context, f *flight[V], err error, dur time.Duration) *entry[V] {
	if c.cfg.ErrorTTL <= 0 || ctx.Err() != nil || isNotFound(err) {
		return nil
	}
	now := time.Now()
	if s := f.stale; s != nil && s.state(now) != expired {
		return nil
	}
	re := &RemoteError{
		Key:      f.key,
		Text:     errorText(err),
		TimedOut: errors.Is(err, ErrLoadTimeout) || errors.Is(err, context.DeadlineExceeded),
		Written:  now,
		err:      err,
	}
	t := now.Add(c.cfg.ErrorTTL)
	return &entry[V]{failed: re, written: now, freshTil: t, staleTil: t, load: dur}
}
