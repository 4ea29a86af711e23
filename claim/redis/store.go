package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// Get implements driver.Store: GET of the value key.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	v, err := call(b, ctx, func(ctx context.Context) ([]byte, error) {
		return b.rdb.Get(ctx, b.valKey(key)).Bytes()
	})
	if errors.Is(err, goredis.Nil) {
		return nil, driver.ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Set implements driver.Store: SET of the value key, PX when ttl > 0.
func (b *backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	_, err := call(b, ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.write(ctx, "set", func(c goredis.Cmdable) goredis.Cmder {
			return c.Set(ctx, b.valKey(key), value, time.Duration(expiry(ttl))*time.Millisecond)
		})
	})
	return err
}

// Delete implements driver.Store: DEL of the value key.
func (b *backend) Delete(ctx context.Context, key string) error {
	_, err := call(b, ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, b.write(ctx, "delete", func(c goredis.Cmdable) goredis.Cmder {
			return c.Del(ctx, b.valKey(key))
		})
	})
	return err
}

// write runs one plain write command, which cmd queues on c: alone, or in
// the WAIT mode followed by WAIT in one pipeline (one round trip). Its
// error is the command's, WAIT's, or a *ReplicationError.
func (b *backend) write(ctx context.Context, op string, cmd func(c goredis.Cmdable) goredis.Cmder) error {
	if !b.waiting() {
		return cmd(b.rdb).Err()
	}
	pipe := b.rdb.Pipeline()
	c := cmd(pipe)
	w := b.wait(ctx, pipe)
	_, _ = pipe.Exec(ctx) // each command's outcome is read below
	if err := c.Err(); err != nil {
		return err
	}
	acked, err := w.Int64()
	if err != nil {
		return fmt.Errorf("WAIT after the write: %w", err)
	}
	return b.replicated(op, acked)
}
