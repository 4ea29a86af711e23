// Package dynamo is the claim backend on Amazon DynamoDB, through
// aws-sdk-go-v2: one item per key holds the lease, the fencing counter, a
// notify counter and the value, so every operation is one conditional
// UpdateItem, and waiters are woken by polling (DynamoDB cannot push
// without Streams).
//
// # URLs
//
//	dynamodb://TABLE[?PARAMS]
//
// Parameters (each maps to one Options field; unknown ones are errors):
//
//	region        AWS region (default: the SDK's, e.g. AWS_REGION)
//	endpoint      endpoint URL, e.g. http://127.0.0.1:4567 for dynalite or
//	              DynamoDB Local (default: AWS's)
//	create_table  true: create TABLE if missing (on-demand billing) and
//	              enable its TTL attribute; for development (default false)
//	prefix        key prefix (default "stampede")
//	clock_skew    Options.ClockSkew (default 100ms)
//	retention     Options.Retention (default 168h; 0s keeps the default,
//	              "off" disables the TTL attribute)
//	poll_min      first polling interval after a change (default 2ms)
//	poll_max      polling interval cap (default 50ms)
//
// Credentials come from the SDK's default chain (environment, shared
// files, IAM roles). For an endpoint on a loopback address with no
// AWS_ACCESS_KEY_ID or AWS_PROFILE in the environment, fixed dummy
// credentials are used instead: local emulators accept any signature.
// The URL opener's client makes one attempt per call (no SDK retries); a
// client given to New keeps its own retry policy.
//
// # Table
//
// The table's partition key is the string attribute "k" (no sort key).
// Items have these attributes: k (PREFIX:KEY), h (holder id, present while
// claimed), le (lease expiry, Unix ms, holder's clock), f (fencing
// counter), n (notify counter), v (value, binary), ve (value expiry, Unix
// ms; absent: none), vp (present when the value has no expiry) and exp
// (Unix seconds, the attribute DynamoDB's TTL reaps by). To create the
// table yourself:
//
//	aws dynamodb create-table --table-name TABLE --billing-mode PAY_PER_REQUEST \
//	    --attribute-definitions AttributeName=k,AttributeType=S \
//	    --key-schema AttributeName=k,KeyType=HASH
//	aws dynamodb update-time-to-live --table-name TABLE \
//	    --time-to-live-specification Enabled=true,AttributeName=exp
//
// Keys are mapped with claim.KeyEncoder: at most 2048 bytes including the
// prefix, valid UTF-8 without control characters, others hashed.
//
// # Semantics
//
// TryClaim is one conditional UpdateItem (condition: no holder, or the
// holder's lease expired) that sets the holder and its expiry and
// increments the fence, returning the new fence: atomic, at most one live
// lease. The item outlives releases, so the fence never goes backwards; a
// fence is created at the current Unix time in microseconds, so even an
// item reaped by TTL (or a recreated table) comes back with larger tokens
// (Features.DurableFence). Release, Extend and Commit are conditional on
// the holder id and token (Extend and Commit also on the lease being
// unexpired); Commit writes the value into the same item in the same
// write (Features.AtomicCommit). TryClaimRead is the claim's UpdateItem
// returning the whole new item (ALL_NEW), value included; CommitRelease is
// one UpdateItem conditional like Commit that writes the value, removes
// the holder and bumps the notify counter.
//
// DynamoDB has no server-side clock in conditions: expiry is judged on the
// clients' clocks. A lease's expiry is recorded by its holder (request
// time + TTL); another client takes it over only ClockSkew (default
// 100 ms) after that time by its own clock, and the holder's Deadline is
// taken before the request is sent. So two holders never overlap as long
// as the clients' clocks differ by less than ClockSkew. Keep clocks
// synchronised (NTP, Amazon Time Sync) and raise ClockSkew if they may not
// be. TTLs have millisecond granularity.
//
// The DynamoDB TTL attribute exp only reclaims space: an item is reaped
// no earlier than Retention (default 7 days) after its lease's expiry and
// its value's expiry (never while it holds a value stored without TTL; a
// value whose TTL exceeds Retention may be reaped Retention after a later
// lease ends). Leases longer than Retention are refused. dynalite does not
// implement UpdateTimeToLive; create_table tolerates that.
//
// Notification polls (Features.Notify is Poll): one loop per key per
// Backend however many waiters, one strongly consistent GetItem of the
// lease attributes every 2 ms at first, backing off to 50 ms, never
// sleeping past the holder's lease. A changed notify counter (Release,
// CommitRelease and Notify bump it in the same write), or the lease seen
// at the previous read running out or being taken over, wakes the key's
// waiters; a claim on a free key does not (the waiters are waiting for
// the end of a claim, not for its start). A missing notify counter starts
// at the current Unix time in microseconds, so it never comes back to a
// value a poller saw, even after the item was reaped. Each loop makes up to 20 reads a
// second while it waits, each billed by the whole item's size (value
// included: 4 KB per read unit); raise PollMax for large values.
//
// # Errors
//
// ErrHeld (*claim.HeldError; Remaining from the holder's recorded expiry
// where DynamoDB returns the item on a failed condition, 0 on dynalite),
// ErrLost, ErrNotFound, ErrTooLarge (values over MaxValueLen, 400 KB minus
// 4 KiB for the key and the other attributes, checked before any I/O),
// ErrInvalidKey and ErrClosed from package claim, wrapped as
// "dynamo: OP KEY: ..."; the SDK's errors are wrapped underneath.
package dynamo

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
	"github.com/stampede-go/stampede/internal/poll"
)

