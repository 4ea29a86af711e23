package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// The queue scripts (fair acquisition, see "Fair acquisition" in the
// package doc) are built from the pieces below, each script taking only
// those it calls (a script defines its functions on every run). KEYS: 1
// the lock, 2 the fence counter, 3 the queue (a list of holders, first
// come first), 4 the entries (a hash: holder to "DEADLINE:TTL", DEADLINE
// in Unix ms of the server's clock, TTL in ms). A holder is in the list
// once, exactly when it is in the hash. ARGV: 1 the publish command, 2
// the key's grant channel, 3 the key's channel.
//
// clock returns the server's time in ms, read once (TIME: scripts
// replicate their effects, the only mode from Redis 7 and the default
// from 5). live returns h's TTL if its entry is live, else nil (a dead
// entry is deleted from the hash; the caller removes it from the list).
// grantFirst pops waiters until a live one and grants it the lock (which
// it overwrites) as TryClaim would: INCR of the fence counter, SET PX of
// the waiter's TTL; it publishes "TOKEN:TTL:HOLDER" on the grant channel
// and returns {token, holder, ttl}, or nil with nobody live queued.
const (
	queueLive = `
local now
local function clock()
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return now
end
local function live(h)
  local e = redis.call('HGET', KEYS[4], h)
  if not e then return nil end
  local i = string.find(e, ':', 1, true)
  if i and tonumber(string.sub(e, 1, i - 1)) > clock() then return string.sub(e, i + 1) end
  redis.call('HDEL', KEYS[4], h)
  return nil
end
`
	queueGrant = queueLive + `
local function grantFirst()
  while true do
    local h = redis.call('LPOP', KEYS[3])
    if not h then return nil end
    local ttl = live(h)
    if ttl then
      redis.call('HDEL', KEYS[4], h)
      local tok = redis.call('INCR', KEYS[2])
      local s = string.format('%d', tok)
      redis.call('SET', KEYS[1], s .. ':' .. h, 'PX', ttl)
      redis.call(ARGV[1], ARGV[2], s .. ':' .. ttl .. ':' .. h)
      return {tok, h, tonumber(ttl)}
    end
  end
end
`
	// queueHolderOf: holderOf splits a lock value "TOKEN:HOLDER" into
	// holder and token.
	queueHolderOf = `
local function holderOf(v)
  local i = string.find(v, ':', 1, true)
  if not i then return nil end
  return string.sub(v, i + 1), tonumber(string.sub(v, 1, i - 1))
end
`
	// queueHead: head drops dead entries from the front and returns the
	// first live waiter (still queued), or nil.
	queueHead = `
local function head()
  while true do
    local h = redis.call('LINDEX', KEYS[3], 0)
    if not h then return nil end
    if live(h) then return h end
    redis.call('LPOP', KEYS[3])
  end
end
`
)

