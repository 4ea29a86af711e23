package memory

import (
	"context"
)

// registry is a Space's subscribers of keys (their wake) or of topics
// (their deliver), by name and client. Its users hold the Space's lock.
type registry[F any] map[string]map[*backend]F

func (r registry[F]) add(name string, b *backend, f F) {
	if r[name] == nil {
		r[name] = map[*backend]F{}
	}
	r[name][b] = f
}

func (r registry[F]) remove(name string, b *backend) {
	delete(r[name], b)
	if len(r[name]) == 0 {
		delete(r, name)
	}
}

// subscribe adds f to r under the Space's lock, unless ctx is done.
func subscribe[F any](ctx context.Context, b *backend, r registry[F], name string, f F) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	defer b.sp.mu.Unlock()
	r.add(name, b, f)
	return nil
}

func unsubscribe[F any](b *backend, r registry[F], name string) {
	b.sp.mu.Lock()
	defer b.sp.mu.Unlock()
	r.remove(name, b)
}

// Subscribe implements driver.Notifier: the Client's wake joins the
// Space's subscribers of key.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return subscribe(ctx, b, b.sp.subs, key, func([]byte) { wake() })
}

// SubscribeValue implements driver.ValueNotifier: a CommitRelease's
// wake-up carries its value, whatever its size.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	return subscribe(ctx, b, b.sp.subs, key, wake)
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) { unsubscribe(b, b.sp.subs, key) }

// Notify implements driver.Notifier.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	b.sp.wakeLocked(key, nil)
	b.sp.mu.Unlock()
	return nil
}

// wakeLocked wakes key's subscribers; sp.mu must be held. Waking under the
// lock means no wake-up comes after an Unsubscribe has returned. (A wake
// function only signals: it never calls back into the Space.)
func (sp *Space) wakeLocked(key string, value []byte) {
	for _, w := range sp.subs[key] {
		w(value)
	}
}

// Publish implements driver.Broadcaster: every subscribed Client of the
// Space gets msg, synchronously, under the Space's lock (so never after
// its UnsubscribeTopic returned).
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	defer b.sp.mu.Unlock()
	for _, d := range b.sp.topics[topic] {
		d(append([]byte(nil), msg...), false)
	}
	return nil
}

// SubscribeTopic implements driver.Broadcaster.
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	return subscribe(ctx, b, b.sp.topics, topic, deliver)
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) { unsubscribe(b, b.sp.topics, topic) }
