package driver

import (
	"context"
	"time"
)

// Queuer is optional: fair acquisition with hand-over (claim.Client's
// AcquireFair). Waiters queue in the substrate, first come first served;
// a release hands the lease to the first live waiter in the same atomic
// step, and the grant (the whole lease, fencing token and all) rides in
// that waiter's wake-up, so it holds the key without another round trip.
// Only the granted waiter is woken; the others stay queued.
//
// A queue entry lives for the TTL its holder asked for, from its last
// Enqueue: the client enqueues again well within it while it waits (which
// keeps its place), so the entry of a waiter that died or left without
// Dequeue is skipped once it has expired. A lease granted to a waiter that
// died meanwhile expires by its TTL like any lease, and is then granted to
// the next live waiter by whichever waiter enqueues first after the
// expiry (step 4 of Enqueue): takeover after a holder's death needs no
// release.
//
// Fencing is as with TryClaim: every grant gets a token strictly greater
// than every token issued before for the key. A key is used either fairly
// (AcquireFair) or not (TryClaim, Acquire): a TryClaim on a free key does
// not look at the queue. Without Queuer, AcquireFair returns an error
// wrapping claim.ErrUnsupported: fair order cannot be built from the
// required methods.
//
// A driver whose atomic step is a read and then a conditional write (a
// cas on memcached, a conditional UpdateItem on DynamoDB) may repeat the
// pair when the condition failed only because another client's write
// landed in between (a lost race, not an error), a bounded number of
// times, and documents it: the client does not retry HandOff.
type Queuer interface {
	// Enqueue is the fair claim, one atomic step on the substrate:
	//  1. it drops key's queue entries whose TTL has run out;
	//  2. if holder holds key's live lease (granted to it by HandOff,
	//     Dequeue or another waiter's Enqueue), it returns that lease;
	//  3. else if no lease is live and holder is first in the queue, or
	//     the queue is empty, it grants key to holder for ttl as TryClaim
	//     would (removing holder's entry) and returns the lease;
	//  4. else if no lease is live and another waiter W is first, it
	//     grants key to W, as HandOff would, and goes on to step 5;
	//  5. else it puts holder at the tail of the queue with an entry that
	//     lives for ttl from now (if holder is queued already, it renews
	//     its entry for ttl and keeps its place), and returns a
	//     *HeldError with the live lease's remaining lifetime when the
	//     substrate can tell.
	// Enqueuing twice is harmless.
	Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (Lease, error)

	// Dequeue removes holder's entry from key's queue (a waiter that
	// gives up). If key's live lease had been granted to holder already,
	// Dequeue hands it over as HandOff does, in the same atomic step, so
	// a grant that crossed the waiter's departure is not lost for a TTL.
	// Dequeuing a holder that is not queued is not an error.
	Dequeue(ctx context.Context, key, holder string) error

	// HandOff is Release for a fairly acquired lease: if l is current,
	// it ends l and, in the same atomic step, grants key to the first live
	// waiter W in the queue (removing W's entry; a token greater than
	// l.Token; W's TTL from now) and then delivers the grant to W's
	// subscription (SubscribeGrants) in whichever process has it. With no
	// live waiter it releases l as Release does, waking key's
	// subscribers. If l is not current it returns ErrLost and changes
	// nothing (as Release, an expired lease nobody has claimed since may
	// be deleted, and then granted to the next waiter). It returns the
	// lease granted (zero if none), so the client hands it to a waiter of
	// its own at once, without waiting for the subscription.
	HandOff(ctx context.Context, l Lease) (next Lease, err error)

	// SubscribeGrants makes the substrate subscription for key's grants
	// and returns once it is live: from then until UnsubscribeGrants
	// returns, every grant of key (by HandOff, Dequeue or Enqueue's step
	// 4), in any process, calls grant with the lease granted (Key,
	// Holder, Token, TTL and Handle set; the client sets Deadline) in
	// every process subscribed (the client picks out its own holders).
	// Whenever the driver cannot rule out that it missed a grant (a
	// reconnect, a poll that failed) it calls grant with a zero Lease,
	// and the client enqueues again (step 2 finds a lease granted
	// meanwhile). grant never blocks. The client calls it at most once
	// per key until the matching UnsubscribeGrants, never concurrently
	// for one key. A poll driver polls the key's lease; it may return
	// before its first poll if that poll delivers a lease granted before
	// it (the grant is then not missed).
	SubscribeGrants(ctx context.Context, key string, grant func(Lease)) error

	// UnsubscribeGrants drops key's grant subscription; after it returns,
	// grant is not called again.
	UnsubscribeGrants(key string)
}