// Scheme is the URL scheme this package registers.
const Scheme = "dynamodb"

func init() { claim.Register(Scheme, &URLOpener{}) }

// Defaults and limits.
const (
	DefaultTable     = "stampede"
	DefaultPrefix    = "stampede"
	DefaultClockSkew = 100 * time.Millisecond
	DefaultRetention = 7 * 24 * time.Hour
	// MaxValueLen is DynamoDB's 400 KB item limit less 4 KiB for the key
	// (at most 2048 bytes) and the other attributes.
	MaxValueLen = 400*1024 - 4096
	maxKeyLen   = 2048
	// farFuture (9999-12-31) is exp for an item holding a value without
	// expiry.
	farFuture = 253402300799
)

// Options configure a Backend. nil means defaults; every zero field is the
// documented default.
type Options struct {
	// Table is the table's name (default "stampede").
	Table string
	// Prefix starts every item key (default "stampede"); every process
	// sharing keys must use the same. At most 1000 bytes.
	Prefix string
	// ClockSkew is the margin for the difference between clients' clocks
	// (default 100 ms): a lease is taken over only ClockSkew after its
	// recorded expiry.
	ClockSkew time.Duration
	// Retention is how long an item is kept after its lease and value
	// expired before DynamoDB's TTL may reap it (default 7 days), and the
	// longest lease granted. Negative: never write the TTL attribute.
	Retention time.Duration
	// PollMin and PollMax bound the polling interval (defaults 2 ms and
	// 50 ms, see internal/poll).
	PollMin, PollMax time.Duration
}

// Backend is one DynamoDB client's claim backend. It implements
// claim.Backend, claim.ClaimReader and claim.CommitReleaser; it is safe
// for concurrent use.
type Backend struct {
	c         *dynamodb.Client
	table     string
	prefix    string
	enc       claim.KeyEncoder
	skew      time.Duration
	retention time.Duration // <= 0: no TTL attribute
	hub       *hub.Hub
	poller    *poll.Poller
	closeIdle func() // for clients the URL opener made

	mu     sync.Mutex
	closed bool
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

// New returns a Backend on the table opt.Table using client, which the
// caller configured (region, credentials, retries, endpoint) and keeps
// owning. It does not check that the table exists; see CreateTable.
func New(client *dynamodb.Client, opt *Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("dynamo: nil client")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if len(o.Prefix) > 1000 || !utf8.ValidString(o.Prefix) {
		return nil, fmt.Errorf("dynamo: prefix must be valid UTF-8 of at most 1000 bytes")
	}
	if o.ClockSkew == 0 {
		o.ClockSkew = DefaultClockSkew
	}
	if o.ClockSkew < 0 {
		return nil, fmt.Errorf("dynamo: negative clock skew %s", o.ClockSkew)
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	b := &Backend{
		c:         client,
		table:     o.Table,
		prefix:    o.Prefix,
		enc:       claim.KeyEncoder{MaxLen: maxKeyLen - len(o.Prefix) - 1, Safe: func(c byte) bool { return c >= ' ' && c != 0x7f }},
		skew:      o.ClockSkew,
		retention: o.Retention,
	}
	b.poller = poll.New(b.readState, func(k string) { b.hub.Wake(k) }, &poll.Options{Min: o.PollMin, Max: o.PollMax})
	b.hub = hub.New(b.poller)
	return b, nil
}

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Poll,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    MaxValueLen,
	}
}

