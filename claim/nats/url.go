package nats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/stampede-go/stampede/claim/driver"
)

// URLOpener opens nats:// URLs (see the package doc). Opening connects
// (and authenticates) within ctx and dial_timeout, unless lazy=true: then
// the first call connects. The driver's Close closes the connection.
type URLOpener struct{}

// Connection settings of a URL-opened client.
const (
	// DefaultPingInterval and DefaultMaxPingsOut (URL parameters
	// ping_interval and max_pings_out): the client pings the server every
	// DefaultPingInterval, and a connection with more than
	// DefaultMaxPingsOut pings unanswered is dropped and made again: a
	// server gone without a word (a partition, a paused process) is
	// noticed within (DefaultMaxPingsOut+1) × DefaultPingInterval, 15 s.
	DefaultPingInterval = 5 * time.Second
	DefaultMaxPingsOut  = 2
	// reconnectWait is the pause between reconnection attempts (for
	// ever: a Client finds its server again whenever it returns).
	reconnectWait = 250 * time.Millisecond
)

// OpenURL implements driver.URLOpener.
func (*URLOpener) OpenURL(ctx context.Context, u *url.URL) (driver.Driver, error) {
	servers, copts, o, err := parseURL(u)
	if err != nil {
		return nil, err
	}
	b, err := newBackend(o)
	if err != nil {
		return nil, err
	}
	b.ownsNC = true
	b.dial = func(ctx context.Context) (*natsgo.Conn, error) {
		opts := append([]natsgo.Option(nil), copts.opts...)
		timeout := copts.dialTimeout
		if dl, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(dl))
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		opts = append(opts, natsgo.Timeout(max(timeout, time.Millisecond)),
			natsgo.DisconnectErrHandler(func(*natsgo.Conn, error) { b.disconnected() }),
			natsgo.ReconnectHandler(func(*natsgo.Conn) { b.reconnected() }),
			natsgo.ErrorHandler(func(_ *natsgo.Conn, _ *natsgo.Subscription, err error) { b.asyncError(err) }))
		return natsgo.Connect(servers, opts...)
	}
	if driver.NewParams(u).Lazy() {
		return b, nil
	}
	if _, err := b.conn(ctx); err != nil {
		return nil, fmt.Errorf("nats: %w", err)
	}
	return b, nil
}

// connOpts are a URL's connection options.
type connOpts struct {
	opts        []natsgo.Option
	dialTimeout time.Duration
}

// parseURL turns a nats:// URL into the servers to dial, connection
// options and Options. Its errors never contain a password or token.
func parseURL(u *url.URL) (string, connOpts, Options, error) {
	var co connOpts
	if u.Scheme != Scheme {
		return "", co, Options{}, fmt.Errorf("nats: URL scheme %q: want %s", u.Scheme, Scheme)
	}
	if u.Opaque != "" || u.Fragment != "" {
		return "", co, Options{}, errors.New("nats: malformed URL: want nats://[USER:PASS@]host:port[,host:port]?bucket=NAME")
	}
	if u.Path != "" && u.Path != "/" {
		return "", co, Options{}, fmt.Errorf("nats: URL path %q: give the bucket as ?bucket=NAME", u.Path)
	}
	p := driver.NewParams(u)
	co.dialTimeout = p.Duration("dial_timeout", DefaultDialTimeout)
	if co.dialTimeout == 0 {
		co.dialTimeout = DefaultDialTimeout
	}
	pingInterval := p.Duration("ping_interval", DefaultPingInterval)
	maxPingsOut := p.Int("max_pings_out", DefaultMaxPingsOut)
	switch {
	case pingInterval < 10*time.Millisecond:
		return "", co, Options{}, fmt.Errorf("nats: ping_interval %s: want at least 10ms", pingInterval)
	case maxPingsOut < 1:
		return "", co, Options{}, fmt.Errorf("nats: max_pings_out %d: want at least 1", maxPingsOut)
	}
	o := Options{
		Bucket:      p.String("bucket", ""),
		Prefix:      p.String("prefix", ""),
		ClockSkew:   p.Duration("clock_skew", DefaultClockSkew),
		MaxValueLen: p.Int("maxvalue", 0),
		Replicas:    p.Int("replicas", 0),
		NoCreate:    !p.Bool("create", true),
	}
	if p.Has("clock_skew") && o.ClockSkew == 0 {
		o.ClockSkew = -1 // clock_skew=0: no margin
	}
	token := p.String("token", "")
	tlsOn := p.Bool("tls", false)
	tc, err := p.TLS(tlsOn, "")
	if err = cmp.Or(p.Err(), err); err != nil {
		return "", co, o, fmt.Errorf("nats: %w", err)
	}
	co.opts = []natsgo.Option{natsgo.Name("stampede"), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(reconnectWait),
		natsgo.PingInterval(pingInterval), natsgo.MaxPingsOutstanding(maxPingsOut), natsgo.NoCallbacksAfterClientClose(),
		// Nothing is kept for the next connection: a request the driver
		// has given up on (see begin) must not be sent after it.
		natsgo.ReconnectBufSize(-1)}
	if tc != nil {
		co.opts = append(co.opts, natsgo.Secure(tc))
	}
	if u.User != nil {
		user := u.User.Username()
		pass, hasPass := u.User.Password()
		switch {
		case hasPass && user == "":
			return "", co, o, errors.New("nats: password given without a user name")
		case hasPass:
			co.opts = append(co.opts, natsgo.UserInfo(user, pass))
		case user != "":
			// NATS's own URLs take a user name alone for a token; errors
			// print a URL's user name, so a token goes in token=.
			return "", co, o, errors.New("nats: a user without a password (give a token as ?token=, which is never printed)")
		}
	}
	if token != "" {
		co.opts = append(co.opts, natsgo.Token(token))
	}
	var servers []string
	hosts := cmp.Or(u.Host, "127.0.0.1")
	for h := range strings.SplitSeq(hosts, ",") {
		if h == "" {
			return "", co, o, fmt.Errorf("nats: empty host in %q", hosts)
		}
		if _, port, err := net.SplitHostPort(h); err != nil {
			h = net.JoinHostPort(strings.Trim(h, "[]"), "4222")
		} else if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
			return "", co, o, fmt.Errorf("nats: bad port in host %q", h)
		}
		scheme := "nats://"
		if tc != nil {
			scheme = "tls://"
		}
		servers = append(servers, scheme+h)
	}
	return strings.Join(servers, ","), co, o, nil
}
