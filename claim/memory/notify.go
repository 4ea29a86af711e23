package memory

import (
	"context"
)

// Subscribe implements driver.Notifier: the Client's wake joins the
// Space's subscribers of key.
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	m := sp.subs[key]
	if m == nil {
		m = map[*backend]func(){}
		sp.subs[key] = m
	}
	m[b] = wake
	return nil
}

// Unsubscribe implements driver.Notifier.
func (b *backend) Unsubscribe(key string) {
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if m := sp.subs[key]; m != nil {
		delete(m, b)
		if len(m) == 0 {
			delete(sp.subs, key)
		}
	}
}

// Notify implements driver.Notifier.
func (b *backend) Notify(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	b.sp.wakeLocked(key)
	b.sp.mu.Unlock()
	return nil
}

// wakeLocked wakes key's subscribers; sp.mu must be held. Waking under the
// lock means no wake-up comes after an Unsubscribe has returned. (A wake
// function only signals: it never calls back into the Space.)
func (sp *Space) wakeLocked(key string) {
	for _, w := range sp.subs[key] {
		w()
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
	if err := ctx.Err(); err != nil {
		return err
	}
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	m := sp.topics[topic]
	if m == nil {
		m = map[*backend]func([]byte, bool){}
		sp.topics[topic] = m
	}
	m[b] = deliver
	return nil
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) {
	sp := b.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if m := sp.topics[topic]; m != nil {
		delete(m, b)
		if len(m) == 0 {
			delete(sp.topics, topic)
		}
	}
}
