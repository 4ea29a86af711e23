package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"time"

	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	redsyncgoredis "github.com/go-redsync/redsync/v4/redis/goredis/v9"
	consulapi "github.com/hashicorp/consul/api"
	goredis "github.com/redis/go-redis/v9"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/stampede-go/stampede/claim"
)

// locker is one client ("one process") of a lock library.
type locker interface {
	// lock blocks until key is held (or fails for uncontended-only
	// lockers), and returns the function that releases it.
	lock(ctx context.Context, key string) (unlock func(context.Context) error, err error)
	close()
}

// contender is one lock library on one substrate.
type contender struct {
	substrate string
	name      string // as in the tables
	short     string // as on the charts
	ours      bool
	// blocking: lock waits for a held key (so handoff can be measured).
	blocking bool
	open     func(ctx context.Context) (locker, error)
}

const leaseTTL = 10 * time.Second

func randomKey(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// --- ours ------------------------------------------------------------------

// oursAcquire: Client.Acquire (subscribe, then claim; wait for the
// release's wake-up) + Release.
type oursAcquire struct{ c *claim.Client }

func (o oursAcquire) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	l, err := o.c.Acquire(ctx, key, leaseTTL)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return o.c.Release(ctx, l) }, nil
}

func (o oursAcquire) close() { o.c.Close() }

// oursFair: Client.AcquireFair (queue in the backend; the release hands
// the lease over in the waiter's wake-up) + Release.
type oursFair struct{ c *claim.Client }

func (o oursFair) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	l, err := o.c.AcquireFair(ctx, key, leaseTTL)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return o.c.Release(ctx, l) }, nil
}

func (o oursFair) close() { o.c.Close() }

// oursTry: one TryClaim + Release, what flight does on a miss (no
// subscription); uncontended only.
type oursTry struct{ c *claim.Client }

func (o oursTry) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	l, err := o.c.TryClaim(ctx, key, leaseTTL)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error { return o.c.Release(ctx, l) }, nil
}

func (o oursTry) close() { o.c.Close() }

func oursContenders(substrate, rawURL string) []contender {
	return []contender{
		// The label predates Client.Acquire: kept, so tables compare
		// with BENCHMARKS.md's.
		{substrate: substrate, name: "stampede claim.Acquire + Release", short: "stampede", ours: true, blocking: true,
			open: func(ctx context.Context) (locker, error) {
				c, err := claim.Open(ctx, rawURL)
				if err != nil {
					return nil, err
				}
				return oursAcquire{c}, nil
			}},
		{substrate: substrate, name: "stampede claim.AcquireFair + Release (hand-over)", short: "stampede fair", ours: true, blocking: true,
			open: func(ctx context.Context) (locker, error) {
				c, err := claim.Open(ctx, rawURL)
				if err != nil {
					return nil, err
				}
				return oursFair{c}, nil
			}},
		{substrate: substrate, name: "stampede TryClaim + Release (no subscription)", short: "stampede try", ours: true,
			open: func(ctx context.Context) (locker, error) {
				c, err := claim.Open(ctx, rawURL)
				if err != nil {
					return nil, err
				}
				return oursTry{c}, nil
			}},
	}
}

// --- Redis -------------------------------------------------------------------

func redisClient(rawURL string) (*goredis.Client, error) {
	opt, err := goredis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return goredis.NewClient(opt), nil
}

// rawSetNX: SET key token NX PX + DEL: the floor for one claim and one
// release on Redis (not a safe lock: DEL is not compare-and-delete).
type rawSetNX struct{ c *goredis.Client }

func (r rawSetNX) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	ok, err := r.c.SetNX(ctx, key, "token", leaseTTL).Result()
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errors.New("raw SET NX: held")
	}
	return func(ctx context.Context) error { return r.c.Del(ctx, key).Err() }, nil
}

func (r rawSetNX) close() { r.c.Close() }

// redsyncLocker: go-redsync/redsync with its defaults (32 tries, a random
// 50–250 ms delay between tries, 8 s expiry).
type redsyncLocker struct {
	c  *goredis.Client
	rs *redsync.Redsync
}