var (
	// enqueueScript is Queuer.Enqueue's five steps (ARGV 4 holder, 5 TTL
	// in ms): {1, token, ttl} when holder holds the lease (its own,
	// granted meanwhile, or granted now), else {0, the lock's PTTL} with
	// holder queued. Step 1 is lazy: dead entries are dropped when they
	// reach the front (head, grantFirst), when their holder enqueues again
	// (to the tail: its place is lost) or with the queue's keys, which
	// expire with their latest entry; an entry behind a live one changes
	// nothing any step looks at.
	enqueueScript = goredis.NewScript(queueGrant + queueHolderOf + queueHead + `
local holder, ttl = ARGV[4], ARGV[5]
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, tok = holderOf(cur)
  if h == holder and tok then return {1, tok, redis.call('PTTL', KEYS[1])} end
else
  local first = head()
  if not first or first == holder then
    if first then
      redis.call('LPOP', KEYS[3])
      redis.call('HDEL', KEYS[4], holder)
    end
    local tok = redis.call('INCR', KEYS[2])
    redis.call('SET', KEYS[1], string.format('%d', tok) .. ':' .. holder, 'PX', ttl)
    return {1, tok, tonumber(ttl)}
  end
  grantFirst()
end
local e = redis.call('HGET', KEYS[4], holder)
if not e or tonumber(string.sub(e, 1, string.find(e, ':', 1, true) - 1)) <= clock() then
  if e then redis.call('LREM', KEYS[3], 1, holder) end
  redis.call('RPUSH', KEYS[3], holder)
end
redis.call('HSET', KEYS[4], holder, string.format('%d', clock() + tonumber(ttl)) .. ':' .. ttl)
local left = redis.call('PTTL', KEYS[4])
if left < tonumber(ttl) then
  redis.call('PEXPIRE', KEYS[3], ttl)
  redis.call('PEXPIRE', KEYS[4], ttl)
end
return {0, redis.call('PTTL', KEYS[1])}`)

	// dequeueScript is Queuer.Dequeue (ARGV 4 holder): it drops holder's
	// entry and, if holder holds the live lease, hands it on (or deletes
	// it and publishes 'release' on the key's channel with nobody live
	// queued).
	dequeueScript = goredis.NewScript(queueGrant + queueHolderOf + `
local holder = ARGV[4]
if redis.call('HDEL', KEYS[4], holder) == 1 then redis.call('LREM', KEYS[3], 1, holder) end
local cur = redis.call('GET', KEYS[1])
if cur and holderOf(cur) == holder and not grantFirst() then
  redis.call('DEL', KEYS[1])
  redis.call(ARGV[1], ARGV[3], 'release')
end
return {1}`)

	// handOffScript is Queuer.HandOff (ARGV 4 the lease's lock value):
	// {0} if the lease is not current; else it grants the lock to the
	// first live waiter, {1, token, holder, ttl}, or deletes it with
	// nobody live queued and publishes 'release' as Release does, {2}.
	handOffScript = goredis.NewScript(queueGrant + `
if redis.call('GET', KEYS[1]) ~= ARGV[4] then return {0} end
local g = grantFirst()
if g then return {1, g[1], g[2], g[3]} end
redis.call('DEL', KEYS[1])
redis.call(ARGV[1], ARGV[3], 'release')
return {2}`)
)

var _ driver.Queuer = (*backend)(nil)

func (b *backend) queueKey(key string) string     { return b.base(key) + ":queue" }
func (b *backend) entriesKey(key string) string   { return b.base(key) + ":waiters" }
func (b *backend) grantChannel(key string) string { return b.base(key) + ":grant" }

// runQueue runs one of the queue scripts on key's names, extra after the
// prelude's ARGV.
func (b *backend) runQueue(ctx context.Context, s *goredis.Script, key string, extra ...any) ([]any, error) {
	keys := []string{b.lockKey(key), b.fenceKey(key), b.queueKey(key), b.entriesKey(key)}
	args := append([]any{b.publishCmd(), b.grantChannel(key), b.channel(key)}, extra...)
	return call(b, ctx, func(ctx context.Context) ([]any, error) {
		return s.Run(ctx, b.rdb, keys, args...).Slice()
	})
}

// Enqueue implements driver.Queuer: one script round trip that prunes
// the queue, returns holder's lease if it holds one, grants the free key
// to holder if it is first (or nobody is queued) or else to the first
// live waiter (published on the grant channel), and otherwise queues
// holder or renews its entry.
func (b *backend) Enqueue(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	res, err := b.runQueue(ctx, enqueueScript, key, holder, millis(ttl))
	if err != nil {
		return driver.Lease{}, err
	}
	if len(res) == 3 && res[0] == int64(1) {
		tok, ok1 := res[1].(int64)
		ms, ok2 := res[2].(int64)
		if ok1 && ok2 {
			return driver.Lease{Key: key, Holder: holder, Token: uint64(tok), TTL: time.Duration(max(1, ms)) * time.Millisecond}, nil
		}
	}
	if len(res) == 2 && res[0] == int64(0) {
		if pttl, ok := res[1].(int64); ok {
			// As TryClaim: a lock without expiry is unknown (0), 0 ms
			// left is 1 ms.
			var left time.Duration
			if pttl >= 0 {
				left = time.Duration(max(1, pttl)) * time.Millisecond
			}
			return driver.Lease{}, &driver.HeldError{Remaining: left}
		}
	}
	return driver.Lease{}, fmt.Errorf("unexpected script reply %v", res)
}

