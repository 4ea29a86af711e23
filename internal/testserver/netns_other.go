//go:build !linux

package testserver

import (
	"context"
	"errors"
	"fmt"
)

// Net is a private network for the members of a test cluster, so that a
// test can partition one of them. It is built on Linux network namespaces:
// on this system NewNet always fails.
type Net struct{}

// NewNet fails: network namespaces are Linux only.
func NewNet(ctx context.Context, n int) (*Net, error) {
	return nil, errors.New("testserver: network namespaces are Linux only")
}

// Members returns the number of members (none).
func (nw *Net) Members() int { return 0 }

// HostIP returns this process's address on the bridge (none).
func (nw *Net) HostIP() string { return "" }

// Member returns member i's address and command-line wrapper (none).
func (nw *Net) Member(i int) (ip string, wrap []string) { return "", nil }

// Cut fails: there is no network to cut.
func (nw *Net) Cut(i int) error { return fmt.Errorf("testserver: net: no member %d", i) }

// Heal fails: there is no network to heal.
func (nw *Net) Heal(i int) error { return fmt.Errorf("testserver: net: no member %d", i) }

// IsCut reports false.
func (nw *Net) IsCut(i int) bool { return false }

// Close does nothing.
func (nw *Net) Close() error { return nil }
