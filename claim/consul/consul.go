// Package consul is the claim backend for Consul's KV store: leases are
// compare-and-set writes of a small record (holder, expiry) on a lock key,
// fenced by Consul's raft index, committed with Consul transactions, and
// pushed to waiters by blocking queries.
//
// # URLs
//
//	consul://HOST:PORT/PREFIX?token=SECRET&dc=DC
//	consuls://HOST:PORT/PREFIX     HTTPS (same as tls=true)
//	consul://USER:PASS@HOST:PORT   HTTP basic auth (behind a proxy)
//
// PREFIX is the KV prefix every key lives under (default "stampede"; it may
// contain slashes). Parameters: token (ACL token; never printed), dc
// (datacenter), tls, cafile, certfile, keyfile, insecure (skip certificate
// verification), skew (Options.ClockSkew), maxvalue (Options.MaxValueLen),
// wait (Options.WaitTime), maxwatches (Options.MaxWatches), maxconns
// (connections for everything but blocking queries, default
// DefaultMaxConns). Anything the URL leaves out comes from Consul's
// usual CONSUL_HTTP_* environment variables, as with the consul CLI; an
// empty host means CONSUL_HTTP_ADDR or localhost:8500. Unknown parameters
// are errors.
//
// # Semantics
//
// Key K (mapped by claim.KeyEncoder: readable if short and plain, else
// hashed) owns PREFIX/c/K/lock (the lease record), PREFIX/c/K/notify and
// PREFIX/v/K (the stored value). Consul sessions are not used: their TTL
// is 10 s to 24 h, enforced loosely (up to 2 × TTL), and a session can be
// invalidated early (agent restart, failed node check), which would delete
// a lock its holder still believes it holds. Instead the lease is enforced
// by the adapter, so leases of any length from 1 ms work:
//
//   - TryClaim is one transaction that creates the lock key only if it is
//     absent (cas with index 0). If it exists and its recorded expiry plus
//     Options.ClockSkew has passed, a second transaction deletes it if it
//     is unchanged (delete-cas on the ModifyIndex read) and creates it
//     afresh: of two takers only one can win.
//   - The fencing token is the lock key's CreateIndex: the raft index of the
//     claiming write. Raft indexes are global and strictly increasing, so
//     every new lease has a larger token than any earlier one, and Extend
//     (a cas rewrite of the record) keeps it. The index is durable on a
//     server with persistent storage (not `consul agent -dev`, which keeps
//     everything in memory).
//   - Extend, Release and Commit verify ownership (CreateIndex == token and
//     the recorded holder) and write with a condition on the lock key's
//     ModifyIndex (cas, delete-cas, check-index + set in one transaction),
//     so a stale holder changes nothing (ErrLost). Lease.Handle carries the
//     ModifyIndex of the holder's last write, which makes the common case
//     one round trip; if it is out of date (a retried or concurrent Extend
//     of the same lease), one read re-establishes it.
//   - Commit is atomic: check-index on the lock key and set of the value
//     key in one Consul transaction. CommitRelease adds the delete of the
//     lock key to that transaction; TryClaimRead adds a get-or-empty of
//     the value key to the claiming transaction.
//
// Clocks: Consul KV has no server clock, so expiry is judged on client
// clocks. A holder records expiry = (its clock before sending) + TTL and
// stops at that Deadline; another client takes over only once its own
// clock passes expiry + ClockSkew (default 50 ms). Exclusion therefore
// holds as long as clients' clocks differ by less than ClockSkew (NTP keeps
// hosts within a few ms); a waiter may wait up to ClockSkew longer than the
// lease. Stored values expire by the reader's clock.
//
// Notify is pushed: one blocking query (KV list of PREFIX/c/K/) per key per
// Backend, fanned out locally, holding one HTTP connection while any
// subscriber of that key is open. Release and CommitRelease write the
// notify key in their transaction, as Notify does; the query wakes the
// key's subscribers when the notify key moved, or when the lease it saw
// last is gone or replaced (taken over after expiry), but not when a free
// key is claimed (waiters wait for the end of a claim, not its start) nor
// on Extend. After a failed blocking
// query it backs off, re-reads and wakes the key's subscribers. A Backend
// holds at most Options.MaxWatches (default 10) blocking queries at once,
// since Consul limits each client address to http_max_conns_per_client
// connections (200 by default, shared by every process on a host); keys
// watched beyond that are polled together by one loop, 32 keys per
// read-only transaction, every 2 to 50 ms. Stored
// values are deleted lazily when read after their expiry; Sweep removes
// leftovers (expired values, crashed holders' lock records).
//
// # Errors
//
// ErrHeld (a *claim.HeldError with the remaining lease time), ErrLost,
// ErrNotFound, ErrTooLarge (values over Options.MaxValueLen, checked before
// any I/O; also a 413 from Consul), ErrInvalidKey and ErrClosed, wrapped as
// "consul: OP KEY: ..." with Consul's own error underneath. The ACL token
// never appears in errors or String output.
package consul

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	capi "github.com/hashicorp/consul/api"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/internal/hub"
)

