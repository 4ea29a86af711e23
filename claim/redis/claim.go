package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/stampede-go/stampede/claim/driver"
)

// setValue SETs the value key KEYS[2] to ARGV[2] (PX ARGV[3] when it is
// not '0'): the write of commitScript, commitReleaseScript and
// revokeScript, which therefore agree on ARGV[2] to ARGV[5].
const setValue = `
if ARGV[3] == '0' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
`

// compareAndSet starts commitScript and commitReleaseScript: compare the
// lock, then SET the value.
const compareAndSet = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
` + setValue

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
	commitScript = goredis.NewScript(compareAndSet + `return 1`)
	// commitReleaseScript's wake-up carries the value ('v' .. value) when
	// ARGV[6] is '1' (driver.ValueNotifier).
	commitReleaseScript = goredis.NewScript(compareAndSet + `redis.call('DEL', KEYS[1])
if ARGV[6] == '1' then
  redis.call(ARGV[5], ARGV[4], 'v' .. ARGV[2])
else
  redis.call(ARGV[5], ARGV[4], 'release')
end
return 1`)
	// revokeScript deletes the lock whoever holds it (never the fence
	// counter), then deletes the value (ARGV[1] 'del') or sets it, and
	// publishes, all in one script: no command runs in between, so
	// nothing can see the lock gone and the old value still there.
	revokeScript = goredis.NewScript(`
redis.call('DEL', KEYS[1])
if ARGV[1] == 'del' then
  redis.call('DEL', KEYS[2])
