package conformance

import (
	"bytes"
	"fmt"
	"sync"
	"time"

	"github.com/stampede-go/stampede/claim"
	"github.com/stampede-go/stampede/claim/driver"
)

func init() {
	register("Broadcast", checkBroadcast)
}

// topicRecorder collects what one SubscribeTopic handler received.
type topicRecorder struct {
	mu     sync.Mutex
	msgs   [][]byte
	resets int
	more   chan struct{}
}

func newTopicRecorder() *topicRecorder { return &topicRecorder{more: make(chan struct{}, 1)} }

func (r *topicRecorder) handle(msg []byte, reset bool) {
	r.mu.Lock()
	if reset {
		r.resets++
	} else {
		r.msgs = append(r.msgs, bytes.Clone(msg))
	}
	r.mu.Unlock()
	select {
	case r.more <- struct{}{}:
	default:
	}
}

// await waits until n messages arrived, bounded; it returns them.
func (r *topicRecorder) await(t *T, n int) ([][]byte, int) {
	timer := time.NewTimer(wakeBound)
	defer timer.Stop()
	for {
		r.mu.Lock()
		got, resets := append([][]byte(nil), r.msgs...), r.resets
		r.mu.Unlock()
		if len(got) >= n {
			return got, resets
		}
		select {
		case <-r.more:
		case <-timer.C:
			return got, resets
		case <-t.Context().Done():
			return got, resets
		}
	}
}

// checkBroadcast: a message published on a topic reaches every handler of
// the topic in every process, each once, in order, binary safe; a stopped
// handler gets nothing more. Features.Broadcast says whether the driver
// has a native bus (driver.Broadcaster); without one the Client carries
// topics itself, and the same holds.
func checkBroadcast(t *T) {
	ctx := t.Context()
	pub, a, b := t.Client(), t.Client(), t.Client()
	if _, native := pub.Driver().(driver.Broadcaster); native != t.feat.Broadcast {
		t.Errorf("Features.Broadcast = %v, but the driver implements driver.Broadcaster: %v", t.feat.Broadcast, native)
	}
	topic := t.Key("topic")
	ra, ra2, rb := newTopicRecorder(), newTopicRecorder(), newTopicRecorder()
	var stops []func()
	for _, s := range []struct {
		c *claim.Client
		r *topicRecorder
	}{{a, ra}, {a, ra2}, {b, rb}} {
		stop, err := s.c.SubscribeTopic(ctx, topic, s.r.handle)
		if err != nil {
			t.Fatalf("SubscribeTopic: %v", err)
		}
		stops = append(stops, stop)
		defer stop()
	}
	var want [][]byte
	for i := 0; i < 5; i++ {
		m := []byte(fmt.Sprintf("m%d\x00\xff ünï", i))
		if err := pub.Publish(ctx, topic, m); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
		want = append(want, m)
	}
	for name, r := range map[string]*topicRecorder{"first handler of a client": ra, "second handler of that client": ra2, "handler of another client": rb} {
		got, resets := r.await(t, len(want))
		if resets > 0 {
			t.Errorf("%s: %d resets on a quiet topic", name, resets)
		}
		if len(got) != len(want) {
			t.Errorf("%s: received %d of %d messages", name, len(got), len(want))
			continue
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Errorf("%s: message %d = %q, want %q (in order, intact)", name, i, got[i], want[i])
			}
		}
	}
	// Another topic is another stream.
	if err := pub.Publish(ctx, t.Key("other-topic"), []byte("elsewhere")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	// A stopped handler gets nothing more; the others go on.
	stops[0]()
	if err := pub.Publish(ctx, topic, []byte("after stop")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if got, _ := rb.await(t, len(want)+1); len(got) != len(want)+1 || string(got[len(want)]) != "after stop" {
		t.Errorf("handler of another client after one handler stopped: %d messages, want %d ending with %q", len(got), len(want)+1, "after stop")
	}
	if got, _ := ra2.await(t, len(want)+1); len(got) != len(want)+1 {
		t.Errorf("a handler of a client whose other handler stopped: %d messages, want %d", len(got), len(want)+1)
	}
	ra.mu.Lock()
	n := len(ra.msgs)
	ra.mu.Unlock()
	if n != len(want) {
		t.Errorf("a stopped handler received %d messages, want %d (nothing after stop)", n, len(want))
	}
}
