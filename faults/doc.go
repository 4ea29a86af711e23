// Package faults holds stampede's fault-injection tests: every backend, real
// servers on loopback, faults injected by the tests themselves. It has no
// API; everything is in its _test.go files.
//
// The faults, each run against every backend it applies to (see
// docs/reliability.md for the table of figures):
//
//   - pause past the lease: a holder process (the test binary re-executed)
//     is stopped with SIGSTOP for twice its lease, another holder takes
//     over, the first is resumed and tries to commit and release;
//   - crash: a holder process is killed with SIGKILL and a waiter takes
//     over within the lease plus a small bound;
//   - network faults through an in-process toxiproxy (reset_peer,
//     blackhole, latency): notification connections dropped during a
//     release, a partition longer than the lease (self-fencing), calls that
//     fail within their timeout and recover;
//   - server restart (kill -9, restart);
//   - ambiguous release, renewal and commit (the reply lost after the
//     server applied the request, or the request delivered late);
//   - linearizability of claims, fenced commits and reads under random
//     faults, checked with porcupine against a fenced-register model;
//   - connection-pool starvation (tiny pools, many waiters).
//
// `go test -race ./faults` runs the gating set (a few minutes);
// STAMPEDE_CHAOS=1 runs the longer set (more repetitions, longer
// histories). STAMPEDE_FAULTS_REPORT=FILE writes the measured figures as a
// Markdown table to FILE.
package faults
