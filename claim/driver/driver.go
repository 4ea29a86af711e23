// Package driver is the contract a claim backend implements, and the
// helpers backend authors share. Users never import it: they hold a
// *claim.Client, which validates arguments, keeps one substrate
// subscription per key, wraps errors, waits, renews and falls back when a
// driver lacks an optional fast path, once for every backend (the way
// database/sql's *DB stands in front of database/sql/driver, or
// gocloud.dev's *blob.Bucket in front of its driver.Bucket).
//
// A driver speaks its substrate and nothing else: every method makes one
// attempt (no retries, no waiting for a key, no caching) and assumes what
// the client has already checked (a non-empty key, a positive TTL, a value
// within Features.MaxValueLen, a client that is not closed, a lease whose
// local Deadline has not passed). The conformance package checks a driver
// against this contract on its real server, through a *claim.Client and
// directly.
//
// Required: Driver (Claimer, Notifier and Store, plus Features and
// Close). Optional, found by type assertion: ClaimReader and
// CommitReleaser (one round trip saved each), ValueNotifier (the value
// in the wake-up: one more), Batcher (many keys per round trip), Queuer
// (fair acquisition, the lease handed over in the wake-up), Broadcaster (a native topic bus), Aser (the native client). What the client does without
// each is said on the interface.
package driver

import (
	"context"
	"fmt"
	"time"
)

// Lease is one holder's claim on one key. It is a plain value: copying it
// is how a holder hands its claim to Extend, Release and Commit. A Lease
// does not keep anything alive by itself (see claim.Client.KeepAlive).
type Lease struct {
	// Key is the caller's key, exactly as given to TryClaim.
	Key string
	// Holder identifies this claim: random, unique per successful
	// TryClaim, chosen by the client: 24 lowercase hexadecimal digits, so
	// a driver may put it in a key, a path or a value as it is.
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
	// stops work at Deadline never overlaps the next holder. The client
	// sets it and refuses Commit and Extend after it without any I/O
	// (ErrLost).
	Deadline time.Time
	// Handle is driver-specific data that Extend, Release and Commit need
	// (an etcd lease ID, a Consul modify index, ...). Opaque to callers.
	Handle string
	// Fair is set by the client on a lease from claim.Client.AcquireFair:
	// its release hands the key over to the next waiter in the queue
	// (Queuer.HandOff). Drivers ignore it.
	Fair bool
}

// Expired reports whether the lease's local deadline has passed at now.
func (l Lease) Expired(now time.Time) bool { return !now.Before(l.Deadline) }

// String formats the lease for logs; it never contains secrets.
func (l Lease) String() string {
	return fmt.Sprintf("lease{key=%q token=%d ttl=%s}", l.Key, l.Token, l.TTL)
}

// Claimer grants, renews and releases leases, and commits values fenced by
// them, on the substrate. Every method makes exactly one attempt and is
// safe for concurrent use. A driver does not start an operation whose ctx
// is already done; cancelling ctx during a call abandons it and returns an
// error wrapping ctx's error. Whether the substrate applied an abandoned
// request is unknown, and every method must be written so that this
// ambiguity is harmless (a retry is safe; a late write never wins over a
// newer holder's).
type Claimer interface {
	// TryClaim atomically claims key for holder for ttl (> 0) if no live
	// lease exists. It returns the Lease with Key, Holder, Token, TTL (as
	// granted: ttl rounded up to the substrate's granularity and minimum)
	// and Handle set; the client sets Deadline. If another lease is live
	// it returns a *HeldError (with the holder's remaining lifetime when
	// the substrate can tell) and changes nothing.
	TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (Lease, error)

	// Extend renews l for ttl (> 0) from now if l is still the current
	// lease of l.Key, and returns it renewed (same Token; TTL as granted;
	// Handle updated if the driver needs). Otherwise, including when the
	// lease expired on the server, it returns ErrLost and changes nothing.
	// Extending a current lease twice is harmless.
	Extend(ctx context.Context, l Lease, ttl time.Duration) (Lease, error)

	// Release deletes l if, and only if, it is still current
	// (compare-and-delete by token, in one atomic step: never a read and
	// then a delete), and then wakes every subscriber of the key in every
	// process. A lease that is not current gets ErrLost and changes
	// nothing, except that a lease that expired with nobody claiming the
	// key since may be deleted (so waiters need not wait for the server to
	// drop it) and still gets ErrLost. Expiry is judged on the lease as
	// last renewed: an earlier copy of a renewed lease releases it.
	Release(ctx context.Context, l Lease) error

	// Commit stores value under l.Key with ttl (0: no expiry) only if l is
	// still current on the server (not taken over, not expired), as one
	// atomic step where the substrate allows (Features.AtomicCommit).
	// Otherwise it returns ErrLost and writes nothing that could be read
	// as current. Commit does not release the lease. value is not retained.
	Commit(ctx context.Context, l Lease, value []byte, ttl time.Duration) error

	// Revoke ends key's current lease, whoever holds it, and replaces
	// key's stored value: with value for ttl (0: no expiry) if value is
	// not nil, else by deleting it. Then it wakes every subscriber of the
	// key in every process (after the change is visible to TryClaim and
	// Get). A revoked lease is lost: Extend, Commit, Release and
	// CommitRelease with it return ErrLost and change nothing, even
	// before the lease would have expired, and a later TryClaim may grant
	// the key at once. Revoke never lowers the fence: the next lease of
	// the key gets a token greater than the revoked one's. A key with no
	// lease has only its value replaced. Where the substrate allows, the
	// lease and the value change in one atomic step; otherwise the lease
	// ends first, so that a Commit racing Revoke either lands before the
	// value is replaced (and is replaced) or fails. Revoking twice is
	// harmless. Revoke is the fenced invalidation of flight's Invalidate
	// and Set: a load that started before it cannot publish after it.
	Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error
}