// Schemes this package registers.
const (
	Scheme    = "consul"
	SchemeTLS = "consuls"
)

// Defaults for Options.
const (
	DefaultPrefix    = "stampede"
	DefaultClockSkew = 50 * time.Millisecond
	// DefaultMaxValueLen keeps a Commit transaction (value base64-encoded
	// in JSON, plus two keys) under Consul's default 512 KiB limits
	// (txn_max_req_len, kv_max_value_size).
	DefaultMaxValueLen = 380 << 10
	// MaxPrefixLen bounds Options.Prefix.
	MaxPrefixLen = 256
)

func init() {
	claim.Register(Scheme, &URLOpener{})
	claim.Register(SchemeTLS, &URLOpener{TLS: true})
}

// Options configure a Backend. nil means defaults; every zero field is
// the documented default.
type Options struct {
	// Prefix is the KV prefix every key lives under (default "stampede").
	// Every process sharing keys must use the same prefix.
	Prefix string
	// ClockSkew is the largest clock difference assumed between clients:
	// a lease is taken over only ClockSkew after its recorded expiry.
	// Zero means DefaultClockSkew (50 ms); negative means none.
	ClockSkew time.Duration
	// MaxValueLen is the largest value Commit and Set accept (default
	// DefaultMaxValueLen). Raise it only with the server's
	// txn_max_req_len and kv_max_value_size.
	MaxValueLen int
	// WaitTime bounds each blocking query (0: the server's default, 5 min).
	WaitTime time.Duration
	// MaxWatches is the most blocking queries (one per watched key, each
	// holding an HTTP connection) this Backend keeps open at once; keys
	// subscribed beyond it are polled together, 32 keys per request,
	// every 2 to 50 ms. Consul refuses a client address more than
	// http_max_conns_per_client (default 200) connections, and every
	// process on a host shares its local agent's limit: keep MaxWatches ×
	// processes per host well under it. Zero means DefaultMaxWatches;
	// negative means no limit.
	MaxWatches int
}

// DefaultMaxWatches is Options.MaxWatches when unset, and
// DefaultMaxConns the connections a URL-opened Backend uses for everything
// else (its maxconns parameter): 8 processes on one host, every
// connection in use, stay under Consul's default http_max_conns_per_client
// of 200.
const (
	DefaultMaxWatches = 10
	DefaultMaxConns   = 14
)

