// Package redis is the claim backend for Redis (standalone, Sentinel or
// Cluster) on go-redis v9: leases by a Lua SET-if-absent with PX, fencing
// tokens from a per-key INCR counter, wake-ups by pub/sub.
//
// # URLs
//
//	redis://[USER[:PASSWORD]@]HOST[:PORT][/DB][?PARAMS]
//	rediss://...   the same over TLS (server name checked against HOST)
//
// PORT defaults to 6379 and DB to 0. Parameters: prefix (key prefix,
// default "stampede"), maxvalue (bytes, default 512 MiB), health_check
// (pub/sub ping interval, default 3s), and go-redis client settings:
// client_name, pool_size, min_idle_conns, max_retries (default 0: no
// retries, one attempt per call), protocol (2 or 3), dial_timeout,
// read_timeout, write_timeout; for rediss only: cacert (PEM file of the CA
// to trust instead of the system roots), cert and key (PEM files of a
// client certificate and its key), servername (default HOST) and
// skip_verify (testing only); cluster (true: a Redis Cluster client seeded with HOST and addrs) and
// addrs (more seed HOST:PORT addresses, comma-separated). An unknown
// parameter is an error. For Sentinel, custom dialers or
// anything else, build the client yourself and call New.
//
// # Semantics
//
// Every lease operation is one Lua script on keys sharing one hash slot, so it
// is atomic and works on Redis Cluster: for key K the backend uses
// PREFIX:{E}:lock, PREFIX:{E}:fence and PREFIX:{E}:val, and the channel
// PREFIX:{E}:ch, where E is K itself ("=" + K) when it is at most 255
// bytes without braces, else "#" + base64url(SHA-256(K)).
//
// TryClaim runs one script: if the lock key is absent it INCRs the key's
// fence counter and sets the lock to "TOKEN:HOLDER" with PX TTL; otherwise
// it returns the lock's PTTL (HeldError.Remaining). The fence counter has
// no expiry and survives release and expiry, so tokens strictly increase
// for as long as the server keeps its data (exact up to 2^53: scripts see
// numbers as doubles). Without persistence a restart
// of Redis (or a failover to a replica that had not yet received the last
// INCR) loses counters and tokens can repeat: Features.DurableFence is
// false. With appendonly yes and appendfsync always, counters and locks
// survive a restart. The fence counters are small keys without TTL, one
// per key ever claimed.
//
// Extend (PEXPIRE), Release (DEL then PUBLISH) and Commit (SET of the value
// key, PX when ttl > 0) each compare the lock's "TOKEN:HOLDER" first, in
// the same script: a stale holder changes nothing and gets ErrLost. Commit
// is therefore atomic with the lease check. TryClaimRead is the claim
// script with a GET of the value key; CommitRelease is Commit and Release
// in one script (compare, SET, DEL, PUBLISH). Leases and values have
// millisecond granularity and a 1 ms minimum; expiry is judged by the
// server's clock, and the local Deadline (taken before the request was
// sent) is never later than the server's expiry if clocks run at the same
// rate.
//
// Notify: Release and Notify publish on the key's channel (SPUBLISH on a
// *ClusterClient, so a release reaches only the key's shard, not every
// node; PUBLISH otherwise). Each Backend keeps one dedicated pub/sub
// connection (one per master node on a cluster), with one subscription per
// key however many local waiters. Subscribe returns once the server has
// confirmed the SUBSCRIBE. When the pub/sub connection drops, or a
// health-check PING goes unanswered, the Backend reconnects, subscribes
// again and then wakes every waiter to re-check, so a release published
// during the outage is never lost; topic subscribers get a reset.
//
// Clients: New takes the user's own *Client (standalone or Sentinel
// failover) or *ClusterClient; *Ring is refused (its pub/sub cannot follow
// keys across shards). go-redis retries failed commands MaxRetries times
// by default; every method here is safe under such a retry, but one
// attempt per call (MaxRetries: -1) gives the clearest errors. Set
// ContextTimeoutEnabled too (the URL opener does), or calls outlive their
// context's deadline until ReadTimeout (3 s by default).
//
// # Errors
//
// ErrHeld (*HeldError with Remaining), ErrLost, ErrNotFound, ErrTooLarge,
// ErrInvalidKey and ErrClosed from package claim, wrapped as
// "redis: OP KEY: ...", with go-redis's error underneath for I/O failures.
// Passwords never appear in errors.
package redis

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
)