// Notifier delivers wake-ups. The client keeps one substrate subscription
// per key per process, however many local waiters share it: it calls
// Subscribe for a key at most once until the matching Unsubscribe, and
// never calls the two concurrently for one key.
type Notifier interface {
	// Subscribe makes the substrate subscription for key and returns once
	// it is live (confirmed by the substrate): from then until Unsubscribe
	// returns, every Release (and CommitRelease) of a lease on key and
	// every Notify of key, in any process, calls wake. wake is also called
	// whenever the driver cannot rule out that it missed one (a reconnect,
	// a compacted watch, a poll that failed). wake must be called only
	// after the change it announces is visible to TryClaim and Get, so a
	// woken caller that re-checks sees it. wake never blocks; the driver
	// may call it from any goroutine. ctx bounds the call only, not the
	// subscription.
	Subscribe(ctx context.Context, key string, wake func()) error

	// Unsubscribe drops key's substrate subscription. After it returns,
	// the driver does not call that subscription's wake again. It never
	// blocks on the network for long.
	Unsubscribe(key string)

	// Notify wakes every subscriber of key in every process without
	// touching any lease. Subscribers see at least one wake-up.
	Notify(ctx context.Context, key string) error
}

// Store holds the shared (L2) values. Keys are arbitrary non-empty strings,
// mapped by the driver to what its substrate accepts (see KeyEncoder).
// Methods make one attempt, are safe for concurrent use, and neither retain
// nor modify the slices they are given.
type Store interface {
	// Get returns the value of key, or ErrNotFound if it is absent or
	// expired. An expired value is never returned. The slice is the
	// caller's.
	Get(ctx context.Context, key string) ([]byte, error)
	// Set stores value under key for ttl (0: no expiry), unconditionally.
	Set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// Delete removes key's value. Deleting an absent key is not an error.
	Delete(ctx context.Context, key string) error
}

// Driver is one connection of one process to one substrate: a Claimer, a
// Notifier and a Store sharing a key space, with its Features and Close.
// Several Drivers opened on the same substrate behave like several
// processes.
type Driver interface {
	Claimer
	Notifier
	Store
	// Features describes what the driver guarantees. It does no I/O and
	// returns the same value every time.
	Features() Features
	// Close releases the driver's connections and goroutines. Leases are
	// not released: they expire by their TTL. The client calls it once,
	// after its own subscriptions are gone.
	Close() error
}

// Pinger is optional, and every network driver should have it: Ping
// checks, in as few round trips as it can, that the server answers, that
// it is the kind of server the driver speaks to, that it accepts the
// driver's credentials, and that what the driver needs exists (a table, a
// schema, a bucket), or creates it where the driver was asked to. A
// configuration problem is returned wrapped with ErrConfig
// (Misconfigured); anything else is taken as unavailability. The client
// calls it when it opens the driver (unless asked to start lazily) and from
// Client.Ping; without it, the client reads a key nobody writes.
type Pinger interface {
	Ping(ctx context.Context) error
}

// ClaimReader is optional: TryClaim that also reads the key's stored value
// in the same atomic step, so a holder learns in one round trip whether
// another holder committed a value between its own read and its claim.
// Without it, the client's TryClaimRead calls TryClaim and then Get (one
// more round trip, and not atomic: a value committed between the two is
// seen too, which is harmless for a holder that adopts it).
type ClaimReader interface {
	// TryClaimRead is TryClaim, and on success also returns the value
	// stored under key as of the claim: found is false if there is none
	// (absent or expired), and then value is nil. A Commit (or Set) that
	// landed before the claim is seen, one after it is not. On a held key
	// it returns the same error as TryClaim and no value.
	TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (l Lease, value []byte, found bool, err error)
}

// ClaimFunc is a driver's one claim, which also reads the key's value in
// the same step when read is true. A driver that has one embeds it (as
// http.HandlerFunc adapts a function) to implement both Claimer's
// TryClaim and ClaimReader's TryClaimRead.
type ClaimFunc func(ctx context.Context, key, holder string, ttl time.Duration, read bool) (l Lease, value []byte, found bool, err error)

// TryClaim calls f without the read.
func (f ClaimFunc) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (Lease, error) {
	l, _, _, err := f(ctx, key, holder, ttl, false)
	return l, err
}

