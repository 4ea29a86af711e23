package redis

import (
	"context"
	"errors"
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
	_, err := call(b, ctx, func(ctx context.Context) (string, error) {
		return b.rdb.Set(ctx, b.valKey(key), value, time.Duration(expiry(ttl))*time.Millisecond).Result()
	})
	return err
}

// Delete implements driver.Store: DEL of the value key.
func (b *backend) Delete(ctx context.Context, key string) error {
	_, err := call(b, ctx, func(ctx context.Context) (int64, error) {
		return b.rdb.Del(ctx, b.valKey(key)).Result()
	})
	return err
}
