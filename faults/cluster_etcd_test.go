//go:build unix

package faults

import (
	"context"
	"strings"
	"testing"

	"github.com/stampede-go/stampede/internal/testserver"
)

// etcd's cluster spec: a 3-member cluster (500 ms election timeout), each
// member in a network namespace of its own on a testserver.Net, so that a
// member can be partitioned away.
func init() {
	clusterSpecs = append(clusterSpecs, clusterSpec{
		name: "etcd",
		start: func(t *testing.T) cluster {
			c := testserver.RequireEtcdClusterNet(t, 3)
			if c == nil {
				return nil
			}
			return etcdCluster{c}
		},
	})
}

// etcdCluster adapts testserver.EtcdCluster to the harness's cluster.
type etcdCluster struct{ *testserver.EtcdCluster }

func (c etcdCluster) Members() int { return len(c.EtcdCluster.Members()) }

// URL lists every member, member first first, with a dial timeout of 2 s
// (each connection attempt, and the keep-alive ping's answer).
func (c etcdCluster) URL(first int) string {
	return "etcd://" + strings.Join(testserver.Rotated(c.Endpoints(), first), ",") + "?dial_timeout=2s"
}

func (c etcdCluster) Leader(ctx context.Context) (int, error) { return c.WaitLeader(ctx) }
