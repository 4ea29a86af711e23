// Package coord is coordination built on a claim.Client, written once and
// run on every backend: leader election (Election), counting semaphores
// (Semaphore) and read/write locks (RWMutex). Each composes the claim's
// lease, its fencing token, KeepAlive's loss signal and the notifier, so
// each is fenced (a deposed leader's or an expired holder's writes can be
// refused by the token), pushed (waiters block on wake-ups, never poll a
// push backend) and taken over after a holder's death within one lease.
//
// # Keys
//
// Every primitive keeps its state under keys starting with its kind and
// name ("\x00coord:election:NAME", "\x00coord:sem:NAME:…",
// "\x00coord:rw:NAME:…"), so names never collide with a cache's keys.
// Processes agree on a primitive by name, and on its shape (a semaphore's
// count, a read/write lock's reader slots) through a record stored once
// under the name: a process asking for another shape gets ErrShape.
//
// # Leases
//
// Every holder's lease is renewed by claim.Client.KeepAlive; its Context
// is cancelled the moment the lease is lost (a renewal refused, or the
// local deadline reached without one). Work done under a leadership or a
// permit must stop then; writes to systems outside stampede should carry
// the holder's Token and be refused below the highest token seen.
package coord