// Close implements claim.Backend: it stops the poll loops and closes every
// subscription (and idle connections of a client the URL opener made).
// Leases are not released. Idempotent.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	b.hub.Close()
	b.poller.Close()
	if b.closeIdle != nil {
		b.closeIdle()
	}
	return nil
}

func (b *Backend) check(ctx context.Context, op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("dynamo: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("dynamo: %s %q: %w", op, key, claim.ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dynamo: %s %q: %w", op, key, err)
	}
	return nil
}

// itemKey is the partition key of key's item.
func (b *Backend) itemKey(key string) map[string]types.AttributeValue {
	e := b.enc.Encode(key)
	if !utf8.ValidString(e) {
		e = claim.KeyEncoder{Safe: func(byte) bool { return false }}.Encode(key)
	}
	return map[string]types.AttributeValue{"k": &types.AttributeValueMemberS{Value: b.prefix + ":" + e}}
}

func str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
}
func unum(v uint64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatUint(v, 10)}
}

// attr returns a number attribute of an item.
func attr(item map[string]types.AttributeValue, name string) (int64, bool) {
	n, ok := item[name].(*types.AttributeValueMemberN)
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseInt(n.Value, 10, 64)
	return v, err == nil
}

var nameRE = regexp.MustCompile(`#[a-z]+`)

// update runs one UpdateItem on key's item. Attribute names are written
// #name in the expressions.
func (b *Backend) update(ctx context.Context, key, expr, cond string, vals map[string]types.AttributeValue, ret types.ReturnValue) (*dynamodb.UpdateItemOutput, error) {
	names := map[string]string{}
	for _, m := range nameRE.FindAllString(expr+" "+cond, -1) {
		names[m] = m[1:]
	}
	in := &dynamodb.UpdateItemInput{
		TableName:                 aws.String(b.table),
		Key:                       b.itemKey(key),
		UpdateExpression:          aws.String(expr),
		ExpressionAttributeNames:  names,
		ExpressionAttributeValues: vals,
		ReturnValues:              ret,
	}
	if ret == types.ReturnValueUpdatedNew || ret == types.ReturnValueAllNew {
		// TryClaim, TryClaimRead: a failed condition returns the holder's
		// expiry (and, alas, the whole item: there is no projection for
		// it).
		in.ReturnValuesOnConditionCheckFailure = types.ReturnValuesOnConditionCheckFailureAllOld
	}
	if cond != "" {
		in.ConditionExpression = aws.String(cond)
	}
	if len(vals) == 0 {
		in.ExpressionAttributeValues = nil
	}
	return b.c.UpdateItem(ctx, in)
}

// conditionFailed reports whether err is a failed condition, and returns
// the item as it was, if DynamoDB sent it.
func conditionFailed(err error) (map[string]types.AttributeValue, bool) {
	var ccf *types.ConditionalCheckFailedException
	if errors.As(err, &ccf) {
		return ccf.Item, true
	}
	return nil, false
}

func wrap(op, key string, err error) error {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "ValidationException" && strings.Contains(strings.ToLower(ae.ErrorMessage()), "item size") {
		err = fmt.Errorf("%w: %w", claim.ErrTooLarge, err)
	}
	return fmt.Errorf("dynamo: %s %q: %w", op, key, err)
}

func holderID() string {
	var r [12]byte
	_, _ = rand.Read(r[:])
	return hex.EncodeToString(r[:])
}