// Scheme and TLSScheme are the URL schemes this package registers.
const (
	Scheme    = "redis"
	TLSScheme = "rediss"
)

// Defaults for Options' zero fields.
const (
	DefaultPrefix              = "stampede"
	DefaultMaxValueLen         = 512 << 20 // Redis's proto-max-bulk-len default
	DefaultHealthCheckInterval = 3 * time.Second
)

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(TLSScheme, &URLOpener{})
}

// Options configure a Backend. nil means defaults; every zero field is a
// default.
type Options struct {
	// Prefix starts every key and channel name (default "stampede"). It
	// must not contain '{' or '}' (the hash tag that keeps a key's names in
	// one cluster slot follows it). Processes sharing keys must agree on it.
	Prefix string
	// MaxValueLen is the largest value Commit and Set accept (default 512
	// MiB, Redis's proto-max-bulk-len default; set it to the server's).
	MaxValueLen int
	// HealthCheckInterval: when the pub/sub connection has been silent this
	// long, the Backend pings it; with no answer within another interval
	// the connection is replaced and waiters re-check (default 3s).
	HealthCheckInterval time.Duration
	// CloseClient makes Close also close the go-redis client (default
	// false: the caller owns it). Backends opened by URL close theirs.
	CloseClient bool
}

// Backend is a claim.Backend, claim.Broadcaster, claim.ClaimReader and
// claim.CommitReleaser on one go-redis client.
// It is safe for concurrent use.
type Backend struct {
	rdb     goredis.UniversalClient
	cc      *goredis.ClusterClient // non-nil: sharded pub/sub
	prefix  string
	maxVal  int
	closeRC bool
	enc     claim.KeyEncoder
	hub     *hub.Hub
	n       *notifier

	mu     sync.Mutex
	closed bool
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.Broadcaster    = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

// New returns a Backend on client: a *goredis.Client (standalone or
// Sentinel failover) or *goredis.ClusterClient (sharded pub/sub, Redis 7
// or later). It does no I/O. Close does not close client unless
// opt.CloseClient is set.
func New(client goredis.UniversalClient, opt *Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("redis: New: nil client")
	}
	if _, ok := client.(*goredis.Ring); ok {
		return nil, errors.New("redis: New: *Ring is not supported (use a *ClusterClient)")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return nil, fmt.Errorf("redis: New: prefix %q must not contain '{' or '}'", o.Prefix)
	}
	if o.MaxValueLen <= 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.HealthCheckInterval <= 0 {
		o.HealthCheckInterval = DefaultHealthCheckInterval
	}
	b := &Backend{
		rdb:     client,
		prefix:  o.Prefix,
		maxVal:  o.MaxValueLen,
		closeRC: o.CloseClient,
		enc:     newEncoder(),
	}
	b.cc, _ = client.(*goredis.ClusterClient)
	b.n = newNotifier(b, o.HealthCheckInterval)
	b.hub = hub.New(substrate{b})
	return b, nil
}

// Client returns the go-redis client the Backend uses.
func (b *Backend) Client() goredis.UniversalClient { return b.rdb }

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Push,
		AtomicCommit:   true,
		DurableFence:   false,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    b.maxVal,
		Broadcast:      true,
	}
}

// newEncoder keeps keys of up to 255 bytes without braces readable.
func newEncoder() claim.KeyEncoder {
	return claim.KeyEncoder{MaxLen: 256, Safe: func(c byte) bool { return c != '{' && c != '}' }}
}

