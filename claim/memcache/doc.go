// Package memcache is the claim driver on memcached, through
// github.com/bradfitz/gomemcache: leases are items created with add,
// fencing tokens come from incr, and waiters are woken by polling
// (memcached cannot push).
//
// # URLs
//
//	memcache://HOST[:PORT][,HOST:PORT...][?PARAMS]
//
// Parameters (unknown, repeated or malformed ones are errors):
//
//	prefix          key prefix (default "stampede")
//	maxvalue        largest value in bytes, at least 1024 (default 1047552:
//	                memcached's default 1 MiB item size less 1 KiB)
//	io_timeout      gomemcache's Timeout: dialling and each call's I/O (default 500ms)
//	max_idle_conns  idle connections kept per server (default 16)
//	poll_min        first polling interval after a change (default 2ms)
//	poll_max        polling interval cap (default 50ms)
//	tls             true: connect with TLS (memcached -Z); default false
//	cacert, cert, key, servername, skip_verify
//	                TLS, read by driver.Params.TLS (need tls=true;
//	                servername defaults to each server's HOST)
//
// The port defaults to 11211. User info is an error: memcached's text
// protocol has no authentication. Opening dials nothing: gomemcache
// connects on first use, and spreads keys over several servers by hash.
// The Client's As accepts a **gomemcache.Client.
//
// # Semantics
//
// Four items per key: the lock (PREFIX:l:KEY), the fence counter (:f:), the
// notify counter (:n:) and the value (:v:), KEY mapped by driver.KeyEncoder
// to memcached's rules (250 bytes with the prefix, no space or control
// byte; other keys are hashed).
//
// Claim is an add of the lock, then an incr of the fence counter, which is
// created when missing at the current Unix time in microseconds: tokens
// keep increasing after the counter was evicted or the server restarted, as
// long as the clients' clocks do not step back. Features.DurableFence is
// false all the same: memcached may evict the lock itself, and then two
// holders can be live at once.
//
// TTLs are whole seconds, rounded up (MinTTL and TTLGranularity are 1s).
// memcached's clock ticks once a second and may run late, so the lock is
// stored with exptime TTL+2s: the server never drops it before its holder's
// Deadline (clocks running at the same rate), and a crashed holder's key is
// free again about two seconds after its TTL. Lifetimes over 30 days are
// sent as absolute Unix times, which then depend on the server's clock.
//
// Release and Extend get the lock, compare its holder id and swap it with
// CompareAndSwap (Release: for an item already expired, then incr the
// notify counter). The lock records the end of its lease: past it (by the
// local clock) Extend and Commit answer ErrLost, whatever the lease's
// Deadline says, and Release frees the lock if nobody claimed it since,
// and answers ErrLost.
//
// Commit is NOT atomic (Features.AtomicCommit is false; there is no
// TryClaimRead or CommitRelease fast path either): it checks the lock,
// writes the value, and succeeds only if the write's reply arrived before
// the lease's local Deadline, hence while the lease was certainly live. A
// later reply may mean a write after expiry, perhaps after a newer holder's
// Commit: Commit takes the value back (gets, compare the bytes, CAS to
// expired) and answers ErrLost. Windows left: readers may see such a late
// value for about one round trip, and a newer holder's value written just
// before it is lost (a miss, not a stale value). Eviction of the lock, and
// a Release of the same lease during its Commit, are not covered.
//
// Values carry their expiry (client clock, Unix ms) in an 8-byte header and
// are stored with exptime TTL+1s: Get never returns an expired value.
//
// Notification polls (Features.Notify is Poll, see driver.Poller): a poll
// reads the lock and the notify counter in one multi-get. Release (once
// the lock is gone) and Notify bump the counter; a changed counter, or the
// lock seen at the previous poll gone or replaced, wakes the key's
// waiters; a claim of a free key does not. Topics use the Client's topic
// log.
//
// gomemcache takes no context: a call whose context is done is refused
// before any I/O, and a call in flight ends within io_timeout.
//
// # Errors
//
// ErrHeld (Remaining from the lock's recorded end), ErrLost, ErrNotFound,
// ErrTooLarge (over maxvalue, refused before any I/O; or from a server
// whose item size limit is smaller), and gomemcache's own errors.
package memcache
