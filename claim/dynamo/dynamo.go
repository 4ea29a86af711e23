package dynamo

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb"
	"github.com/aws/aws-sdk-go-v2/service/dynamodb/types"
	"github.com/aws/smithy-go"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
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
	// DefaultDialTimeout bounds each connection attempt (TCP and TLS
	// handshakes) of a client opened by URL without dial_timeout. It is
	// claim.DefaultOpTimeout: no longer than a call may take anyway.
	DefaultDialTimeout = claim.DefaultOpTimeout
	maxKeyLen          = 2048
	// farFuture (9999-12-31) is exp for an item holding a value without
	// expiry.
	farFuture = 253402300799
)

// Options configure New. nil means defaults; every zero field is the
// documented default.
type Options struct {
	// Table is the table's name (default "stampede").
	Table string
	// Prefix starts every item key (default "stampede"); every process
	// sharing keys must use the same. At most 1000 bytes.
	Prefix string
	// ClockSkew is the margin for the difference between clients' clocks
	// (default 100 ms): a lease is taken over only ClockSkew after its
	// recorded expiry, unless this process saw the write that recorded it
	// early enough to take it over sooner (see the package documentation,
	// "Semantics").
	ClockSkew time.Duration
	// Retention is how long an item is kept after its lease and value
	// expired before DynamoDB's TTL may reap it (default 7 days), and the
	// longest lease granted. Negative: never write the TTL attribute.
	Retention time.Duration
	// PollMin and PollMax bound the polling interval (defaults 2 ms and
	// 50 ms, see driver.PollOptions).
	PollMin, PollMax time.Duration
	// PollFixed, if true, polls on the backoff's schedule only, without
	// learning how long claims are held (driver.PollOptions.NoHoldEstimate).
	PollFixed bool
	// Client configures the Client New returns.
	Client *claim.Options
}

// backend is one DynamoDB client's driver. It is safe for concurrent use.
type backend struct {
	driver.ClaimFunc  // b.tryClaim: TryClaim and TryClaimRead
	driver.CommitFunc // b.commit: Commit and CommitRelease

	*driver.Poller // Subscribe and Unsubscribe: one poll loop per key (readState)

	grants  *driver.Poller                     // SubscribeGrants: one poll loop per key (readGrant)
	gmu     sync.Mutex                         // guards gsubs
	gsubs   map[string]*grantSub               // SubscribeGrants by key
	races   atomic.Int64                       // queue writes whose condition a concurrent write failed (tests)
	qmu     sync.Mutex                         // guards waiters
	waiters map[string]map[string]*localWaiter // by key and holder: this process's waiters (Enqueue)
	seen    driver.Sightings                   // the lease writes seen, for takeovers (sight)
	smu     sync.Mutex                         // guards last
	last    map[string]sighted                 // by key: the lease read last (sight), for the claims' conditions

	c         *dynamodb.Client
	table     string
	prefix    string
	enc       driver.KeyEncoder
	skew      time.Duration
	retention time.Duration // <= 0: no TTL attribute
	closeIdle func()        // for clients the URL opener made

	// create_table=true: the first call that needs the table (Ping, at
	// open unless lazy) creates it (ensureTable).
	create  bool
	created atomic.Bool
	creator chan struct{} // holds the one ensureTable running
}

var (
	_ driver.Driver         = (*backend)(nil)
	_ driver.ClaimReader    = (*backend)(nil)
	_ driver.CommitReleaser = (*backend)(nil)
	_ driver.Batcher        = (*backend)(nil)
	_ driver.Aser           = (*backend)(nil)
	_ driver.Queuer         = (*backend)(nil)
	_ driver.PollCounter    = (*backend)(nil)
)

// New returns a Client on the table opt.Table using client, which the
// caller configured (region, credentials, retries, endpoint) and keeps
// owning: neither Close nor a failed check touches it. New checks the
// table first (claim.Connect: one GetItem, within the operation timeout),
// unless opt.Client.Lazy: credentials DynamoDB refuses, a table that does
// not exist (New does not create it, see CreateTable) or has another key
// schema, or an endpoint that is not DynamoDB, fail with an error
// wrapping claim.ErrConfig; an endpoint that cannot be reached or does not
// answer with one wrapping claim.ErrUnavailable.
func New(client *dynamodb.Client, opt *Options) (*claim.Client, error) {
	var o Options
	if opt != nil {
		o = *opt
	}
	b, err := newBackend(client, o)
	if err != nil {
		return nil, err
	}
	return claim.Connect(context.Background(), b, o.Client)
}

