package redis

import (
	"net/url"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
)

// ParseURLForTest exposes the URL mapping to the external tests.
func ParseURLForTest(u *url.URL) (*goredis.Options, error) {
	o, _, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	return o.Simple(), nil
}

// NamesForTest returns every Redis name derived from key: the lock, the
// fence counter, the value, the channel, then the fair queue's two keys
// (queue, entries) and the grant channel.
func NamesForTest(prefix, key string) []string {
	b := &backend{opt: Options{Prefix: prefix}}
	return []string{b.lockKey(key), b.fenceKey(key), b.valKey(key), b.channel(key),
		b.queueKey(key), b.entriesKey(key), b.grantChannel(key)}
}

// PubSubConns returns how many pub/sub connections c's driver has open
// (at most one, or one per master node on a cluster).
func PubSubConns(c *claim.Client) int {
	n := c.Driver().(*backend).n
	n.mu.Lock()
	defer n.mu.Unlock()
	conns := 0
	for _, s := range n.shards {
		if s.ps != nil {
			conns++
		}
	}
	return conns
}

// ClassifyForTest exposes the error classification to the external tests.
var ClassifyForTest = classify

// ParseUniversalForTest exposes the URL mapping (all of go-redis's
// options, Sentinel's among them) and Options to the external tests.
func ParseUniversalForTest(u *url.URL) (*goredis.UniversalOptions, Options, error) {
	return parseURL(u)
}
