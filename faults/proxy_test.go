package faults

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"
)

// The in-process toxiproxy: one ApiServer (never listening: proxies are
// driven through its Go API), one Proxy per faulty link.
var (
	toxOnce   sync.Once
	toxServer *toxiproxy.ApiServer
)

func toxi() *toxiproxy.ApiServer {
	toxOnce.Do(func() {
		toxServer = toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
	})
	return toxServer
}

// proxy is a TCP proxy on a free loopback port in front of one server,
// with faults ("toxics") switched on and off by the test.
type proxy struct {
	t  testing.TB
	mu sync.Mutex
	p  *toxiproxy.Proxy
}

// newProxy starts a proxy to upstream (host:port); t.Cleanup stops it.
func newProxy(t testing.TB, upstream string) *proxy {
	t.Helper()
	p := toxiproxy.NewProxy(toxi(), "p-"+randHex(6), "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		t.Fatalf("toxiproxy: start: %v", err)
	}
	px := &proxy{t: t, p: p}
	t.Cleanup(px.close)
	return px
}

// proxied returns a URL of the backend reaching its server through a new
// proxy, and the proxy.
func proxied(t testing.TB, raw string) (string, *proxy) {
	p := newProxy(t, serverAddr(t, raw))
	return viaProxy(t, raw, p.addr()), p
}

func (px *proxy) addr() string {
	px.mu.Lock()
	defer px.mu.Unlock()
	return px.p.Listen
}

// add adds a toxic: typ is a toxiproxy toxic type ("latency", "timeout",
// "reset_peer", ...), stream "upstream" (client to server) or
// "downstream", toxicity the fraction of connections affected (0 means 1).
func (px *proxy) add(name, typ, stream string, toxicity float32, attrs map[string]any) {
	px.t.Helper()
	if toxicity == 0 {
		toxicity = 1
	}
	body, _ := json.Marshal(map[string]any{
		"name": name, "type": typ, "stream": stream, "toxicity": toxicity, "attributes": attrs,
	})
	if _, err := px.p.Toxics.AddToxicJson(strings.NewReader(string(body))); err != nil {
		px.t.Errorf("toxiproxy: add %s %s: %v", typ, stream, err)
	}
}

// blackhole drops every byte in both directions and keeps connections
// open (a partition that TCP does not notice); heal ends it.
func (px *proxy) blackhole() {
	px.add("bh-up", "timeout", "upstream", 1, map[string]any{"timeout": 0})
	px.add("bh-down", "timeout", "downstream", 1, map[string]any{"timeout": 0})
}

// heal removes every toxic. Removing a timeout toxic closes the
// connections it held (toxiproxy's behaviour: their data was dropped).
func (px *proxy) heal() {
	px.p.Toxics.ResetToxics(context.Background())
}

// down closes every connection and refuses new ones until up.
func (px *proxy) down() {
	px.mu.Lock()
	defer px.mu.Unlock()
	px.p.Stop()
}

// up listens again on the same address.
func (px *proxy) up() {
	px.t.Helper()
	px.mu.Lock()
	defer px.mu.Unlock()
	if err := px.p.Start(); err != nil {
		px.t.Errorf("toxiproxy: restart on %s: %v", px.p.Listen, err)
	}
}

func (px *proxy) close() {
	px.p.Toxics.ResetToxics(context.Background())
	px.mu.Lock()
	defer px.mu.Unlock()
	px.p.Stop()
}
