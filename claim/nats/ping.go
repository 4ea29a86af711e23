package nats

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/stampede-go/stampede/claim/driver"
)

// conn returns the connection, dialling it first for a URL-opened driver
// that has not connected yet (lazy=true, or a first attempt that failed).
func (b *backend) conn(ctx context.Context) (*natsgo.Conn, error) {
	b.connMu.Lock()
	defer b.connMu.Unlock()
	if b.nc != nil {
		return b.nc, nil
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return nil, driver.ErrClosed
	}
	nc, err := b.dial(ctx)
	if errors.Is(err, io.EOF) || (err != nil && strings.Contains(err.Error(), "connection closed by remote after TLS handshake")) {
		// A NATS server speaks first (INFO), and closes a connection only
		// to refuse it: this one closed before its INFO (not a NATS
		// server) or right after a TLS handshake (it refused the client
		// certificate, or its absence).
		err = driver.Misconfigured(fmt.Errorf("the server closed the connection before it could be used (not a NATS server, or it refused the client's certificate): %w", err))
	}
	if err != nil {
		err = b.classify(err)
		if !errors.Is(err, driver.ErrConfig) && !errors.Is(err, context.Canceled) {
			err = fmt.Errorf("%w: connect: %w", driver.ErrUnavailable, err)
		}
		return nil, err
	}
	if err := b.setConn(nc); err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// bucket returns the bucket's KV and stream handles, finding (or
// creating) the bucket first if the driver has not yet.
func (b *backend) bucket(ctx context.Context) (jetstream.KeyValue, jetstream.Stream, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if _, err := b.conn(ctx); err != nil {
		return nil, nil, err
	}
	b.connMu.Lock()
	defer b.connMu.Unlock()
	if b.kv != nil {
		return b.kv, b.stream, nil
	}
	name := "KV_" + b.o.Bucket
	st, err := b.js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if b.o.NoCreate {
			return nil, nil, driver.Misconfigured(fmt.Errorf("bucket %q does not exist (create=false)", b.o.Bucket))
		}
		_, err = b.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: b.o.Bucket, History: 1,
			Storage: jetstream.FileStorage, Replicas: b.o.Replicas,
			Description: "stampede claims and values (github.com/stampede-go/stampede/claim/nats)"})
		if err != nil && !errors.Is(err, jetstream.ErrBucketExists) {
			return nil, nil, fmt.Errorf("creating bucket %q: %w", b.o.Bucket, b.classify(err))
		}
		st, err = b.js.Stream(ctx, name)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %q: %w", b.o.Bucket, b.classify(err))
	}
	cfg := st.CachedInfo().Config
	switch {
	case cfg.MaxMsgsPerSubject < 1 || len(cfg.Subjects) != 1 || cfg.Subjects[0] != "$KV."+b.o.Bucket+".>":
		return nil, nil, driver.Misconfigured(fmt.Errorf("stream %q is not a KV bucket", name))
	case cfg.Storage != jetstream.FileStorage:
		return nil, nil, driver.Misconfigured(fmt.Errorf("bucket %q keeps its data in memory: fencing tokens would not survive a restart (use file storage)", b.o.Bucket))
	case cfg.MaxAge != 0 || cfg.MaxMsgs > 0 || cfg.MaxBytes > 0:
		return nil, nil, driver.Misconfigured(fmt.Errorf("bucket %q has a TTL or size limit: the server could drop live leases (use a bucket without them)", b.o.Bucket))
	}
	if mp := b.nc.MaxPayload(); int64(b.o.MaxValueLen)+recordRoom > mp {
		return nil, nil, driver.Misconfigured(fmt.Errorf("maxvalue %d leaves less than %d bytes for the record under the server's max_payload %d", b.o.MaxValueLen, recordRoom, mp))
	}
	kv, err := b.js.KeyValue(ctx, b.o.Bucket)
	if err != nil {
		return nil, nil, fmt.Errorf("bucket %q: %w", b.o.Bucket, b.classify(err))
	}
	b.kv, b.stream = kv, st
	return kv, st, nil
}

// recordRoom is what a record needs besides its value (its fields, a
// short queue, the message's headers and subject): DefaultMaxValueLen
// leaves exactly this under NATS's default max_payload (1 MiB).
const recordRoom = 1024

// Ping implements driver.Pinger: a round trip on the connection, then the
// bucket's stream info (JetStream answers, the user may use its API, the
// bucket exists); the first Ping finds or creates the bucket.
func (b *backend) Ping(ctx context.Context) error {
	_, st, err := b.bucket(ctx)
	if err != nil {
		return err
	}
	rctx, end, err := b.begin(ctx)
	if err != nil {
		return err
	}
	_, err = st.Info(rctx)
	return b.classify(end(err))
}

// reconnected wakes every subscriber, makes every watch again and tells
// every topic subscriber of a gap: something may have been missed while
// the connection was down.
func (b *backend) reconnected() {
	subs := b.allSubs()
	b.mu.Lock()
	topics := make([]*topic, 0, len(b.topics))
	for _, t := range b.topics {
		topics = append(topics, t)
	}
	b.mu.Unlock()
	for _, s := range subs {
		// A new watch at once: the old one's consumer may be gone (a
		// server restarted), which nats.go would notice only by missed
		// heartbeats, seconds later. Its loop ends, wakes the subscriber
		// and watches again.
		s.mu.Lock()
		cancel := s.cancel
		s.mu.Unlock()
		s.fire(nil)
		if cancel != nil {
			cancel()
		}
	}
	for _, t := range topics {
		t.reset()
	}
}

