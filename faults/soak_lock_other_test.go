//go:build !unix

package faults

import "os"

// lockFile does nothing where flock is not available: run one soak pass
// at a time there.
func lockFile(*os.File) error { return nil }
