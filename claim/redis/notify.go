package redis

import (
	"context"
)

// Subscribe implements driver.Notifier: SUBSCRIBE (SSUBSCRIBE on a
// cluster) to the key's channel, confirmed by a barrier (see notifier).
func (b *backend) Subscribe(ctx context.Context, key string, wake func()) error {
	return classify(b.n.join(ctx, b.channel(key), func([]byte, bool) { wake() }))
}

// SubscribeValue implements driver.ValueNotifier: a CommitRelease's
// message is 'v' and the value (up to maxWakeValue); every other message
// of the key's channel ("release", "revoke", "notify", a reset) carries
// none.
func (b *backend) SubscribeValue(ctx context.Context, key string, wake func([]byte)) error {
	return classify(b.n.join(ctx, b.channel(key), func(msg []byte, reset bool) {
		if !reset && len(msg) > 0 && msg[0] == 'v' {
			wake(msg[1:])
			return
		}
		wake(nil)
	}))
}

// Unsubscribe implements driver.Notifier: it waits at most leaveTimeout
// for the pub/sub connection.
func (b *backend) Unsubscribe(key string) { b.n.leave(b.channel(key)) }

// Notify implements driver.Notifier: PUBLISH (SPUBLISH on a cluster) on
// the key's channel.
func (b *backend) Notify(ctx context.Context, key string) error {
	return b.publish(ctx, b.channel(key), "notify")
}

// Publish implements driver.Broadcaster: PUBLISH (SPUBLISH on a cluster)
// on the topic's channel.
func (b *backend) Publish(ctx context.Context, topic string, msg []byte) error {
	return b.publish(ctx, b.topicChannel(topic), msg)
}

func (b *backend) publish(ctx context.Context, channel string, msg any) error {
	_, err := call(b, ctx, func(ctx context.Context) (int64, error) {
		if b.cc != nil {
			return b.cc.SPublish(ctx, channel, msg).Result()
		}
		return b.rdb.Publish(ctx, channel, msg).Result()
	})
	return err
}

// SubscribeTopic implements driver.Broadcaster: as Subscribe, on the
// topic's channel.
func (b *backend) SubscribeTopic(ctx context.Context, topic string, deliver func(msg []byte, reset bool)) error {
	return classify(b.n.join(ctx, b.topicChannel(topic), deliver))
}

// UnsubscribeTopic implements driver.Broadcaster.
func (b *backend) UnsubscribeTopic(topic string) { b.n.leave(b.topicChannel(topic)) }