// Backend is one client of Consul. It implements claim.Backend,
// claim.ClaimReader and claim.CommitReleaser.
type Backend struct {
	c       *capi.Client
	kv      *capi.KV
	watchKV *capi.KV // blocking queries: kv, or a client of its own (URL-opened)
	prefix  string
	skew    time.Duration
	maxVal  int
	wait    time.Duration
	enc     claim.KeyEncoder
	hub     *hub.Hub
	ctx     context.Context // cancelled by Close; parent of every watcher
	cancel  context.CancelFunc
	cleanup func() // closes idle connections of a client we made

	mu         sync.Mutex
	closed     bool
	watchers   map[string]*watcher
	maxWatches int              // < 0: no limit
	polled     map[string]state // keys watched by the poll loop, with the state last seen
	pollDone   chan struct{}    // closed when the poll loop ends; nil when none runs
}

var (
	_ claim.Backend        = (*Backend)(nil)
	_ claim.ClaimReader    = (*Backend)(nil)
	_ claim.CommitReleaser = (*Backend)(nil)
)

// New returns a Backend using the caller's client (its address, TLS, ACL
// token and datacenter). Close does not close the client's connections.
func New(client *capi.Client, opt *Options) (*Backend, error) {
	if client == nil {
		return nil, errors.New("consul: New: nil client")
	}
	var o Options
	if opt != nil {
		o = *opt
	}
	prefix, err := cleanPrefix(o.Prefix)
	if err != nil {
		return nil, err
	}
	switch {
	case o.ClockSkew == 0:
		o.ClockSkew = DefaultClockSkew
	case o.ClockSkew < 0:
		o.ClockSkew = 0
	}
	if o.MaxValueLen <= 0 {
		o.MaxValueLen = DefaultMaxValueLen
	}
	if o.MaxWatches == 0 {
		o.MaxWatches = DefaultMaxWatches
	}
	b := &Backend{
		c: client, kv: client.KV(), watchKV: client.KV(), prefix: prefix, skew: o.ClockSkew, maxVal: o.MaxValueLen, wait: o.WaitTime,
		enc:      claim.KeyEncoder{MaxLen: 256, Safe: safeKeyByte},
		watchers: map[string]*watcher{}, maxWatches: o.MaxWatches, polled: map[string]state{},
	}
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.hub = hub.New(substrate{b})
	return b, nil
}

// safeKeyByte keeps readable keys to one path segment that needs no
// escaping in JSON and survives HTTP path cleaning.
func safeKeyByte(c byte) bool {
	return claim.PrintableASCII(c) && !strings.ContainsRune(`/\"<>&%?#`, rune(c))
}

func cleanPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return DefaultPrefix, nil
	}
	if len(p) > MaxPrefixLen {
		return "", fmt.Errorf("consul: prefix longer than %d bytes", MaxPrefixLen)
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("consul: prefix %q: empty, . or .. segment", p)
		}
		for i := 0; i < len(seg); i++ {
			if !safeKeyByte(seg[i]) {
				return "", fmt.Errorf("consul: prefix %q: byte %q not allowed", p, seg[i])
			}
		}
	}
	return p, nil
}

// String describes the backend without secrets.
func (b *Backend) String() string { return fmt.Sprintf("consul backend (prefix %q)", b.prefix) }

// Features implements claim.Backend.
func (b *Backend) Features() claim.Features {
	return claim.Features{
		Name:           Scheme,
		Notify:         claim.Push,
		AtomicCommit:   true,
		DurableFence:   true,
		MinTTL:         time.Millisecond,
		TTLGranularity: time.Millisecond,
		MaxValueLen:    b.maxVal,
	}
}

// Key layout.
func (b *Backend) dir(key string) string       { return b.prefix + "/c/" + b.enc.Encode(key) + "/" }
func (b *Backend) lockKey(key string) string   { return b.dir(key) + "lock" }
func (b *Backend) notifyKey(key string) string { return b.dir(key) + "notify" }
func (b *Backend) valueKey(key string) string  { return b.prefix + "/v/" + b.enc.Encode(key) }

func (b *Backend) check(op, key string) error {
	if err := claim.CheckKey(key); err != nil {
		return fmt.Errorf("consul: %s: %w", op, err)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return fmt.Errorf("consul: %s %q: %w", op, key, claim.ErrClosed)
	}
	return nil
}

