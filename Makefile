# stampede — make test is the README's test command (and what CI runs).
SHELL := /bin/bash
GO ?= go
# Every package of every module of the workspace (go.work: the library,
# one module per backend driver, the command, the fault and benchmark
# modules). ./... would stop at the first nested module.
PKGS ?= github.com/stampede-go/stampede/...
# Every backend test must find its server: a missing one fails, never skips.
export STAMPEDE_TEST_REQUIRE ?= 1
# Packages whose TestReconnect* tests are built without -race (a data race
# inside a dependency, not ours: see claim/zookeeper/reconnect_test.go);
# make test runs them in a second pass, and the ZooKeeper ensemble's fault
# tests (faults/cluster_zookeeper_test.go, built without -race) in a third.
NORACE_PKGS ?= github.com/stampede-go/stampede/claim/zookeeper
# The fault tests' ZooKeeper parts are built without -race too (the
# zookeeper row of faults' backends table, the ensemble, its soak): the
# no-race pass runs every faults test's zookeeper subtest (and the
# ensemble's, named FAULT-ttlD), skipping the tests that have none.
FAULTS_NOT_ZK = ^(TestModel|TestLinearizableCatchesUnfencedCommit|TestClusterConsulStaleRead|TestSkewServerClock|TestSoak)$$

.PHONY: test test-short servers lint fmt vet staticcheck bench bench-all bench-peers fuzz demo chaos reliability soak

# Installs the servers when missing (no Docker needed), then runs every
# test of every module with the race detector against real servers on
# loopback.
test: servers vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	$(GO) test -count=1 -timeout 5m -run '^TestReconnect' $(NORACE_PKGS)
	$(GO) test -count=1 -timeout 15m -run '/^(zookeeper|.*-ttl.*)$$' -skip '$(FAULTS_NOT_ZK)' github.com/stampede-go/stampede/faults

# The in-process parts only (no servers): claim, memory, conformance, flight.
test-short:
	STAMPEDE_TEST_REQUIRE=0 $(GO) test -race -count=1 ./claim/... ./conformance ./flight ./internal/opctx ./internal/countdriver github.com/stampede-go/stampede/cmd/stampede

servers:
	@if [ -n "$${STAMPEDE_TEST_SKIP_INSTALL:-}" ]; then echo "servers: skipped (STAMPEDE_TEST_SKIP_INSTALL)"; \
	else bash scripts/install-backends; fi

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# The tools modules are not in the workspace: GOWORK=off there.
staticcheck:
	$$(cd tools/lint && GOWORK=off $(GO) tool -n staticcheck) $(PKGS)

# Backend and cache benchmarks (see BENCHMARKS in README).
bench: servers
	$(GO) test -run '^$$' -bench . -benchtime=30x $(PKGS)

# The longer fault runs (faults/); the gating set runs in make test.
chaos: servers
	STAMPEDE_CHAOS=1 $(GO) test -race -count=1 -timeout 30m github.com/stampede-go/stampede/faults
	STAMPEDE_CHAOS=1 $(GO) test -count=1 -timeout 30m -run '/^(zookeeper|.*-ttl.*)$$' -skip '$(FAULTS_NOT_ZK)|^TestReconnectSoakZooKeeper$$' github.com/stampede-go/stampede/faults

# Regenerates the figures table for docs/reliability.md.
reliability: servers
	STAMPEDE_CHAOS=1 STAMPEDE_FAULTS_REPORT=$(CURDIR)/docs/reliability-figures.md $(GO) test -race -count=1 -timeout 30m github.com/stampede-go/stampede/faults

# The soak: a mixed workload (flight herds, GetMany, Invalidate and Set, an
# election, a semaphore) under random faults on every backend at once, for
# STAMPEDE_SOAK (30m here; the 10 s version runs in make test), with its
# report in docs/soak-report.md. ZooKeeper's part runs alongside without
# -race (go-zk races on reconnection; make test's no-race pass runs it too).
soak: servers
	cd faults && export STAMPEDE_SOAK=$${STAMPEDE_SOAK:-30m} STAMPEDE_SOAK_REPORT=$(CURDIR)/docs/soak-report.md && \
	{ $(GO) test -count=1 -timeout 90m -run '^TestReconnectSoakZooKeeper$$' . & zk=$$!; \
	$(GO) test -race -count=1 -timeout 90m -run '^TestSoak$$' .; rc=$$?; wait $$zk || rc=1; exit $$rc; }

# Every BENCHMARKS.md figure in one run (about 12 minutes), and the rivals.
bench-all: servers
	bash scripts/bench-all

bench-peers: servers
	bash scripts/bench-peers

# Short fuzz runs of every fuzz target (seed corpora committed under
# testdata/fuzz; FUZZTIME=30s for longer).
fuzz:
	scripts/fuzz-short

demo:
	$(GO) run ./cmd/stampede demo
