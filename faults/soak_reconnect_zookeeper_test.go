//go:build !race

// Built without -race: go-zk v1.0.4 races on Conn.lastZxid when it
// re-sends watches after a reconnect (see claim/zookeeper/reconnect_test.go),
// and every fault of the soak makes its clients reconnect. make test runs
// it in its second pass (NORACE_PKGS), make soak alongside TestSoak.

package faults

import (
	"testing"

	"github.com/stampede-go/stampede/internal/testserver"
)

// TestReconnectSoakZooKeeper is TestSoak's ZooKeeper part (see
// soak_test.go), built without -race.
func TestReconnectSoakZooKeeper(t *testing.T) {
	t.Parallel()
	for _, b := range backends {
		if b.kind == testserver.ZooKeeper {
			soakAll(t, []backend{b}, "go test -count=1 -run '^TestReconnectSoakZooKeeper$' ./faults")
		}
	}
}