func (r redsyncLocker) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	m := r.rs.NewMutex(key)
	if err := m.LockContext(ctx); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		ok, err := m.UnlockContext(ctx)
		if err == nil && !ok {
			err = errors.New("redsync: unlock failed")
		}
		return err
	}, nil
}

func (r redsyncLocker) close() { r.c.Close() }

// redislockLocker: bsm/redislock, retrying every 10 ms (its default is
// not to retry at all; a linear 10 ms backoff is what its README shows).
type redislockLocker struct {
	c *goredis.Client
	l *redislock.Client
}

func (r redislockLocker) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	lk, err := r.l.Obtain(ctx, key, leaseTTL, &redislock.Options{RetryStrategy: redislock.LinearBackoff(10 * time.Millisecond)})
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

func (r redislockLocker) close() { r.c.Close() }

func redisContenders(rawURL string) []contender {
	cs := oursContenders("redis", rawURL)
	return append(cs,
		contender{substrate: "redis", name: "raw SET NX PX + DEL (go-redis, not a safe lock)", short: "raw SET NX",
			open: func(context.Context) (locker, error) {
				c, err := redisClient(rawURL)
				return rawSetNX{c}, err
			}},
		contender{substrate: "redis", name: "go-redsync/redsync v4 (defaults)", short: "redsync", blocking: true,
			open: func(context.Context) (locker, error) {
				c, err := redisClient(rawURL)
				if err != nil {
					return nil, err
				}
				return redsyncLocker{c, redsync.New(redsyncgoredis.NewPool(c))}, nil
			}},
		contender{substrate: "redis", name: "bsm/redislock (10 ms linear backoff)", short: "redislock", blocking: true,
			open: func(context.Context) (locker, error) {
				c, err := redisClient(rawURL)
				if err != nil {
					return nil, err
				}
				return redislockLocker{c, redislock.New(c)}, nil
			}},
	)
}

// --- etcd --------------------------------------------------------------------

// etcdMutex: clientv3/concurrency.Mutex on one session (lease) per client.
type etcdMutex struct {
	c *clientv3.Client
	s *concurrency.Session
}

func (e etcdMutex) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	m := concurrency.NewMutex(e.s, "/peers/"+key)
	if err := m.Lock(ctx); err != nil {
		return nil, err
	}
	return m.Unlock, nil
}

func (e etcdMutex) close() {
	e.s.Close()
	e.c.Close()
}

func etcdEndpoint(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "etcd" || u.Host == "" {
		return "", fmt.Errorf("want an etcd://HOST:PORT URL, got %q", claim.RedactURL(rawURL))
	}
	return "http://" + u.Host, nil
}

func etcdContenders(rawURL string) []contender {
	cs := oursContenders("etcd", rawURL)
	return append(cs, contender{substrate: "etcd", name: "etcd clientv3/concurrency.Mutex", short: "etcd Mutex", blocking: true,
		open: func(ctx context.Context) (locker, error) {
			ep, err := etcdEndpoint(rawURL)
			if err != nil {
				return nil, err
			}
			c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
			if err != nil {
				return nil, err
			}
			s, err := concurrency.NewSession(c, concurrency.WithTTL(int(leaseTTL/time.Second)))
			if err != nil {
				c.Close()
				return nil, err
			}
			return etcdMutex{c, s}, nil
		}})
}

// --- Consul ------------------------------------------------------------------

// consulLock: consul/api Lock with its defaults (a session per Lock,
// blocking queries on the key); SessionTTL 10s.
type consulLock struct{ c *consulapi.Client }

func (c consulLock) lock(ctx context.Context, key string) (func(context.Context) error, error) {
	l, err := c.c.LockOpts(&consulapi.LockOptions{Key: "peers/" + key, SessionTTL: "10s"})
	if err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	defer context.AfterFunc(ctx, func() { close(stop) })()
	lost, err := l.Lock(stop)
	if err != nil {
		return nil, err
	}
	if lost == nil {
		return nil, ctx.Err()
	}
	return func(context.Context) error { return l.Unlock() }, nil
}

