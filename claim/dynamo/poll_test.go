package dynamo

import (
	"testing"

	"github.com/stampede-go/stampede/internal/backendtest"
	"github.com/stampede-go/stampede/internal/testserver"
)

// TestReadStatesMatchReadState: the batched poll (one BatchGetItem of
// many keys' poll attributes) reads what the single-key poll (GetItem)
// reads.
func TestReadStatesMatchReadState(t *testing.T) {
	c := backendtest.Open(t, table(t, testserver.Shared(t, testserver.Dynamo)))
	b := drv(c)
	backendtest.PollBatchMatches(t, c, b.readState, b.readStates)
}