// Dequeue implements driver.Queuer: one script round trip that drops
// holder's entry and, if holder holds the live lease, hands it over as
// HandOff does.
func (b *backend) Dequeue(ctx context.Context, key, holder string) error {
	_, err := b.runQueue(ctx, dequeueScript, key, holder)
	return err
}

// HandOff implements driver.Queuer: one script round trip that compares
// the lock, deletes it and grants the key to the first live waiter in
// the same script (the grant published on the key's grant channel), or
// publishes 'release' on the key's channel as Release does when nobody
// live is queued.
func (b *backend) HandOff(ctx context.Context, l driver.Lease) (driver.Lease, error) {
	res, err := b.runQueue(ctx, handOffScript, l.Key, lockValue(l))
	if err != nil {
		return driver.Lease{}, err
	}
	if len(res) == 1 {
		switch res[0] {
		case int64(0):
			return driver.Lease{}, driver.ErrLost
		case int64(2):
			return driver.Lease{}, nil
		}
	}
	if len(res) == 4 {
		tok, ok1 := res[1].(int64)
		h, ok2 := res[2].(string)
		ms, ok3 := res[3].(int64)
		if res[0] == int64(1) && ok1 && ok2 && ok3 {
			return driver.Lease{Key: l.Key, Holder: h, Token: uint64(tok), TTL: time.Duration(ms) * time.Millisecond}, nil
		}
	}
	return driver.Lease{}, fmt.Errorf("unexpected script reply %v", res)
}

// SubscribeGrants implements driver.Queuer: SUBSCRIBE (SSUBSCRIBE on a
// cluster) to the key's grant channel on the driver's pub/sub
// connection, confirmed as Subscribe's is. Every message is a grant,
// "TOKEN:TTL:HOLDER"; a gap of the connection (drop, silence, rebuild)
// and a message that does not parse call grant with a zero Lease.
func (b *backend) SubscribeGrants(ctx context.Context, key string, grant func(driver.Lease)) error {
	return classify(b.n.join(ctx, b.grantChannel(key), func(msg []byte, reset bool) {
		if reset {
			grant(driver.Lease{})
			return
		}
		l, ok := parseGrant(key, string(msg))
		if !ok {
			grant(driver.Lease{})
			return
		}
		grant(l)
	}))
}

// UnsubscribeGrants implements driver.Queuer. It does not wait for the
// pub/sub connection: grant is not called once it returns, and the
// UNSUBSCRIBE is written in the background (see notifier.leaveAsync), so
// that a granted AcquireFair returns at once.
func (b *backend) UnsubscribeGrants(key string) { b.n.leaveAsync(b.grantChannel(key)) }

// parseGrant decodes a grant message "TOKEN:TTL:HOLDER" (TTL in ms) of
// key.
func parseGrant(key, msg string) (driver.Lease, bool) {
	tok, rest, ok1 := strings.Cut(msg, ":")
	ttl, holder, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || holder == "" {
		return driver.Lease{}, false
	}
	t, err1 := strconv.ParseUint(tok, 10, 64)
	ms, err2 := strconv.ParseInt(ttl, 10, 64)
	if err1 != nil || err2 != nil || ms <= 0 {
		return driver.Lease{}, false
	}
	return driver.Lease{Key: key, Holder: holder, Token: t, TTL: time.Duration(ms) * time.Millisecond}, true
}