func (c consulLock) close() {}

func consulContenders(rawURL string) []contender {
	cs := oursContenders("consul", rawURL)
	return append(cs, contender{substrate: "consul", name: "hashicorp/consul/api Lock", short: "consul api.Lock", blocking: true,
		open: func(context.Context) (locker, error) {
			u, err := url.Parse(rawURL)
			if err != nil || u.Scheme != "consul" || u.Host == "" {
				return nil, fmt.Errorf("want a consul://HOST:PORT URL, got %q", claim.RedactURL(rawURL))
			}
			c, err := consulapi.NewClient(&consulapi.Config{Address: u.Host})
			return consulLock{c}, err
		}})
}

// --- measurements ------------------------------------------------------------

// uncontendedRun measures lock + unlock on one client and one key, in
// slices, so the libraries can take turns (a burst of load on a shared
// machine then hits all of them alike).
type uncontendedRun struct {
	l    locker
	key  string
	lats []time.Duration
}

func newUncontended(ctx context.Context, c contender) (*uncontendedRun, error) {
	l, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	u := &uncontendedRun{l: l, key: randomKey("uncontended-")}
	for range 20 { // warm-up: connections, scripts loaded
		if _, err := u.once(ctx); err != nil {
			l.close()
			return nil, err
		}
	}
	return u, nil
}

func (u *uncontendedRun) once(ctx context.Context) (time.Duration, error) {
	t := time.Now()
	unlock, err := u.l.lock(ctx, u.key)
	if err != nil {
		return 0, fmt.Errorf("lock: %w", err)
	}
	if err := unlock(ctx); err != nil {
		return 0, fmt.Errorf("unlock: %w", err)
	}
	return time.Since(t), nil
}

// slice runs lock + unlock for d (at least 5 times).
func (u *uncontendedRun) slice(ctx context.Context, d time.Duration) error {
	start := time.Now()
	for i := 0; i < 5 || time.Since(start) < d; i++ {
		lat, err := u.once(ctx)
		if err != nil {
			return err
		}
		u.lats = append(u.lats, lat)
	}
	return nil
}

func (u *uncontendedRun) close() { u.l.close() }

// handoffRun: a holder in one client holds the key for the hold time and
// releases it while a waiter in another client blocks in lock; the
// latency is from the start of the release to the waiter holding the key
// (the protocol of conformance.Bench's Handoff). One handoff per call of
// once, so the libraries can take turns.
type handoffRun struct {
	holder, waiter locker
	key            string
	lats           []time.Duration
}

func newHandoff(ctx context.Context, c contender) (*handoffRun, error) {
	holder, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	waiter, err := c.open(ctx)
	if err != nil {
		holder.close()
		return nil, err
	}
	return &handoffRun{holder: holder, waiter: waiter, key: randomKey("handoff-")}, nil
}

func (h *handoffRun) once(ctx context.Context, hold time.Duration) error {
	unlock, err := h.holder.lock(ctx, h.key)
	if err != nil {
		return fmt.Errorf("holder lock: %w", err)
	}
	type result struct {
		at  time.Time
		err error
	}
	res := make(chan result, 1)
	go func() {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		wunlock, err := h.waiter.lock(wctx, h.key)
		at := time.Now()
		if err == nil {
			err = wunlock(ctx)
		}
		res <- result{at, err}
	}()
	time.Sleep(hold)
	start := time.Now()
	if err := unlock(ctx); err != nil {
		<-res
		return fmt.Errorf("holder unlock: %w", err)
	}
	r := <-res
	if r.err != nil {
		return fmt.Errorf("waiter: %w", r.err)
	}
	h.lats = append(h.lats, r.at.Sub(start))
	return nil
}

func (h *handoffRun) close() {
	h.holder.close()
	h.waiter.close()
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[int(p*float64(len(s)-1))]
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var t time.Duration
	for _, d := range ds {
		t += d
	}
	return t / time.Duration(len(ds))
}
