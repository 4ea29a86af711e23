package memcache

import (
	"testing"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestReadStatesMatchReadState: the batched poll (one multi-get of many
// keys' locks and counters) reads what the single-key poll reads.
func TestReadStatesMatchReadState(t *testing.T) {
	c := backendtest.Open(t, testserver.Shared(t, testserver.Memcache).URL())
	b := c.Driver().(*backend)
	backendtest.PollBatchMatches(t, c, b.readState, b.readStates)
}