// TryClaimRead calls f with the read.
func (f ClaimFunc) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (Lease, []byte, bool, error) {
	return f(ctx, key, holder, ttl, true)
}

// CommitFunc is a driver's one fenced write of a value, which also releases
// the lease in the same step when release is true. A driver that has one
// embeds it to implement both Claimer's Commit and CommitReleaser's
// CommitRelease.
type CommitFunc func(ctx context.Context, l Lease, value []byte, ttl time.Duration, release bool) error

// Commit calls f without the release.
func (f CommitFunc) Commit(ctx context.Context, l Lease, value []byte, ttl time.Duration) error {
	return f(ctx, l, value, ttl, false)
}

// CommitRelease calls f with the release.
func (f CommitFunc) CommitRelease(ctx context.Context, l Lease, value []byte, ttl time.Duration) error {
	return f(ctx, l, value, ttl, true)
}

// CommitReleaser is optional: Commit and Release as one atomic step and
// one round trip. Without it, the client's CommitRelease calls Commit and
// then Release.
type CommitReleaser interface {
	// CommitRelease stores value under l.Key with ttl (0: no expiry) and
	// releases l, only if l is still current, as one atomic step: both
	// happen or neither does (ErrLost). On success it wakes every
	// subscriber of the key in every process, after the value is visible
	// to Get. value is not retained.
	CommitRelease(ctx context.Context, l Lease, value []byte, ttl time.Duration) error
}

// ValueNotifier is optional: wake-ups that carry the value a
// CommitRelease stored, so that a woken waiter answers without reading it
// (one round trip saved per waiting process). Without it, the client
// subscribes with Subscribe and waiters read the key after every wake-up.
type ValueNotifier interface {
	// SubscribeValue is Subscribe (same liveness, same wake-ups), whose
	// wake is called with the value a CommitRelease (or CommitReleaseMany)
	// of key stored, exactly as stored, when the driver carries it (up to
	// a size bound of its own); with nil for every other wake-up (Release,
	// Notify, Revoke, a reconnect, a value over the bound). The client
	// calls SubscribeValue instead of Subscribe, under the same rules.
	SubscribeValue(ctx context.Context, key string, wake func(value []byte)) error
}

// Broadcaster is optional: a native topic bus over the substrate. The
// client keeps one substrate subscription per topic per process and fans
// messages out to its local handlers. Without it, the client builds topics
// from the Claimer, the Store and the Notifier (a short message log per
// topic, appended under a claim, read on wake-up): slower, but on every
// substrate.
type Broadcaster interface {
	// Publish sends msg to every subscriber of topic in every process, at
	// most once each, best effort.
	Publish(ctx context.Context, topic string, msg []byte) error
	// SubscribeTopic makes the substrate subscription for topic and
	// returns once it is live: messages published after it returns are
	// passed to deliver, in order, with reset false. After any gap in
	// which messages may have been lost (a reconnect), deliver is called
	// with nil and reset true. deliver never blocks; the driver may call
	// it from any goroutine but not concurrently for one topic. The client
	// calls SubscribeTopic for a topic at most once until the matching
	// UnsubscribeTopic.
	SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error
	// UnsubscribeTopic drops topic's subscription; after it returns,
	// deliver is not called again.
	UnsubscribeTopic(topic string)
}

// Aser is optional: access to the native client under the driver, for what
// the portable API does not cover. As reports whether it could set *i
// (i is a pointer to a native type the driver documents, e.g.
// *goredis.UniversalClient).
type Aser interface {
	As(i any) bool
}

// SetAs is the usual body of an As method: if i is a *T, it sets *i to v
// and reports true.
func SetAs[T any](i any, v T) bool {
	p, ok := i.(*T)
	if ok {
		*p = v
	}
	return ok
}

// NotifyMode says how a driver delivers wake-ups.
type NotifyMode int

const (
	// Push: the substrate pushes events (pub/sub, LISTEN, watches).
	Push NotifyMode = iota
	// Poll: the driver polls the substrate, once per subscribed key, with
	// jittered backoff bounded by the holder's lease expiry (see Poller).
	Poll
)

func (m NotifyMode) String() string {
	if m == Poll {
		return "poll"
	}
	return "push"
}

// Features describes a driver's real semantic differences. The client
// validates by them; the conformance suite scales its cases by them and
// checks that each is true.
type Features struct {
	// Name is the driver's URL scheme, e.g. "redis".
	Name string
	// Notify is Push or Poll.
	Notify NotifyMode
	// AtomicCommit is true if Commit checks the lease and writes the value
	// in one atomic step. If false, a commit racing a takeover may land
	// just after the lease was lost; the driver's docs say how wide that
	// window is.
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
	// beyond memory). The client refuses larger values before any I/O.
	MaxValueLen int
	// Broadcast is true if the driver implements Broadcaster.
	Broadcast bool
	// MaxBatch is the largest batch a Batcher method takes (0: no limit
	// of the driver's own); the client splits larger ones.
	MaxBatch int
}
