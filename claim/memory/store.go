package memory

import (
	"context"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

func (sp *Space) setLocked(key string, val []byte, ttl time.Duration, now time.Time) {
	v := value{data: append([]byte(nil), val...)}
	if ttl > 0 {
		v.expires = now.Add(ttl)
	}
	sp.values[key] = v
}

// getLocked returns a copy of key's live value; sp.mu must be held.
func (sp *Space) getLocked(key string, now time.Time) ([]byte, bool) {
	v, ok := sp.values[key]
	if ok && !v.expires.IsZero() && !now.Before(v.expires) {
		delete(sp.values, key)
		ok = false
	}
	if !ok {
		return nil, false
	}
	return append([]byte(nil), v.data...), true
}

// Get implements driver.Store.
func (b *backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	v, ok := sp.getLocked(key, sp.now())
	if !ok {
		return nil, driver.ErrNotFound
	}
	return v, nil
}

// Set implements driver.Store.
func (b *backend) Set(ctx context.Context, key string, val []byte, ttl time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.setLocked(key, val, ttl, sp.now())
	return nil
}

// Delete implements driver.Store.
func (b *backend) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	delete(b.sp.values, key)
	b.sp.mu.Unlock()
	return nil
}