// ms rounds a duration up to whole milliseconds.
func ms(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

func (b *Backend) checkTTL(op, key string, ttl time.Duration) error {
	if ttl <= 0 {
		return fmt.Errorf("dynamo: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	if b.retention > 0 && ttl > b.retention {
		return fmt.Errorf("dynamo: %s %q: ttl %s longer than the retention %s", op, key, ttl, b.retention)
	}
	return nil
}

// leaseReap sets exp for a lease write: Retention after the lease's
// expiry, unless the item holds a value without expiry (vp).
func (b *Backend) leaseReap(expr string, vals map[string]types.AttributeValue, le int64) string {
	if b.retention <= 0 {
		return expr
	}
	vals[":reap"] = num(le/1000 + 1 + int64(b.retention/time.Second))
	return expr + ", #exp = if_not_exists(#vp, :reap)"
}

// TryClaim implements claim.Claimer: one conditional UpdateItem.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: the claim's UpdateItem
// returns the whole new item (ReturnValues ALL_NEW), value included, so
// the value is read in the same atomic write.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(ctx, op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if err := b.checkTTL(op, key, ttl); err != nil {
		return claim.Lease{}, nil, false, err
	}
	ttl = ms(ttl)
	holder := holderID()
	start := time.Now()
	le := start.Add(ttl).UnixMilli()
	vals := map[string]types.AttributeValue{
		":h": str(holder), ":le": num(le), ":one": num(1),
		":base": num(start.UnixMicro()), ":cut": num(start.Add(-b.skew).UnixMilli()),
	}
	expr := b.leaseReap("SET #h = :h, #le = :le, #f = if_not_exists(#f, :base) + :one", vals, le)
	ret := types.ReturnValueUpdatedNew
	if read {
		ret = types.ReturnValueAllNew
	}
	out, err := b.update(ctx, key, expr, "attribute_not_exists(#h) OR #le < :cut", vals, ret)
	if item, ok := conditionFailed(err); ok {
		he := &claim.HeldError{Key: key}
		if old, ok := attr(item, "le"); ok {
			he.Remaining = max(0, time.Until(b.expiry(old)))
		}
		return claim.Lease{}, nil, false, fmt.Errorf("dynamo: %s %q: %w", op, key, he)
	}
	if err != nil {
		return claim.Lease{}, nil, false, wrap(op, key, err)
	}
	f, ok := out.Attributes["f"].(*types.AttributeValueMemberN)
	if !ok {
		return claim.Lease{}, nil, false, fmt.Errorf("dynamo: %s %q: no fence in the reply", op, key)
	}
	token, err := strconv.ParseUint(f.Value, 10, 64)
	if err != nil {
		return claim.Lease{}, nil, false, fmt.Errorf("dynamo: %s %q: fence %q: %w", op, key, f.Value, err)
	}
	l := claim.Lease{Key: key, Holder: holder, Token: token, TTL: ttl, Deadline: start.Add(ttl)}
	if !read {
		return l, nil, false, nil
	}
	v, found := value(out.Attributes, time.Now())
	return l, v, found, nil
}

// value returns the value stored in item, unless absent or expired at now
// (by this client's clock).
func value(item map[string]types.AttributeValue, now time.Time) ([]byte, bool) {
	v, ok := item["v"].(*types.AttributeValueMemberB)
	if !ok {
		return nil, false
	}
	if ve, ok := attr(item, "ve"); ok && now.UnixMilli() >= ve {
		return nil, false
	}
	if v.Value == nil {
		return []byte{}, true
	}
	return v.Value, true
}

// expiry is when other clients consider a lease with recorded expiry le
// (Unix ms) expired: ClockSkew later, and strictly after (le < cut).
func (b *Backend) expiry(le int64) time.Time {
	return time.UnixMilli(le).Add(b.skew + time.Millisecond)
}

// current is the condition for the holder of l: same holder and token, and
// (with :now) unexpired by the holder's clock.
const current = "#h = :h AND #f = :tok AND #le > :now"

func leaseVals(l claim.Lease, now time.Time) map[string]types.AttributeValue {
	return map[string]types.AttributeValue{":h": str(l.Holder), ":tok": unum(l.Token), ":now": num(now.UnixMilli())}
}