func qo(ctx context.Context) *capi.QueryOptions { return (&capi.QueryOptions{}).WithContext(ctx) }
func wo(ctx context.Context) *capi.WriteOptions { return (&capi.WriteOptions{}).WithContext(ctx) }

// apiErr maps a request-too-large reply (413) to ErrTooLarge, keeping the
// cause. The client reports a failed transaction by its body text only.
func apiErr(err error) error {
	var se capi.StatusError
	if errors.As(err, &se) && se.Code == http.StatusRequestEntityTooLarge ||
		strings.HasPrefix(err.Error(), "Failed request: ") && strings.Contains(err.Error(), " too large") {
		return fmt.Errorf("%w (%w)", claim.ErrTooLarge, err)
	}
	return err
}

// record is the lease record stored in the lock key.
type record struct {
	Holder string `json:"h"`
	Expiry int64  `json:"e"` // Unix ms by the holder's clock, rounded up
	TTL    int64  `json:"t"` // ms, informational
}

func newRecord(holder string, start time.Time, ttl time.Duration) []byte {
	exp := start.Add(ttl)
	ms := exp.UnixMilli()
	if time.UnixMilli(ms).Before(exp) {
		ms++
	}
	v, _ := json.Marshal(record{Holder: holder, Expiry: ms, TTL: ttl.Milliseconds()})
	return v
}

func parseRecord(v []byte) (record, bool) {
	var r record
	err := json.Unmarshal(v, &r)
	return r, err == nil && r.Holder != ""
}

func holderID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// roundTTL rounds ttl up to whole milliseconds.
func roundTTL(ttl time.Duration) time.Duration {
	if r := ttl % time.Millisecond; r != 0 {
		ttl += time.Millisecond - r
	}
	return ttl
}

// txn runs ops as one Consul transaction. The first nCond ops are
// conditions: if one of them fails, txn returns false and no error.
func (b *Backend) txn(ctx context.Context, ops capi.TxnOps, nCond int) (bool, *capi.TxnResponse, error) {
	ok, resp, _, err := b.c.Txn().Txn(ops, qo(ctx))
	if err != nil {
		return false, nil, apiErr(err)
	}
	if ok {
		return true, resp, nil
	}
	for _, e := range resp.Errors {
		if e.OpIndex >= nCond || strings.Contains(e.What, "Permission denied") {
			return false, nil, fmt.Errorf("transaction op %d: %s", e.OpIndex, e.What)
		}
	}
	return false, resp, nil
}

func kvOp(verb capi.KVOp, key string, index uint64, value []byte) *capi.TxnOp {
	return &capi.TxnOp{KV: &capi.KVTxnOp{Verb: verb, Key: key, Index: index, Value: value}}
}

// written returns the entry txn wrote for key.
func written(resp *capi.TxnResponse, key string) *capi.KVPair {
	var out *capi.KVPair
	for _, r := range resp.Results {
		if r != nil && r.KV != nil && r.KV.Key == key {
			out = r.KV
		}
	}
	return out
}

// handle encodes the lock key's ModifyIndex after the holder's last write,
// bound to the lease it belongs to.
func handle(modIdx, token uint64, holder string) string {
	return fmt.Sprintf("%d:%d:%s", modIdx, token, holder)
}

// handleIndex returns the index in l.Handle if the handle belongs to l,
// else 0 (forcing a read).
func handleIndex(l claim.Lease) uint64 {
	f := strings.SplitN(l.Handle, ":", 3)
	if len(f) != 3 || f[1] != strconv.FormatUint(l.Token, 10) || f[2] != l.Holder {
		return 0
	}
	n, _ := strconv.ParseUint(f[0], 10, 64)
	return n
}