// names of one key: every name shares the hash tag {E}.
func (b *Backend) base(key string) string { return b.prefix + ":{" + b.enc.Encode(key) + "}" }

func (b *Backend) lockKey(key string) string  { return b.base(key) + ":lock" }
func (b *Backend) fenceKey(key string) string { return b.base(key) + ":fence" }
func (b *Backend) valKey(key string) string   { return b.base(key) + ":val" }
func (b *Backend) channel(key string) string  { return b.base(key) + ":ch" }
func (b *Backend) topicChannel(topic string) string {
	return b.prefix + ":{" + b.enc.Encode(topic) + "}:topic"
}

func (b *Backend) publishCmd() string {
	if b.cc != nil {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

func (b *Backend) check(ctx context.Context, op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("redis: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("redis: %s %q: %w", op, key, claim.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("redis: %s %q: %w", op, key, err)
	}
	return nil
}

func (b *Backend) checkValue(op, key string, val []byte, ttl time.Duration) error {
	if ttl < 0 {
		return fmt.Errorf("redis: %s %q: negative ttl %s", op, key, ttl)
	}
	if err := claim.CheckValue(val, b.maxVal); err != nil {
		return fmt.Errorf("redis: %s %q: %w", op, key, err)
	}
	return nil
}

// millis rounds d up to whole milliseconds (at least 1).
func millis(d time.Duration) int64 {
	return max(1, int64((d+time.Millisecond-1)/time.Millisecond))
}

// remaining converts a PTTL reply: -1 (a lock key without expiry, set by
// something else) is unknown (0); 0 ms left is reported as 1 ms.
func remaining(pttl int64) time.Duration {
	if pttl < 0 {
		return 0
	}
	return time.Duration(max(1, pttl)) * time.Millisecond
}

func holderID() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

func stamp(l claim.Lease) string { return strconv.FormatUint(l.Token, 10) + ":" + l.Holder }

var (
	// claimScript reads the value key too when it is given (TryClaimRead).
	claimScript = goredis.NewScript(`
local pttl = redis.call('PTTL', KEYS[1])
if pttl ~= -2 then return {0, pttl} end
local tok = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d', tok) .. ':' .. ARGV[1], 'PX', ARGV[2])
if KEYS[3] then
  local v = redis.call('GET', KEYS[3])
  if v then return {1, tok, v} end
end
return {1, tok}`)
	extendScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)
	releaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call(ARGV[3], ARGV[2], 'release')
return 1`)
	commitScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return 1`)
	commitReleaseScript = goredis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
redis.call('DEL', KEYS[1])
redis.call(ARGV[5], ARGV[4], 'release')
return 1`)
)

// TryClaim implements claim.Claimer: one script round trip.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: the claim script also GETs
// the value key, in the same script and round trip.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(ctx, op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("redis: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	ms := millis(ttl)
	holder := holderID()
	keys := []string{b.lockKey(key), b.fenceKey(key)}
	if read {
		keys = append(keys, b.valKey(key))
	}
	start := time.Now()
	res, err := claimScript.Run(ctx, b.rdb, keys, holder, ms).Slice()
	if err != nil {
		return claim.Lease{}, nil, false, fmt.Errorf("redis: %s %q: %w", op, key, err)
	}
	ok, n, v, found, err := claimReply(res)
	if err != nil {
		return claim.Lease{}, nil, false, fmt.Errorf("redis: %s %q: %w", op, key, err)
	}
	if !ok {
		return claim.Lease{}, nil, false, fmt.Errorf("redis: %s %q: %w", op, key,
			&claim.HeldError{Key: key, Remaining: remaining(n)})
	}
	granted := time.Duration(ms) * time.Millisecond
	l := claim.Lease{Key: key, Holder: holder, Token: uint64(n), TTL: granted, Deadline: start.Add(granted)}
	return l, v, found, nil
}

// claimReply decodes {1, token [, value]} or {0, pttl}.
func claimReply(res []any) (ok bool, n int64, v []byte, found bool, err error) {
	bad := fmt.Errorf("unexpected script reply %v", res)
	if len(res) < 2 || len(res) > 3 {
		return false, 0, nil, false, bad
	}
	flag, ok1 := res[0].(int64)
	n, ok2 := res[1].(int64)
	if !ok1 || !ok2 {
		return false, 0, nil, false, bad
	}
	if len(res) == 3 {
		s, ok := res[2].(string)
		if !ok {
			return false, 0, nil, false, bad
		}
		v, found = []byte(s), true
	}
	return flag == 1, n, v, found, nil
}

// Extend implements claim.Claimer.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check(ctx, "extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("redis: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("redis: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	ms := millis(ttl)
	ok, err := extendScript.Run(ctx, b.rdb, []string{b.lockKey(l.Key)}, stamp(l), ms).Int64()
	if err != nil {
		return claim.Lease{}, fmt.Errorf("redis: extend %q: %w", l.Key, err)
	}
	if ok != 1 {
		return claim.Lease{}, fmt.Errorf("redis: extend %q: %w", l.Key, claim.ErrLost)
	}
	l.TTL = time.Duration(ms) * time.Millisecond
	l.Deadline = start.Add(l.TTL)
	return l, nil
}

// Release implements claim.Claimer: compare, delete and publish in one
// script.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check(ctx, "release", l.Key); err != nil {
		return err
	}
	ok, err := releaseScript.Run(ctx, b.rdb, []string{b.lockKey(l.Key)}, stamp(l), b.channel(l.Key), b.publishCmd()).Int64()
	if err != nil {
		return fmt.Errorf("redis: release %q: %w", l.Key, err)
	}
	if ok != 1 {
		return fmt.Errorf("redis: release %q: %w", l.Key, claim.ErrLost)
	}
	return nil
}

// Commit implements claim.Claimer: compare and SET in one script.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check(ctx, "commit", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit", l.Key, value, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("redis: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	var ms int64
	if ttl > 0 {
		ms = millis(ttl)
	}
	ok, err := commitScript.Run(ctx, b.rdb, []string{b.lockKey(l.Key), b.valKey(l.Key)}, stamp(l), value, ms).Int64()
	if err != nil {
		return fmt.Errorf("redis: commit %q: %w", l.Key, err)
	}
	if ok != 1 {
		return fmt.Errorf("redis: commit %q: %w", l.Key, claim.ErrLost)
	}
	return nil
}

// CommitRelease implements claim.CommitReleaser: compare, SET, DEL and
// publish in one script.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check(ctx, "commit-release", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit-release", l.Key, value, ttl); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("redis: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	var ms int64
	if ttl > 0 {
		ms = millis(ttl)
	}
	ok, err := commitReleaseScript.Run(ctx, b.rdb, []string{b.lockKey(l.Key), b.valKey(l.Key)},
		stamp(l), value, ms, b.channel(l.Key), b.publishCmd()).Int64()
	if err != nil {
		return fmt.Errorf("redis: commit-release %q: %w", l.Key, err)
	}
	if ok != 1 {
		return fmt.Errorf("redis: commit-release %q: %w", l.Key, claim.ErrLost)
	}
	return nil
}

// Get implements claim.Store.
func (b *Backend) Get(ctx context.Context, key string) ([]byte, error) {
	if err := b.check(ctx, "get", key); err != nil {
		return nil, err
	}
	v, err := b.rdb.Get(ctx, b.valKey(key)).Bytes()
	if errors.Is(err, goredis.Nil) {
		return nil, fmt.Errorf("redis: get %q: %w", key, claim.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("redis: get %q: %w", key, err)
	}
	return v, nil
}

// Set implements claim.Store.
func (b *Backend) Set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if err := b.check(ctx, "set", key); err != nil {
		return err
	}
	if err := b.checkValue("set", key, value, ttl); err != nil {
		return err
	}
	var exp time.Duration
	if ttl > 0 {
		exp = time.Duration(millis(ttl)) * time.Millisecond
	}
	if err := b.rdb.Set(ctx, b.valKey(key), value, exp).Err(); err != nil {
		return fmt.Errorf("redis: set %q: %w", key, err)
	}
	return nil
}

// Delete implements claim.Store.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := b.check(ctx, "delete", key); err != nil {
		return err
	}
	if err := b.rdb.Del(ctx, b.valKey(key)).Err(); err != nil {
		return fmt.Errorf("redis: delete %q: %w", key, err)
	}
	return nil
}

// Subscribe implements claim.Notifier. It returns once the server has
// confirmed the subscription (one round trip for the first subscriber of
// key in this Backend; none for later ones while it is live).
func (b *Backend) Subscribe(ctx context.Context, key string) (claim.Subscription, error) {
	if err := b.check(ctx, "subscribe", key); err != nil {
		return nil, err
	}
	s, err := b.hub.Subscribe(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("redis: subscribe %q: %w", key, err)
	}
	return s, nil
}

// Notify implements claim.Notifier.
func (b *Backend) Notify(ctx context.Context, key string) error {
	if err := b.check(ctx, "notify", key); err != nil {
		return err
	}
	if err := b.publish(ctx, b.channel(key), "notify"); err != nil {
		return fmt.Errorf("redis: notify %q: %w", key, err)
	}
	return nil
}

func (b *Backend) publish(ctx context.Context, channel string, msg any) error {
	if b.cc != nil {
		return b.cc.SPublish(ctx, channel, msg).Err()
	}
	return b.rdb.Publish(ctx, channel, msg).Err()
}

// Subscriptions returns how many keys this Backend holds a server-side
// subscription for (one per key however many local subscribers).
func (b *Backend) Subscriptions() int { return b.hub.Len() }

// PubSubConns returns how many pub/sub connections the Backend has open
// (at most one, or one per master node on a cluster).
func (b *Backend) PubSubConns() int { return b.n.connections() }

type substrate struct{ b *Backend }

func (s substrate) Subscribe(ctx context.Context, key string) error {
	return s.b.n.join(ctx, s.b.channel(key), key, nil)
}

func (s substrate) Unsubscribe(key string) { s.b.n.leave(s.b.channel(key), nil) }

// Publish implements claim.Broadcaster: PUBLISH (SPUBLISH on a cluster) on
// the topic's channel under the prefix.
func (b *Backend) Publish(ctx context.Context, topic string, msg []byte) error {
	if err := b.check(ctx, "publish", topic); err != nil {
		return err
	}
	if err := b.publish(ctx, b.topicChannel(topic), msg); err != nil {
		return fmt.Errorf("redis: publish %q: %w", topic, err)
	}
	return nil
}

// SubscribeTopic implements claim.Broadcaster. It returns once the server
// has confirmed the subscription. After a reconnect, handle is called with
// reset true.
func (b *Backend) SubscribeTopic(ctx context.Context, topic string, handle func(msg []byte, reset bool)) (func(), error) {
	if err := b.check(ctx, "subscribe-topic", topic); err != nil {
		return nil, err
	}
	if handle == nil {
		return nil, fmt.Errorf("redis: subscribe-topic %q: nil handler", topic)
	}
	ts := newTopicSub(handle)
	name := b.topicChannel(topic)
	if err := b.n.join(ctx, name, "", ts); err != nil {
		ts.stop()
		return nil, fmt.Errorf("redis: subscribe-topic %q: %w", topic, err)
	}
	return func() {
		b.n.leave(name, ts)
		ts.stop()
	}, nil
}

// Close implements claim.Backend: it closes the pub/sub connections and
// every Subscription, and the client too if Options.CloseClient. Leases
// are not released. Idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.n.close()
	b.hub.Close()
	if b.closeRC {
		if err := b.rdb.Close(); err != nil {
			return fmt.Errorf("redis: close: %w", err)
		}
	}
	return nil
}