else` + setValue + `end
redis.call(ARGV[5], ARGV[4], 'revoke')
return 1`)
)

// lockValue is what the lock key holds for l: "TOKEN:HOLDER".
func lockValue(l driver.Lease) string { return strconv.FormatUint(l.Token, 10) + ":" + l.Holder }

// publishCmd is the publish command the scripts run.
func (b *backend) publishCmd() string {
	if b.cc != nil {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// TryClaim implements driver.Claimer: one script round trip.
func (b *backend) TryClaim(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	l, _, _, err := b.claim(ctx, key, holder, ttl, b.lockKey(key), b.fenceKey(key))
	return l, err
}

// TryClaimRead implements driver.ClaimReader: the claim script also GETs
// the value key, in the same script and round trip.
func (b *backend) TryClaimRead(ctx context.Context, key, holder string, ttl time.Duration) (driver.Lease, []byte, bool, error) {
	return b.claim(ctx, key, holder, ttl, b.lockKey(key), b.fenceKey(key), b.valKey(key))
}

// claim runs claimScript on keys: the lock, the fence counter and, to read
// it as well, the value key.
func (b *backend) claim(ctx context.Context, key, holder string, ttl time.Duration, keys ...string) (driver.Lease, []byte, bool, error) {
	ms := millis(ttl)
	res, acked, err := evalCall(b, ctx, claimScript, keys, slice, holder, ms)
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	l, v, found, err := claimed(key, holder, ms, res)
	if err == nil {
		if err = b.replicated("claim", acked); err != nil {
			b.abandon(ctx, l)
			return driver.Lease{}, nil, false, err
		}
	}
	return l, v, found, err
}

// claimed is the outcome of claimScript's reply res to holder's claim of
// key for ms milliseconds.
func claimed(key, holder string, ms int64, res []any) (driver.Lease, []byte, bool, error) {
	ok, n, v, found, err := claimReply(res)
	if err != nil {
		return driver.Lease{}, nil, false, err
	}
	if !ok {
		// A PTTL of -1 (a lock key without expiry, set by something else)
		// is unknown (0); 0 ms left is reported as 1 ms.
		var left time.Duration
		if n >= 0 {
			left = time.Duration(max(1, n)) * time.Millisecond
		}
		return driver.Lease{}, nil, false, &driver.HeldError{Remaining: left}
	}
	l := driver.Lease{Key: key, Holder: holder, Token: uint64(n), TTL: time.Duration(ms) * time.Millisecond}
	return l, v, found, nil
}

// claimReply decodes {1, token [, value]} or {0, pttl}.
func claimReply(res []any) (ok bool, n int64, v []byte, found bool, err error) {
	if len(res) == 2 || len(res) == 3 {
		flag, ok1 := res[0].(int64)
		n, ok2 := res[1].(int64)
		s, ok3 := "", true
		if found = len(res) == 3; found {
			s, ok3 = res[2].(string)
			v = []byte(s)
		}
		if ok1 && ok2 && ok3 {
			return flag == 1, n, v, found, nil
		}
	}
	return false, 0, nil, false, fmt.Errorf("unexpected script reply %v", res)
}

// compare runs one of the compare scripts (bounded by call): nil if it
// answers 1, ErrLost if 0. op names it for a *ReplicationError; "" runs
// it without WAIT (Release).
func (b *backend) compare(ctx context.Context, op string, s *goredis.Script, keys []string, args ...any) error {
	var ok, acked int64
	var err error
	if op == "" {
		ok, err = call(b, ctx, func(ctx context.Context) (int64, error) {
			return s.Run(ctx, b.rdb, keys, args...).Int64()
		})
	} else {
		ok, acked, err = evalCall(b, ctx, s, keys, int64Of, args...)
	}
	switch {
	case err != nil:
		return err
	case ok != 1:
		return driver.ErrLost
	case op != "":
		return b.replicated(op, acked)
	}
	return nil
}

// Extend implements driver.Claimer: compare and PEXPIRE in one script.
func (b *backend) Extend(ctx context.Context, l driver.Lease, ttl time.Duration) (driver.Lease, error) {
	ms := millis(ttl)
	if err := b.compare(ctx, "extend", extendScript, []string{b.lockKey(l.Key)}, lockValue(l), ms); err != nil {
		return driver.Lease{}, err
	}
	l.TTL = time.Duration(ms) * time.Millisecond
	return l, nil
}

// Release implements driver.Claimer: compare, delete and publish in one
// script. It does not WAIT in the WAIT mode: a release a failover loses
// brings the lease back until its TTL, which delays the next holder and
// overlaps no one (the next claim's WAIT covers the release too, as
// replication keeps each connection's order).
func (b *backend) Release(ctx context.Context, l driver.Lease) error {
	return b.compare(ctx, "", releaseScript, []string{b.lockKey(l.Key)}, lockValue(l), b.channel(l.Key), b.publishCmd())
}

// Commit implements driver.Claimer: compare and SET in one script.
func (b *backend) Commit(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration) error {
	keys := []string{b.lockKey(l.Key), b.valKey(l.Key)}
	return b.compare(ctx, "commit", commitScript, keys, lockValue(l), value, expiry(ttl))
}

// CommitRelease implements driver.CommitReleaser: compare, SET, DEL and
// publish in one script.
func (b *backend) CommitRelease(ctx context.Context, l driver.Lease, value []byte, ttl time.Duration) error {
	keys := []string{b.lockKey(l.Key), b.valKey(l.Key)}
	return b.compare(ctx, "commit-release", commitReleaseScript, keys, lockValue(l), value, expiry(ttl), b.channel(l.Key), b.publishCmd(), carried(value))
}

// maxWakeValue is the largest value a CommitRelease's wake-up carries
// (driver.ValueNotifier): a larger one is published to every subscriber
// of the key in every process, which costs more than their reads save.
const maxWakeValue = 16 << 10

// carried is the commit scripts' ARGV that says whether the wake-up
// carries value.
func carried(value []byte) string {
	if len(value) <= maxWakeValue {
		return "1"
	}
	return "0"
}

// Revoke implements driver.Claimer: one script (one round trip) that
// deletes the lock whoever holds it, deletes or sets the value and
// publishes, atomically. The fence counter stays, so the next claim's
// INCR is above the revoked token; a revoked holder's compare scripts
// then find the lock gone or another holder's, and answer ErrLost. The
// publish runs inside the script, after the writes: a woken subscriber
// that re-checks sees them.
func (b *backend) Revoke(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	mode := "set"
	if value == nil {
		mode = "del"
	}
	keys := []string{b.lockKey(key), b.valKey(key)}
	_, acked, err := evalCall(b, ctx, revokeScript, keys, int64Of, mode, value, expiry(ttl), b.channel(key), b.publishCmd())
	if err != nil {
		return err
	}
	return b.replicated("revoke", acked)
}