// TryClaim implements claim.Claimer: a create-if-absent transaction (one
// round trip when the key is free); if the key exists, a read, and, when
// the record read has expired (plus ClockSkew), a takeover transaction
// conditioned on it. If the key was released between the failed create and
// the read, it tries once more. It never waits.
func (b *Backend) TryClaim(ctx context.Context, key string, ttl time.Duration) (claim.Lease, error) {
	l, _, _, err := b.tryClaim(ctx, "claim", key, ttl, false)
	return l, err
}

// TryClaimRead implements claim.ClaimReader: TryClaim whose claiming
// transaction also reads the value key (get-or-empty), so the value is
// read in the same raft write as the claim; one round trip when the key
// is free, like TryClaim.
func (b *Backend) TryClaimRead(ctx context.Context, key string, ttl time.Duration) (claim.Lease, []byte, bool, error) {
	return b.tryClaim(ctx, "claim-read", key, ttl, true)
}

func (b *Backend) tryClaim(ctx context.Context, op, key string, ttl time.Duration, read bool) (claim.Lease, []byte, bool, error) {
	if err := b.check(op, key); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if err := ctx.Err(); err != nil {
		return claim.Lease{}, nil, false, err
	}
	if ttl <= 0 {
		return claim.Lease{}, nil, false, fmt.Errorf("consul: %s %q: ttl must be positive, got %s", op, key, ttl)
	}
	ttl = roundTTL(ttl)
	lk, vk, holder := b.lockKey(key), b.valueKey(key), holderID()
	fail := func(err error) (claim.Lease, []byte, bool, error) {
		return claim.Lease{}, nil, false, fmt.Errorf("consul: %s %q: %w", op, key, err)
	}
	var (
		val   []byte
		found bool
		bad   error
	)
	grant := func(ops capi.TxnOps, nCond int) (claim.Lease, bool, error) {
		start := time.Now()
		ops = append(ops, kvOp(capi.KVCAS, lk, 0, newRecord(holder, start, ttl)))
		if read {
			ops = append(ops, kvOp(capi.KVGetOrEmpty, vk, 0, nil))
		}
		ok, resp, err := b.txn(ctx, ops, nCond+1)
		if err != nil || !ok {
			return claim.Lease{}, false, err
		}
		w := written(resp, lk)
		if w == nil {
			return claim.Lease{}, false, errors.New("transaction result lacks the lock key")
		}
		if read {
			// get-or-empty of an absent key answers the key with no
			// value and index 0; a stored value has at least a header.
			if p := written(resp, vk); p != nil && p.ModifyIndex != 0 {
				v, expired, wellFormed := decodeValue(p.Value, time.Now())
				if !wellFormed {
					bad = fmt.Errorf("malformed stored value (%d bytes)", len(p.Value))
				}
				val, found = v, !expired
			}
		}
		return claim.Lease{Key: key, Holder: holder, Token: w.CreateIndex, TTL: ttl,
			Deadline: start.Add(ttl), Handle: handle(w.ModifyIndex, w.CreateIndex, holder)}, true, nil
	}
	got := func(l claim.Lease) (claim.Lease, []byte, bool, error) {
		if bad != nil {
			// The caller gets no lease: give it back (best effort).
			_ = b.Release(ctx, l)
			return fail(bad)
		}
		if !found {
			return l, nil, false, nil
		}
		return l, val, true, nil
	}
	for attempt := 0; attempt < 2; attempt++ {
		l, ok, err := grant(nil, 0)
		if err != nil {
			return fail(err)
		}
		if ok {
			return got(l)
		}
		cur, _, err := b.kv.Get(lk, qo(ctx))
		if err != nil {
			return fail(err)
		}
		if cur == nil {
			continue // released meanwhile: try to create it again
		}
		if r, ok := parseRecord(cur.Value); ok {
			left := time.Until(time.UnixMilli(r.Expiry).Add(b.skew))
			if left > 0 {
				return fail(&claim.HeldError{Key: key, Remaining: left})
			}
		}
		// Expired (or not a lease record): take over if nobody else did.
		l, ok, err = grant(capi.TxnOps{kvOp(capi.KVDeleteCAS, lk, cur.ModifyIndex, nil)}, 1)
		if err != nil {
			return fail(err)
		}
		if ok {
			return got(l)
		}
		break // another client took it over first
	}
	return fail(&claim.HeldError{Key: key})
}

