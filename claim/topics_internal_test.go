package claim

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stampede-go/stampede/claim/driver"
)

// getter is a driver whose Get returns what the test sets (the rest is
// never called by these tests).
type getter struct {
	driver.Driver
	val []byte
	err error
}

func (g *getter) Get(context.Context, string) ([]byte, error) { return g.val, g.err }

func TestTopicLogEncoding(t *testing.T) {
	l := &topicLog{epoch: 42, first: 7, msgs: [][]byte{[]byte("a"), {}, []byte("\x00\xff")}}
	got, err := decodeTopicLog(l.encode())
	if err != nil || got.epoch != 42 || got.first != 7 || len(got.msgs) != 3 || string(got.msgs[2]) != "\x00\xff" || got.last() != 9 {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{nil, {2, 0, 0, 0, 0, 0, 0, 0, 1}, append(l.encode()[:12], 0xff)} {
		if _, err := decodeTopicLog(bad); err == nil {
			t.Errorf("decoded %x", bad)
		}
	}
}

func FuzzDecodeTopicLog(f *testing.F) {
	f.Add((&topicLog{epoch: 1, first: 1, msgs: [][]byte{[]byte("m")}}).encode())
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 200})
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := decodeTopicLog(b)
		if err != nil {
			return
		}
		if again, err := decodeTopicLog(l.encode()); err != nil || len(again.msgs) != len(l.msgs) {
			t.Fatalf("re-encoding a decoded log: %v", err)
		}
	})
}

// The follower hands on what is new, once, in order, and a reset where
// messages may have been missed.
func TestTopicFollower(t *testing.T) {
	g := &getter{}
	c := &Client{d: g}
	var got []string
	f := &topicFollower{deliver: func(m []byte, reset bool) {
		if reset {
			got = append(got, "RESET")
		} else {
			got = append(got, string(m))
		}
	}}
	log := func(epoch, first uint64, msgs ...string) {
		l := &topicLog{epoch: epoch, first: first}
		for _, m := range msgs {
			l.msgs = append(l.msgs, []byte(m))
		}
		g.val, g.err = l.encode(), nil
	}
	step := func(initial bool, want string) {
		t.Helper()
		got = nil
		if err := f.read(context.Background(), c, "k", initial); err != nil {
			t.Fatal(err)
		}
		if s := strings.Join(got, ","); s != want {
			t.Errorf("delivered %q, want %q", s, want)
		}
	}
	log(1, 1, "a", "b")
	step(true, "") // where the log stands when the subscriber starts
	log(1, 1, "a", "b", "c", "d")
	step(false, "c,d")
	step(false, "") // nothing new, nothing again
	log(1, 4, "d", "e")
	step(false, "e")
	log(1, 9, "i", "j") // f..h were trimmed before this follower read them
	step(false, "RESET,i,j")
	log(2, 1, "x") // the log was recreated
	step(false, "RESET")
	g.val, g.err = nil, ErrNotFound // gone (evicted, deleted)
	step(false, "RESET")
	log(3, 1, "p", "q") // created anew after it was absent: all new
	step(false, "p,q")
	g.err = errors.New("down")
	if err := f.read(context.Background(), c, "k", false); err == nil {
		t.Error("a failed read was not reported")
	}
}

// Publish appends under the log key's lease, trims to topicLogMax, and
// refuses a message that cannot fit.
func TestTopicLogPublish(t *testing.T) {
	ctx := context.Background()
	c := NewClient(newMemoryLike(), nil)
	defer c.Close()
	lt := c.logTopics
	for i := 0; i < topicLogMax+5; i++ {
		if err := lt.Publish(ctx, "t", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	v, err := c.d.Get(ctx, topicKey("t"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := decodeTopicLog(v)
	if err != nil || len(l.msgs) != topicLogMax || l.first != 6 || string(l.msgs[len(l.msgs)-1]) != fmt.Sprint(topicLogMax+4) {
		t.Fatalf("log after %d publishes: first %d, %d messages, %v", topicLogMax+5, l.first, len(l.msgs), err)
	}
	if err := lt.Publish(ctx, "t", make([]byte, topicLogBytes)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a message larger than the log: %v, want ErrTooLarge", err)
	}
	if _, err := c.Get(ctx, topicKey("t")); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("the topic log's key is reachable by users: %v", err)
	}
}

// newMemoryLike is a tiny in-memory driver with no optional interfaces.
func newMemoryLike() driver.Driver {
	return &mapDriver{vals: map[string][]byte{}, locks: map[string]driver.Lease{}}
}

type mapDriver struct {
	vals  map[string][]byte
	locks map[string]driver.Lease
	fence uint64
}

func (m *mapDriver) TryClaim(_ context.Context, key, holder string, ttl time.Duration) (driver.Lease, error) {
	if _, ok := m.locks[key]; ok {
		return driver.Lease{}, &driver.HeldError{}
	}
	m.fence++
	l := driver.Lease{Key: key, Holder: holder, Token: m.fence, TTL: ttl}
	m.locks[key] = l
	return l, nil
}

func (m *mapDriver) Extend(_ context.Context, l driver.Lease, _ time.Duration) (driver.Lease, error) {
	return l, nil
}

func (m *mapDriver) current(l driver.Lease) bool {
	cur, ok := m.locks[l.Key]
	return ok && cur.Token == l.Token && cur.Holder == l.Holder
}

func (m *mapDriver) Release(_ context.Context, l driver.Lease) error {
	if !m.current(l) {
		return driver.ErrLost
	}
	delete(m.locks, l.Key)
	return nil
}

func (m *mapDriver) Commit(_ context.Context, l driver.Lease, v []byte, _ time.Duration) error {
	if !m.current(l) {
		return driver.ErrLost
	}
	m.vals[l.Key] = append([]byte(nil), v...)
	return nil
}

func (m *mapDriver) Revoke(_ context.Context, key string, v []byte, _ time.Duration) error {
	delete(m.locks, key)
	if v == nil {
		delete(m.vals, key)
	} else {
		m.vals[key] = append([]byte(nil), v...)
	}
	return nil
}

func (m *mapDriver) Subscribe(context.Context, string, func()) error { return nil }
func (m *mapDriver) Unsubscribe(string)                              {}
func (m *mapDriver) Notify(context.Context, string) error            { return nil }

func (m *mapDriver) Get(_ context.Context, key string) ([]byte, error) {
	v, ok := m.vals[key]
	if !ok {
		return nil, driver.ErrNotFound
	}
	return v, nil
}

func (m *mapDriver) Set(_ context.Context, key string, v []byte, _ time.Duration) error {
	m.vals[key] = v
	return nil
}

func (m *mapDriver) Delete(_ context.Context, key string) error {
	delete(m.vals, key)
	return nil
}

func (m *mapDriver) Features() driver.Features { return driver.Features{Name: "map"} }
func (m *mapDriver) Close() error              { return nil }
