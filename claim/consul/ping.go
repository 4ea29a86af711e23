package consul

import "context"

// pingKey is the key Ping reads, under the prefix: no key maps to it
// (keys live under PREFIX/c/ and PREFIX/v/).
const pingKey = "/ping"

// Ping implements driver.Pinger: one KV read of a key under the prefix,
// in the default consistency mode (answered by the leader, so it fails
// without one). It fails with an error wrapping ErrConfig on an ACL token
// that the agent does not know (403 "ACL not found") or that lacks
// key:read on the prefix (403 "Permission denied"), a proxy's 401, and a
// server that is not a Consul agent (no X-Consul-Index, a reply that is
// not HTTP, HTTPS refused or spoken to a plain-HTTP agent). Write
// permission is not checked (Consul has no dry run for it, and a probe
// write would be a raft write per Ping): a token that can only read
// meets ErrConfig at its first claim. The driver uses no sessions.
func (b *backend) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, meta, err := b.kv.Get(b.prefix+pingKey, qo(ctx))
	if err != nil {
		return classify(err)
	}
	return indexed(meta)
}
