package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// counted wraps a backend to count its round trips: every call of a
// Backend method is one (Subscribe included; closing a Subscription is
// not counted). The demo prints the total (n); herd reports them per
// method (per).
type counted struct {
	claim.Backend
	n   atomic.Int64
	per [nMethods]atomic.Int64
}

// method names a counted Backend method.
type method int

const (
	mGet method = iota
	mSubscribe
	mTryClaim
	mCommit
	mRelease
	mExtend
	mNotify
	mSet
	mDelete
	mClaimRead     // claim.ClaimReader's TryClaimRead
	mCommitRelease // claim.CommitReleaser's CommitRelease
	nMethods
)

var methodNames = [nMethods]string{"get", "subscribe", "claim", "commit", "release", "extend", "notify", "set", "delete", "claim+read", "commit+release"}

func (m method) String() string { return methodNames[m] }

// callCounts is a snapshot of a counted's calls, by method.
type callCounts [nMethods]int64

func (c *counted) add(m method) {
	c.n.Add(1)
	c.per[m].Add(1)
}

// snapshot returns the calls counted so far, by method.
func (c *counted) snapshot() callCounts {
	var s callCounts
	for i := range s {
		s[i] = c.per[i].Load()
	}
	return s
}

// sub returns a - b.
func (a callCounts) sub(b callCounts) callCounts {
	for i := range a {
		a[i] -= b[i]
	}
	return a
}

// plus returns a + b.
func (a callCounts) plus(b callCounts) callCounts {
	for i := range a {
		a[i] += b[i]
	}
	return a
}

func (a callCounts) total() int64 {
	var t int64
	for _, n := range a {
		t += n
	}
	return t
}

// byName returns the non-zero counts by method name (for JSON).
func (a callCounts) byName() map[string]int64 {
	m := map[string]int64{}
	for i, n := range a {
		if n != 0 {
			m[methodNames[i]] = n
		}
	}
	return m
}

// count wraps b. The wrapper keeps b's optional interfaces visible
// (claim.Broadcaster, so flight's fleet-wide invalidation still works;
// claim.ClaimReader and claim.CommitReleaser, so flight takes the same
// path through the wrapper as without it), counting their calls too.
func count(b claim.Backend) (claim.Backend, *counted) {
	c := &counted{Backend: b}
	bc, isB := b.(claim.Broadcaster)
	cr, isR := b.(claim.ClaimReader)
	cc, isC := b.(claim.CommitReleaser)
	r, w := claimReadCounter{c, cr}, commitReleaseCounter{c, cc}
	type (
		B = claim.Broadcaster
		R = claimReadCounter
		C = commitReleaseCounter
	)
	switch {
	case isB && isR && isC:
		return struct {
			*counted
			B
			R
			C
		}{c, bc, r, w}, c
	case isB && isR:
		return struct {
			*counted
			B
			R
		}{c, bc, r}, c
	case isB && isC:
		return struct {
			*counted
			B
			C
		}{c, bc, w}, c
	case isR && isC:
		return struct {
			*counted
			R
			C
		}{c, r, w}, c
	case isB:
		return struct {
			*counted
			B
		}{c, bc}, c
	case isR:
		return struct {
			*counted
			R
		}{c, r}, c
	case isC:
		return struct {
			*counted
			C
		}{c, w}, c
	}
	return c, c
}

// claimReadCounter counts claim.ClaimReader's calls.
type claimReadCounter struct {
	c *counted
	r claim.ClaimReader
}

func (x claimReadCounter) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	x.c.add(mClaimRead)
	return x.r.TryClaimRead(ctx, key, ttl)
}

// commitReleaseCounter counts claim.CommitReleaser's calls.
type commitReleaseCounter struct {
	c  *counted
	cr claim.CommitReleaser
}

func (x commitReleaseCounter) CommitRelease(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	x.c.add(mCommitRelease)
	return x.cr.CommitRelease(ctx, l, v, ttl)
}

func (c *counted) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	c.add(mTryClaim)
	return c.Backend.TryClaim(ctx, key, ttl)
}

func (c *counted) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	c.add(mExtend)
	return c.Backend.Extend(ctx, l, ttl)
}

func (c *counted) Release(ctx context.Context, l claim.Lease) error {
	c.add(mRelease)
	return c.Backend.Release(ctx, l)
}

func (c *counted) Commit(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	c.add(mCommit)
	return c.Backend.Commit(ctx, l, v, ttl)
}

func (c *counted) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	c.add(mSubscribe)
	return c.Backend.Subscribe(ctx, key)
}

func (c *counted) Notify(ctx context.Context, key string) error {
	c.add(mNotify)
	return c.Backend.Notify(ctx, key)
}

func (c *counted) Get(ctx context.Context, key string) ([]byte, error) {
	c.add(mGet)
	return c.Backend.Get(ctx, key)
}

func (c *counted) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	c.add(mSet)
	return c.Backend.Set(ctx, key, v, ttl)
}

func (c *counted) Delete(ctx context.Context, key string) error {
	c.add(mDelete)
	return c.Backend.Delete(ctx, key)
}