// asyncError keeps the last permissions violation the server reported: a
// request it refused to pass on times out, and classify then tells a
// missing right from a slow server.
func (b *backend) asyncError(err error) {
	if errors.Is(err, natsgo.ErrPermissionViolation) {
		b.mu.Lock()
		b.permErr, b.permAt = err, time.Now()
		b.mu.Unlock()
	}
}

// permMemory is how long a permissions violation explains timeouts.
const permMemory = 30 * time.Second

// classify wraps the errors that waiting will not fix with ErrConfig, and
// a payload over the server's limit with ErrTooLarge; anything else is
// returned as it is (the client reports it as unavailability).
func (b *backend) classify(err error) error {
	if err == nil {
		return nil
	}
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, driver.ErrConfig), errors.Is(err, driver.ErrTooLarge):
		return err
	case errors.Is(err, natsgo.ErrMaxPayload), errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		return &driver.TooLargeError{What: "record", Limit: b.o.MaxValueLen}
	case errors.Is(err, natsgo.ErrAuthorization), errors.Is(err, natsgo.ErrAuthExpired),
		errors.Is(err, natsgo.ErrAuthRevoked), errors.Is(err, natsgo.ErrAccountAuthExpired),
		errors.Is(err, natsgo.ErrPermissionViolation),
		errors.Is(err, natsgo.ErrSecureConnRequired), errors.Is(err, natsgo.ErrSecureConnWanted),
		errors.Is(err, natsgo.ErrClientCertOrRootCAsRequired), errors.Is(err, natsgo.ErrNkeysNotSupported),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled), errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount),
		errors.Is(err, jetstream.ErrStreamNotFound), errors.Is(err, jetstream.ErrBucketNotFound),
		errors.Is(err, jetstream.ErrBadBucket), driver.TLSRefused(err):
		return driver.Misconfigured(err)
	case errors.As(err, &apiErr) && (apiErr.Code == 403 || apiErr.Code == 401 || apiErr.Code == 400):
		// Refused by JetStream: not allowed, or a request it cannot take.
		return driver.Misconfigured(err)
	case strings.Contains(err.Error(), "nats: expected '"), strings.Contains(err.Error(), "nats: invalid connection info"),
		strings.Contains(err.Error(), "nats: protocol exception"):
		// Not a NATS server at the address.
		return driver.Misconfigured(fmt.Errorf("not a NATS server: %w", err))
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, natsgo.ErrTimeout) || isTimeout(err) {
		b.mu.Lock()
		perm, at := b.permErr, b.permAt
		b.mu.Unlock()
		if perm != nil && time.Since(at) < permMemory {
			return driver.Misconfigured(fmt.Errorf("%w (the server reported: %w)", err, perm))
		}
	}
	return err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// errConnLost ends a request whose connection dropped after it was sent:
// NATS does not resend it, and its answer, if the server sent one, is
// lost with the connection. Its outcome is unknown (as a timeout's).
var errConnLost = errors.New("connection lost with the request in flight (outcome unknown)")

// begin starts one request: it fails at once while the connection is
// down (reconnecting: nats.go would hold the request in its reconnect
// buffer until the context ends, so that a dead server costs every call
// its whole timeout), and otherwise returns ctx, also ended when a
// URL-opened connection drops with the request in flight (a request
// written to a connection that then drops is never answered), and the
// function that ends the request and turns that into errConnLost.
func (b *backend) begin(ctx context.Context) (context.Context, func(error) error, error) {
	if err := b.down(); err != nil {
		return nil, nil, err
	}
	b.liveMu.Lock()
	live := b.live
	b.liveMu.Unlock()
	rctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(live, func() { cancel(context.Cause(live)) })
	end := func(err error) error {
		stop()
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(rctx), errConnLost) {
			err = errConnLost
		}
		cancel(nil)
		return err
	}
	return rctx, end, nil
}

// down returns an error while the connection is down (reconnecting).
func (b *backend) down() error {
	b.connMu.Lock()
	nc := b.nc
	b.connMu.Unlock()
	if nc != nil {
		if st := nc.Status(); st == natsgo.RECONNECTING || st == natsgo.DISCONNECTED {
			return fmt.Errorf("not connected (%s)", strings.ToLower(st.String()))
		}
	}
	return nil
}

// disconnected ends every request in flight on the connection that
// dropped (begin) and wakes every subscriber: a waiter re-checks at once,
// and learns that the server is gone (its call fails while the
// connection is down) instead of waiting for a wake-up that cannot come.
func (b *backend) disconnected() {
	b.liveMu.Lock()
	cancel := b.liveCancel
	b.live, b.liveCancel = context.WithCancelCause(context.Background())
	b.liveMu.Unlock()
	cancel(errConnLost)
	for _, s := range b.allSubs() {
		s.fire(nil)
	}
}

// allSubs returns every wake-up and grant subscription.
func (b *backend) allSubs() []*sub {
	b.mu.Lock()
	defer b.mu.Unlock()
	subs := make([]*sub, 0, len(b.subs)+len(b.grants))
	for _, s := range b.subs {
		subs = append(subs, s)
	}
	for _, s := range b.grants {
		subs = append(subs, s)
	}
	return subs
}
