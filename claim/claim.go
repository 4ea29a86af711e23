package claim

import (
	"context"
	"fmt"
	"time"
)

// Lease is one holder's claim on one key. It is a plain value: copying it is
// how a holder hands its claim to Extend, Release and Commit. A Lease does
// not keep anything alive by itself; see KeepAlive.
type Lease struct {
	// Key is the caller's key, exactly as given to TryClaim.
	Key string
	// Holder identifies this claim (random, unique per successful TryClaim).
	Holder string
	// Token is the fencing token: strictly greater than the token of every
	// lease issued before for Key, including leases that expired or were
	// taken over. Write paths outside stampede can reject stale writers by
	// remembering the highest token they have seen.
	Token uint64
	// TTL is the lease duration last granted (by TryClaim or Extend).
	TTL time.Duration
	// Deadline is the local deadline of the lease: the local clock reading
	// taken just before the request that granted (or last extended) the
	// lease was sent, plus TTL. The server cannot expire the lease before
	// Deadline (assuming clocks run at the same rate), so a holder that
	// stops work at Deadline never overlaps the next holder. Backends
	// refuse Commit and Extend after Deadline without any I/O (ErrLost).
	Deadline time.Time
	// Handle is backend-specific data that Extend, Release and Commit need
	// (an etcd lease ID, a Consul session ID, ...). Opaque to callers.
	Handle string
}

// Expired reports whether the lease's local deadline has passed at now.
func (l Lease) Expired(now time.Time) bool { return !now.Before(l.Deadline) }

// String formats the lease for logs; it never contains secrets.
func (l Lease) String() string {
	return fmt.Sprintf("lease{key=%q token=%d ttl=%s}", l.Key, l.Token, l.TTL)
}

// Claimer grants, renews and releases leases, and commits values fenced by
// them. Every method makes exactly one attempt (no retries, no blocking
// beyond one round trip to the substrate); blocking acquisition, renewal and
// caching live above it in Acquire, KeepAlive and package flight. All
// methods are safe for concurrent use. Cancelling ctx abandons the call and
// returns ctx's error; whether the substrate applied an abandoned request is
// unknown, and every method is written so that this ambiguity is harmless.
type Claimer interface {
	// TryClaim atomically claims key for ttl if no live lease exists. It
	// returns the new Lease, or an error wrapping ErrHeld (a *HeldError,
	// carrying the remaining lifetime of the current lease when the
	// substrate can tell) if another lease is live. It never blocks waiting
	// for the key. ttl is rounded up to the backend's granularity and
	// minimum (Features); the returned Lease says what was granted. A ttl
	// <= 0 is an error (neither ErrHeld nor a lease).
	TryClaim(ctx context.Context, key string, ttl time.Duration) (Lease, error)

	// Extend renews the caller's own lease for ttl from now and returns the
	// renewed lease (same Token). It fails with ErrLost if the lease is no
	// longer current (expired, released, or taken over), including when its
	// local Deadline has passed. Extending a current lease twice is
	// harmless, so a renewal whose reply was lost can simply be retried.
	Extend(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)

	// Release deletes the lease if, and only if, it is still current
	// (compare-and-delete by token), and wakes every waiter subscribed to
	// the key in every process. Releasing a lease that is no longer current
	// returns ErrLost and changes nothing: a stale holder can never release
	// a newer holder's claim. Releasing twice returns ErrLost the second
	// time. A lease that expired is no longer current either, even if
	// nobody has claimed the key since: Release returns ErrLost, telling
	// the holder its exclusivity lapsed (where the lock is still there it
	// is deleted, so waiters need not wait for the server to drop it).
	// Expiry is judged on the lease as last renewed, so an earlier copy of
	// a lease that KeepAlive or Extend renewed releases it, unlike Commit
	// and Extend, which refuse any copy past its own local Deadline.
	Release(ctx context.Context, l Lease) error

	// Commit stores value under the lease's key with the given TTL (0: no
	// expiry) only if the lease is still current, as one atomic step where
	// the substrate allows (Features.AtomicCommit). Otherwise it returns
	// ErrLost and writes nothing. Commit does not release the lease.
	// Value limits are checked before any I/O (ErrTooLarge). value is not
	// retained after Commit returns.
	Commit(ctx context.Context, l Lease, value []byte, ttl time.Duration) error
}

// Notifier delivers wake-ups for a key: every Release of a lease on the key,
// and every explicit Notify, wakes every subscription to that key in every
// process. A process keeps one substrate subscription per key, shared by all
// its subscribers.
type Notifier interface {
	// Subscribe registers interest in key. When it returns without error
	// the subscription is live: any release or notification that happens
	// after Subscribe returns is delivered, so the right order is subscribe,
	// then check state, then wait. Subscribe may block for one round trip;
	// ctx bounds it. The Subscription must be closed.
	Subscribe(ctx context.Context, key string) (Subscription, error)

	// Notify wakes every subscriber of key in every process without
	// touching any lease. It is idempotent in effect: subscribers see at
	// least one wake-up.
	Notify(ctx context.Context, key string) error
}

// Subscription is one subscriber's view of the wake-ups for one key.
// Wake-ups are coalesced: the channel holds at most one pending wake-up, so
// a subscriber that is slow to receive still sees one wake-up after the
// last event, never a lost one.
type Subscription interface {
	// C returns the wake-up channel. A wake-up means "the key was released
	// or notified, or the backend could not rule out that it was (after a
	// reconnect, a compacted watch, or a poll that saw a change)": the
	// receiver must re-check state. C is closed when the subscription is
	// closed or its backend is closed.
	C() <-chan struct{}
	// Close ends the subscription. It is idempotent and never blocks on
	// the network for long; the last subscription of a key in a process
	// drops the substrate subscription.
	Close() error
}

