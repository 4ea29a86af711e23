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
	wakes := b.sp.wakesLocked(key)
	b.sp.mu.Unlock()
	for _, w := range wakes {
		w()
	}
	return nil
}

// wakesLocked returns the wake functions of key's subscribers; sp.mu must
// be held, and they are called after it is released.
func (sp *Space) wakesLocked(key string) []func() {
	m := sp.subs[key]
	out := make([]func(), 0, len(m))
	for _, w := range m {
		out = append(out, w)
	}
	return out
}

// Publish implements driver.Broadcaster: every subscribed Client of the
// Space gets msg, synchronously.
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.sp.mu.Lock()
	targets := make([]func([]byte, bool), 0, len(b.sp.topics[topic]))
	for _, d := range b.sp.topics[topic] {
		targets = append(targets, d)
	}
	b.sp.mu.Unlock()
	for _, d := range targets {
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
