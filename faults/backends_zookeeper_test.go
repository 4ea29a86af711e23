//go:build !race

// ZooKeeper's row of the backends table, built without -race: go-zk
// v1.0.4 races on Conn.lastZxid when it re-sends watches after a
// reconnect (see claim/zookeeper/reconnect_test.go), and the network and
// server faults make its clients reconnect with watches set (a CI run
// failed on it in TestNotifyDrop/zookeeper). make test runs every fault
// test's zookeeper subtest in its no-race pass; the race-enabled pass has
// no zookeeper row.

package faults

import (
	"slices"
	"time"

	"github.com/stampede-go/stampede/internal/testserver"
)

func init() {
	// After memcache, where the table had it: reports keep their columns.
	i := slices.IndexFunc(backends, func(b backend) bool { return b.name == "memcache" }) + 1
	backends = slices.Insert(backends, i, backend{name: "zookeeper", kind: testserver.ZooKeeper, ttl: time.Second, durable: true})
}