// Store holds the shared (L2) values. Values are byte slices; keys are
// arbitrary non-empty strings, mapped by the backend to what its substrate
// accepts. Methods make one attempt, are safe for concurrent use, and
// neither retain nor modify the slices they are given. Limits are checked
// before any I/O.
type Store interface {
	// Get returns the value of key, or an error wrapping ErrNotFound if it
	// is absent or expired. An expired value is never returned.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key for ttl (0: no expiry), unconditionally.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete removes key's value. Deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

// Backend is one client of one substrate: a Claimer, a Notifier and a
// Store sharing a key space, plus its Features and Close. Several Backend
// values opened on the same substrate behave like several processes.
type Backend interface {
	Claimer
	Notifier
	Store
	// Features describes what this backend guarantees; it never does I/O.
	Features() Features
	// Close releases the backend's connections and background goroutines
	// and closes every open Subscription's channel. Leases are not
	// released: they expire by their TTL. Every call after Close returns
	// an error wrapping ErrClosed. Close is idempotent.
	Close() error
}

// NotifyMode says how a backend delivers wake-ups.
type NotifyMode int

const (
	// Push: the substrate pushes events (pub/sub, LISTEN, watches).
	Push NotifyMode = iota
	// Poll: the backend polls the substrate, once per key per process,
	// with jittered backoff bounded by the holder's lease expiry.
	Poll
)

func (m NotifyMode) String() string {
	if m == Poll {
		return "poll"
	}
	return "push"
}

// Features describes a backend's real semantic differences. The
// conformance suite scales its cases by them; flight and Acquire read them.
type Features struct {
	// Name is the backend's URL scheme, e.g. "redis".
	Name string
	// Notify is Push or Poll.
	Notify NotifyMode
	// AtomicCommit is true if Commit checks the lease and writes the value
	// in one atomic step. If false, a commit racing a takeover may land
	// just after the lease was lost; the README says how wide that window
	// is for the backend.
	AtomicCommit bool
	// DurableFence is true if fencing tokens keep increasing across a
	// restart of the substrate's server (and are never evicted).
	DurableFence bool
	// MinTTL is the shortest lease the substrate honours; shorter requests
	// are granted MinTTL.
	MinTTL time.Duration
	// TTLGranularity is the unit leases and values are rounded up to.
	TTLGranularity time.Duration
	// MaxValueLen is the largest value Commit and Set accept (0: no limit
	// beyond memory).
	MaxValueLen int
	// Broadcast is true if the backend also implements Broadcaster.
	Broadcast bool
}

// Broadcaster is an optional interface: a topic-based message bus over the
// same substrate, used by flight to drop a key from every process's L1 on
// Invalidate. If a backend does not implement it, flight's Invalidate
// removes the key from L2 and from the calling process's L1 only, and other
// processes drop it when their L1 entry expires.
type Broadcaster interface {
	// Publish sends msg to every subscriber of topic in every process, at
	// most once each, best effort (a subscriber that is disconnected at
	// that moment receives a Reset instead).
	Publish(ctx context.Context, topic string, msg []byte) error
	// SubscribeTopic delivers messages published to topic after it
	// returns. The handler runs on one goroutine per subscription, in
	// order; reset is called (with nil msg) after any gap in delivery
	// (reconnect), when the subscriber must assume it missed messages.
	// The returned function stops delivery and waits for the handler.
	SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (stop func(), err error)
}

// ClaimReader is an optional interface: TryClaim that also reads the key's
// stored value in the same atomic step, so a holder learns in one round
// trip whether another holder committed a value between its own read and
// its claim. If a backend does not implement it, flight calls TryClaim and
// then Get (one more round trip) to re-check the value after winning the
// claim.
type ClaimReader interface {
	// TryClaimRead is TryClaim (same rules for ttl, keys, limits, errors
	// and Lease), and on success also returns the value stored under key
	// as of the claim: found is false if there is none (absent or
	// expired), and then value is nil. On a held key it returns the same
	// error as TryClaim (a *HeldError wrapping ErrHeld) and no value.
	// The value is read atomically with the claim: a Commit (or Set)
	// that landed before the claim is seen, one after it is not. A
	// holder that finds a value it can use adopts it and releases the
	// lease. value is the caller's to keep.
	TryClaimRead(ctx context.Context, key string, ttl time.Duration) (l Lease, value []byte, found bool, err error)
}

// CommitReleaser is an optional interface: Commit and Release as one
// atomic step and one round trip. If a backend does not implement it,
// flight calls Commit and then Release (one more round trip).
type CommitReleaser interface {
	// CommitRelease stores value under the lease's key with the given TTL
	// (0: no expiry) and releases the lease, only if the lease is still
	// current, as one atomic step: either both happen or neither does.
	// If the lease is not current it returns ErrLost, writes nothing and
	// releases nothing; past the lease's local Deadline it returns ErrLost
	// without any I/O. Value limits are checked before any I/O
	// (ErrTooLarge). On success it wakes every waiter subscribed to the
	// key in every process, like Release, after the value is visible to
	// Get. value is not retained after CommitRelease returns.
	CommitRelease(ctx context.Context, l Lease, value []byte, ttl time.Duration) error
}
