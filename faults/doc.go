// Package faults holds stampede's fault-injection tests: every backend, real
// servers on loopback, faults injected by the tests themselves. It has no
// API; everything is in its _test.go files. The tests use the portable
// *claim.Client (claim.Open, Client.Acquire, Client.KeepAlive, Subscribe,
// and Driver to wrap a driver with a deliberate bug), as users do.
//
// faults is a module of its own (faults/go.mod, with a replace directive
// pointing at the library in ..), so that toxiproxy, porcupine and zerolog
// stay out of the library's go.mod; it imports the library's internal
// packages (internal/testserver), which Go allows since the module paths
// share their prefix.
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
//   - connection-pool starvation (tiny pools, many waiters);
//   - the server killed mid-stampede (8 flight caches, a 1 s loader):
//     every caller answered within LoadTimeout + OpTimeout of the kill, at
//     most one load per key per process;
//   - an error herd: 8 processes, a loader failing after 200 ms: one
//     load fleet-wide, every caller has the error within two load times.
//
// Run them from this directory (make test and make chaos do):
//
//	cd faults && go test -race -count=1 -timeout 20m ./...                  # gating set, part of make test
//	cd faults && STAMPEDE_CHAOS=1 go test -race -count=1 -timeout 30m ./... # longer set, make chaos
//
// The gating set takes a few minutes; STAMPEDE_CHAOS=1 runs more
// repetitions and longer histories. STAMPEDE_TEST_REQUIRE=1 (set by make)
// fails instead of skipping when a server cannot be started.
// STAMPEDE_FAULTS_REPORT=FILE writes the measured figures as a Markdown
// table to FILE (make reliability).
package faults