func newBackend(client *dynamodb.Client, o Options) (*backend, error) {
	if client == nil {
		return nil, errors.New("dynamo: nil client")
	}
	o.Table = cmp.Or(o.Table, DefaultTable)
	o.Prefix = cmp.Or(o.Prefix, DefaultPrefix)
	if len(o.Prefix) > 1000 || !utf8.ValidString(o.Prefix) {
		return nil, fmt.Errorf("dynamo: prefix must be valid UTF-8 of at most 1000 bytes")
	}
	if o.ClockSkew < 0 {
		return nil, fmt.Errorf("dynamo: negative clock skew %s", o.ClockSkew)
	}
	o.ClockSkew = cmp.Or(o.ClockSkew, DefaultClockSkew)
	o.Retention = cmp.Or(o.Retention, DefaultRetention)
	b := &backend{
		c:         client,
		table:     o.Table,
		prefix:    o.Prefix,
		enc:       driver.KeyEncoder{MaxLen: maxKeyLen - len(o.Prefix) - 1, Safe: func(c byte) bool { return c >= ' ' && c != 0x7f }},
		skew:      o.ClockSkew,
		retention: o.Retention,
		creator:   make(chan struct{}, 1),
	}
	b.ClaimFunc, b.CommitFunc = b.tryClaim, b.commit
	// The loops' reads go together, MaxBatch keys a BatchGetItem: a
	// process waiting on hundreds of keys polls them in a few requests.
	b.Poller = driver.NewBatchPoller(func(ctx context.Context, key, _ string) (driver.PollState, error) { return b.readState(ctx, key) },
		b.readStates, MaxBatch, &driver.PollOptions{Min: o.PollMin, Max: o.PollMax, NoHoldEstimate: o.PollFixed})
	b.grants = driver.NewPoller(b.readGrant, &driver.PollOptions{Min: o.PollMin, Max: o.PollMax, NoHoldEstimate: o.PollFixed})
	b.gsubs = map[string]*grantSub{}
	b.waiters = map[string]map[string]*localWaiter{}
	return b, nil
}

// Features implements driver.Driver.
func (b *backend) Features() driver.Features {
	return driver.Features{
		Name:           Scheme,
		Notify:         driver.Poll,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    MaxValueLen,
		MaxBatch:       MaxBatch,
	}
}

// Close implements driver.Driver: it stops the poll loops, grant polls
// included (and closes idle connections of a client the URL opener made).
func (b *backend) Close() error {
	b.Poller.Close()
	b.grants.Close()
	if b.closeIdle != nil {
		b.closeIdle()
	}
	return nil
}

// As implements driver.Aser: a **dynamodb.Client is set to the client
// under the driver.
func (b *backend) As(i any) bool { return driver.SetAs(i, b.c) }

// itemKey is the partition key of key's item.
func (b *backend) itemKey(key string) map[string]types.AttributeValue {
	e := b.enc.Encode(key)
	if !utf8.ValidString(e) {
		e = driver.KeyEncoder{Safe: func(byte) bool { return false }}.Encode(key)
	}
	return map[string]types.AttributeValue{"k": str(b.prefix + ":" + e)}
}

func str(v string) types.AttributeValue { return &types.AttributeValueMemberS{Value: v} }
func num(v int64) types.AttributeValue {
	return &types.AttributeValueMemberN{Value: strconv.FormatInt(v, 10)}
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

// names maps the #name placeholders of expressions to attribute names.
func names(exprs ...string) map[string]string {
	m := map[string]string{}
	for _, n := range nameRE.FindAllString(strings.Join(exprs, " "), -1) {
		m[n] = n[1:]
	}
	return m
}

// update runs one UpdateItem on key's item. Attribute names are written
// #name in the expressions. A failed condition is returned as a
// *types.ConditionalCheckFailedException (see conditionFailed), an item
// over DynamoDB's size limit as an error wrapping ErrTooLarge, a
// configuration error as one wrapping ErrConfig (classify). Nothing is
// sent if ctx is done.
func (b *backend) update(ctx context.Context, key, expr, cond string, vals map[string]types.AttributeValue, ret types.ReturnValue) (*dynamodb.UpdateItemOutput, error) {
	return b.updateNamed(ctx, key, expr, cond, nil, vals, ret)
}

// updateNamed is update with more attribute name placeholders (extra,
// such as the queue's #W0 for a holder's entry) besides the #name ones.
func (b *backend) updateNamed(ctx context.Context, key, expr, cond string, extra map[string]string, vals map[string]types.AttributeValue, ret types.ReturnValue) (*dynamodb.UpdateItemOutput, error) {
	if err := b.ensureTable(ctx); err != nil {
		return nil, err
	}
	nm := names(expr, cond)
	maps.Copy(nm, extra)
	in := &dynamodb.UpdateItemInput{
		TableName:                 aws.String(b.table),
		Key:                       b.itemKey(key),
		UpdateExpression:          aws.String(expr),
		ExpressionAttributeNames:  nm,
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
	out, err := b.c.UpdateItem(ctx, in)
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "ValidationException" && strings.Contains(strings.ToLower(ae.ErrorMessage()), "item size") {
		err = fmt.Errorf("%w: %w", driver.ErrTooLarge, err)
	}
	return out, classify(b.table, err)
}

// getItem reads attrs of key's item, strongly consistent. A configuration
// error wraps ErrConfig (classify). Nothing is sent if ctx is done.
func (b *backend) getItem(ctx context.Context, key string, attrs ...string) (map[string]types.AttributeValue, error) {
	if err := b.ensureTable(ctx); err != nil {
		return nil, err
	}
	proj := "#" + strings.Join(attrs, ", #")
	out, err := b.c.GetItem(ctx, &dynamodb.GetItemInput{
		TableName:                aws.String(b.table),
		Key:                      b.itemKey(key),
		ConsistentRead:           aws.Bool(true),
		ProjectionExpression:     aws.String(proj),
		ExpressionAttributeNames: names(proj),
	})
	if err != nil {
		return nil, classify(b.table, err)
	}
	return out.Item, nil
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

// ms rounds a duration up to whole milliseconds.
func ms(d time.Duration) time.Duration {
	return (d + time.Millisecond - 1).Truncate(time.Millisecond)
}

// PollReads implements driver.PollCounter: the reads of the wake-up and
// grant polls.
func (b *backend) PollReads() uint64 { return b.Poller.Reads() + b.grants.Reads() }