// owned reads the lock key and returns its ModifyIndex if l is still the
// current lease there, or ErrLost.
func (b *Backend) owned(ctx context.Context, l claim.Lease) (uint64, error) {
	cur, _, err := b.read(ctx, l)
	if err != nil {
		return 0, err
	}
	return cur.ModifyIndex, nil
}

// read returns the lock key and l's lease record as the server has them
// (the expiry as last extended), or ErrLost if l no longer holds the key.
func (b *Backend) read(ctx context.Context, l claim.Lease) (*capi.KVPair, record, error) {
	cur, _, err := b.kv.Get(b.lockKey(l.Key), qo(ctx))
	if err != nil {
		return nil, record{}, err
	}
	if cur == nil || cur.CreateIndex != l.Token {
		return nil, record{}, claim.ErrLost
	}
	r, ok := parseRecord(cur.Value)
	if !ok || r.Holder != l.Holder {
		return nil, record{}, claim.ErrLost
	}
	return cur, r, nil
}

// fenced runs the write built by op, conditioned on the lock key's
// ModifyIndex: first the one in l.Handle, then, if that is out of date, the
// one read back after checking that l is still current. It returns the
// transaction response. Only the lease's own holder rewrites its record,
// so a second round is needed only after a retried Extend, and more only
// when the holder extends one lease from several goroutines at once (each
// failed round is another of those calls succeeding).
func (b *Backend) fenced(ctx context.Context, l claim.Lease, op func(idx uint64) (capi.TxnOps, int)) (*capi.TxnResponse, error) {
	idx := handleIndex(l)
	for round := 0; round < 8; round++ {
		if idx != 0 {
			ops, nCond := op(idx)
			ok, resp, err := b.txn(ctx, ops, nCond)
			if err != nil || ok {
				return resp, err
			}
		}
		var err error
		if idx, err = b.owned(ctx, l); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("lock record keeps changing under its own holder (concurrent Extend of one lease?)")
}

// Extend implements claim.Claimer: a cas rewrite of the lease record with
// a new expiry. Retrying with the same (older) lease is harmless: it reads
// the record, sees it is still this lease's, and extends again.
func (b *Backend) Extend(ctx context.Context, l claim.Lease, ttl time.Duration) (claim.Lease, error) {
	if err := b.check("extend", l.Key); err != nil {
		return claim.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return claim.Lease{}, err
	}
	if ttl <= 0 {
		return claim.Lease{}, fmt.Errorf("consul: extend %q: ttl must be positive, got %s", l.Key, ttl)
	}
	ttl = roundTTL(ttl)
	if l.Expired(time.Now()) {
		return claim.Lease{}, fmt.Errorf("consul: extend %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	lk := b.lockKey(l.Key)
	var start time.Time
	resp, err := b.fenced(ctx, l, func(idx uint64) (capi.TxnOps, int) {
		start = time.Now()
		return capi.TxnOps{kvOp(capi.KVCAS, lk, idx, newRecord(l.Holder, start, ttl))}, 1
	})
	if err != nil {
		return claim.Lease{}, fmt.Errorf("consul: extend %q: %w", l.Key, err)
	}
	w := written(resp, lk)
	if w == nil {
		return claim.Lease{}, fmt.Errorf("consul: extend %q: transaction result lacks the lock key", l.Key)
	}
	l.TTL, l.Deadline, l.Handle = ttl, start.Add(ttl), handle(w.ModifyIndex, l.Token, l.Holder)
	return l, nil
}

// Release implements claim.Claimer: delete-cas of the lock key and a
// write of the notify key in one transaction, which wakes every
// subscriber's blocking query. It succeeds while the lease has not been
// taken over, even past its expiry.
func (b *Backend) Release(ctx context.Context, l claim.Lease) error {
	if err := b.check("release", l.Key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	lk := b.lockKey(l.Key)
	// Past this copy's Deadline, the lease may still be current if a
	// later Extend renewed it (the record holds its expiry as last
	// extended): read it to tell, in this rare case only.
	// The index just read is the one to release at: fenced needs no
	// second read.
	var expired bool
	if l.Expired(time.Now()) {
		cur, r, err := b.read(ctx, l)
		if err != nil {
			return fmt.Errorf("consul: release %q: %w", l.Key, err)
		}
		expired = !time.Now().Before(time.UnixMilli(r.Expiry))
		l.Handle = handle(cur.ModifyIndex, l.Token, l.Holder)
	}
	_, err := b.fenced(ctx, l, func(idx uint64) (capi.TxnOps, int) {
		// delete-cas of an absent key succeeds: check-index first.
		return capi.TxnOps{kvOp(capi.KVCheckIndex, lk, idx, nil), kvOp(capi.KVDelete, lk, 0, nil), b.notifyOp(l.Key)}, 1
	})
	if err != nil {
		return fmt.Errorf("consul: release %q: %w", l.Key, err)
	}
	if expired {
		return fmt.Errorf("consul: release %q: %w (it had expired; its lock, still unclaimed, was freed)", l.Key, claim.ErrLost)
	}
	return nil
}

// Commit implements claim.Claimer: check-index on the lock key and set of
// the value key in one transaction.
func (b *Backend) Commit(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check("commit", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit", l.Key, value, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("consul: commit %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	lk, vk := b.lockKey(l.Key), b.valueKey(l.Key)
	v := encodeValue(value, ttl, time.Now())
	_, err := b.fenced(ctx, l, func(idx uint64) (capi.TxnOps, int) {
		return capi.TxnOps{kvOp(capi.KVCheckIndex, lk, idx, nil), kvOp(capi.KVSet, vk, 0, v)}, 1
	})
	if err != nil {
		return fmt.Errorf("consul: commit %q: %w", l.Key, err)
	}
	return nil
}

// CommitRelease implements claim.CommitReleaser: check-index on the lock
// key, set of the value key, delete of the lock key and a write of the
// notify key in one transaction, which wakes every subscriber's blocking
// query.
func (b *Backend) CommitRelease(ctx context.Context, l claim.Lease, value []byte, ttl time.Duration) error {
	if err := b.check("commit-release", l.Key); err != nil {
		return err
	}
	if err := b.checkValue("commit-release", l.Key, value, ttl); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if l.Expired(time.Now()) {
		return fmt.Errorf("consul: commit-release %q: %w (local deadline passed)", l.Key, claim.ErrLost)
	}
	lk, vk := b.lockKey(l.Key), b.valueKey(l.Key)
	v := encodeValue(value, ttl, time.Now())
	_, err := b.fenced(ctx, l, func(idx uint64) (capi.TxnOps, int) {
		return capi.TxnOps{kvOp(capi.KVCheckIndex, lk, idx, nil), kvOp(capi.KVSet, vk, 0, v), kvOp(capi.KVDelete, lk, 0, nil), b.notifyOp(l.Key)}, 1
	})
	if err != nil {
		return fmt.Errorf("consul: commit-release %q: %w", l.Key, err)
	}
	return nil
}

// Close implements claim.Backend: it stops every blocking query, closes
// every subscription's channel and, for a backend opened by URL, drops
// idle connections. Leases are not released.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	ws := b.watchers
	b.watchers = nil
	pd := b.pollDone
	b.mu.Unlock()
	b.cancel()
	for _, w := range ws {
		<-w.done
	}
	if pd != nil {
		<-pd
	}
	b.hub.Close()
	if b.cleanup != nil {
		b.cleanup()
	}
	return nil
}