// Extend implements claim.Claimer: one conditional UpdateItem of the
// lease's expiry.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check(ctx, "extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if err := b.checkTTL("extend", l.Key, ttl); err != nil {
		return claim.Lease{}, err
	}
	start := time.Now()
	if l.Expired(start) {
		return claim.Lease{}, fmt.Errorf("dynamo: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	ttl = ms(ttl)
	le := start.Add(ttl).UnixMilli()
	vals := leaseVals(l, start)
	vals[":le"] = num(le)
	expr := b.leaseReap("SET #le = :le", vals, le)
	_, err := b.update(ctx, l.Key, expr, current, vals, types.ReturnValueNone)
	if _, ok := conditionFailed(err); ok {
		return claim.Lease{}, fmt.Errorf("dynamo: extend %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return claim.Lease{}, wrap("extend", l.Key, err)
	}
	l.TTL = ttl
	l.Deadline = start.Add(ttl)
	return l, nil
}

// Release implements claim.Claimer: one conditional UpdateItem that
// removes the holder and bumps the notify counter (for the pollers); this
// Backend's own subscribers are woken at once.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check(ctx, "release", l.Key); err != nil {
		return err
	}
	vals := map[string]types.AttributeValue{":h": str(l.Holder), ":tok": unum(l.Token)}
	// UPDATED_OLD returns the lease's expiry as last extended (#le,
	// removed here): past it, the lease was no longer current.
	out, err := b.update(ctx, l.Key, "SET "+bumpNotify(vals)+" REMOVE #h, #le", "#h = :h AND #f = :tok", vals, types.ReturnValueUpdatedOld)
	if _, ok := conditionFailed(err); ok {
		return fmt.Errorf("dynamo: release %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return wrap("release", l.Key, err)
	}
	b.hub.Wake(l.Key) // this process's waiters need no poll
	if le, ok := attr(out.Attributes, "le"); ok && time.Now().UnixMilli() >= le {
		return fmt.Errorf("dynamo: release %q: %w (it had expired; its lock, still unclaimed, was freed)", l.Key, claim.ErrLost)
	}
	return nil
}

// bumpNotify returns the SET action that increments the notify counter n
// (for the pollers), adding its values to vals. A missing counter starts
// at the current Unix time in microseconds, like the fence, so the counter
// never comes back to a value it had, even after the item was reaped.
func bumpNotify(vals map[string]types.AttributeValue) string {
	vals[":one"] = num(1)
	vals[":nbase"] = num(time.Now().UnixMicro())
	return "#n = if_not_exists(#n, :nbase) + :one"
}

// Commit implements claim.Claimer: the value is written into the lease's
// item by one UpdateItem conditional on the lease (atomic).
func (b *Backend) Commit(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	if err := b.check(ctx, "commit", l.Key); err != nil {
		return err
	}
	now := time.Now()
	vals := leaseVals(l, now)
	expr, err := b.valueExpr("commit", l.Key, val, ttl, now, vals)
	if err != nil {
		return err
	}
	if l.Expired(now) {
		return fmt.Errorf("dynamo: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	_, err = b.update(ctx, l.Key, expr, current, vals, types.ReturnValueNone)
	if _, ok := conditionFailed(err); ok {
		return fmt.Errorf("dynamo: commit %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return wrap("commit", l.Key, err)
	}
	return nil
}

// CommitRelease implements claim.CommitReleaser: one UpdateItem
// conditional on the lease (as Commit) that writes the value, removes the
// holder and bumps the notify counter (as Release), so pollers see the
// release and the value together; this Backend's own subscribers are
// woken at once.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, val []byte, ttl time.Duration) error {
	if err := b.check(ctx, "commit-release", l.Key); err != nil {
		return err
	}
	now := time.Now()
	vals := leaseVals(l, now)
	expr, err := b.valueExpr("commit-release", l.Key, val, ttl, now, vals)
	if err != nil {
		return err
	}
	if l.Expired(now) {
		return fmt.Errorf("dynamo: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	// valueExpr is "SET ... REMOVE ...".
	set, rem, _ := strings.Cut(expr, " REMOVE ")
	expr = set + ", " + bumpNotify(vals) + " REMOVE " + rem + ", #h, #le"
	_, err = b.update(ctx, l.Key, expr, current, vals, types.ReturnValueNone)
	if _, ok := conditionFailed(err); ok {
		return fmt.Errorf("dynamo: commit-release %q: %w", l.Key, claim.ErrLost)
	}
	if err != nil {
		return wrap("commit-release", l.Key, err)
	}
	b.hub.Wake(l.Key) // this process's waiters need no poll
	return nil
}
