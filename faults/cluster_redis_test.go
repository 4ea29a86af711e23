//go:build unix

package faults

import (
	"context"
	"testing"

	"github.com/stampede-go/stampede/internal/testserver"
)

// Redis's cluster spec: a primary, one replica and three Sentinels
// (down-after 1 s), each process in a network namespace of its own on a
// testserver.Net so that a data node can be partitioned away; clients
// open it through the Sentinels (master=mymaster), with asynchronous
// replication (no WAIT mode): lossy, as a failover can lose the writes
// the replica had not received (claim/redis TestFailoverLoss measures
// how many, with and without the WAIT mode; docs/redis.md has the
// figures).
func init() {
	clusterSpecs = append(clusterSpecs, clusterSpec{
		name:  "redis-sentinel",
		lossy: true,
		start: func(t *testing.T) cluster {
			c := testserver.RequireRedisSentinelNet(t, 1, nil)
			if c == nil {
				return nil
			}
			return redisSentinelCluster{c}
		},
	})
}

// redisSentinelCluster adapts testserver.RedisSentinel to the harness's
// cluster: its members are the data nodes (the primary and the replica),
// its leader the primary the Sentinels name.
type redisSentinelCluster struct{ *testserver.RedisSentinel }

// Leader waits until the Sentinels agree on a primary that runs, is not
// cut off and answers as a master.
func (c redisSentinelCluster) Leader(ctx context.Context) (int, error) { return c.WaitPrimary(ctx) }
