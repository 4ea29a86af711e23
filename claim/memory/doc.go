// Package memory is the in-process claim backend: full claim semantics
// (leases, fencing tokens, fenced commits, push notification, a value store
// with TTLs, a topic bus) with no server. It is the embedded default, and
// lets tests and demos simulate several processes: every Client opened on
// the same Space behaves like a separate process sharing one server.
//
// # URLs
//
//	mem://            the process-wide default space
//	mem://NAME        the space named NAME (created on first use)
//
// Parameters: maxvalue (bytes, default 0: unlimited).
//
// # Semantics
//
// TryClaim, Extend, Release and Commit are atomic (one mutex), and so are
// TryClaimRead (claim and read the value) and CommitRelease (commit and
// release). Fencing tokens come from a per-key counter that outlives
// releases and expiry, so they are strictly increasing for the life of the
// Space. Expiry is judged by the Space's clock (injectable through
// SpaceOptions.Clock); it has no granularity and no minimum TTL. Release
// and Notify wake every subscriber of the key in every Client of the
// Space, synchronously, after the change.
//
// # Errors
//
// The sentinels of package claim, wrapped by the Client.
package memory
