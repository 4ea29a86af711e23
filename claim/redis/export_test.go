package redis

import (
	"net/url"

	goredis "github.com/redis/go-redis/v9"
)

// ParseURLForTest exposes the URL mapping to the external tests.
func ParseURLForTest(u *url.URL) (*goredis.Options, error) {
	o, _, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	return &o.Options, nil
}

// NamesForTest returns every Redis name derived from key.
func NamesForTest(prefix, key string) []string {
	b := &Backend{prefix: prefix, enc: newEncoder()}
	return []string{b.lockKey(key), b.fenceKey(key), b.valKey(key), b.channel(key)}
}
