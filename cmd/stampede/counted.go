package main

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/stampede-go/stampede/claim"
)

// counted wraps a backend to count its round trips (the demo prints them).
type counted struct {
	claim.Backend
	n atomic.Int64
}

// countedBroadcaster keeps the wrapped backend's Broadcaster visible, so
// flight's fleet-wide invalidation still works through the wrapper.
type countedBroadcaster struct {
	*counted
	claim.Broadcaster
}

func count(b claim.Backend) (claim.Backend, *counted) {
	c := &counted{Backend: b}
	if bc, ok := b.(claim.Broadcaster); ok {
		return countedBroadcaster{c, bc}, c
	}
	return c, c
}

func (c *counted) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	c.n.Add(1)
	return c.Backend.TryClaim(ctx, key, ttl)
}

func (c *counted) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	c.n.Add(1)
	return c.Backend.Extend(ctx, l, ttl)
}

func (c *counted) Release(ctx context.Context, l claim.Lease) error {
	c.n.Add(1)
	return c.Backend.Release(ctx, l)
}

func (c *counted) Commit(ctx context.Context, l claim.Lease, v []byte, ttl time.Duration) error {
	c.n.Add(1)
	return c.Backend.Commit(ctx, l, v, ttl)
}

func (c *counted) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	c.n.Add(1)
	return c.Backend.Subscribe(ctx, key)
}

func (c *counted) Notify(ctx context.Context, key string) error {
	c.n.Add(1)
	return c.Backend.Notify(ctx, key)
}

func (c *counted) Get(ctx context.Context, key string) ([]byte, error) {
	c.n.Add(1)
	return c.Backend.Get(ctx, key)
}

func (c *counted) Set(ctx context.Context, key string, v []byte, ttl time.Duration) error {
	c.n.Add(1)
	return c.Backend.Set(ctx, key, v, ttl)
}

func (c *counted) Delete(ctx context.Context, key string) error {
	c.n.Add(1)
	return c.Backend.Delete(ctx, key)
}
