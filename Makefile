# idemlock — build and test entry points.
#
#   make test          start the real test servers, lint, run every test
#                      against them; any failure, or any skip other than an
#                      "optional capability" one, fails
#   make lint          gofmt, go vet, staticcheck
#   make servers       start the test servers and cluster topologies
#                      (scripts/servers.sh start; its header lists them)
#   make stop-servers  stop them
#   make bench         benchmarks against the peer libraries (bench/): runs
#                      them on a private set of servers and rewrites
#                      BENCHMARKS.md, bench/handoff.png, bench/results.txt
#                      and bench/benchstat.txt (a few minutes)
#   make torture       the long torture matrix (internal/integration/torture): every
#                      backend on private servers under every fault, at
#                      least 100,000 contended takes each; rewrites
#                      RELIABILITY.md (about 45 minutes on 2 cores)

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO          ?= go
SERVERS     := scripts/servers.sh
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
TESTFLAGS   ?= -race -count=1 -timeout 20m
# MODULES are the Go modules of this repository that make lint and make test
# cover: the root module (the contract, memlock, kvlock, conformance,
# idempotency; no third-party module), each networked backend (a module of
# its own, so that its client is paid for only by its users), and the
# test-only integration module (tests and commands that import several
# backends: the idempotency tests on every backend, the torture harness,
# the checkout story on every server, and the check of what a redislock-only
# program lists in go list -m all), and the OpenTelemetry observer
# (observers/otellock, a module so that only its users pay for OTel).
# bench/ is a module of its own too, built by make bench.
MODULES     := . backends/redislock backends/etcdlock backends/consullock \
               backends/memcachedlock backends/pglock internal/integration \
               observers/otellock

.PHONY: test lint servers stop-servers bench torture

servers:
	bash $(SERVERS) start

stop-servers:
	bash $(SERVERS) stop

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: these files need gofmt:"; echo "$$unformatted"; exit 1; fi
	for m in $(MODULES); do (cd $$m && $(GO) vet ./... && $(STATICCHECK) ./...); done

# Every module is tested even when one fails; testcheck judges them all, and
# a go test that failed without saying so in its JSON (a go.mod in need of
# tidying, say) still fails the run.
test: servers lint
	eval "$$(bash $(SERVERS) env)"; \
	export IDEMLOCK_REQUIRE_SERVERS=1; \
	mkdir -p "$(CURDIR)/.servers"; failed="$(CURDIR)/.servers/test-failed"; rm -f "$$failed"; \
	for m in $(MODULES); do (cd $$m && $(GO) test $(TESTFLAGS) -json ./...) || echo "$$m" >> "$$failed"; done | $(GO) run ./internal/cmd/testcheck; \
	if [ -s "$$failed" ]; then echo "go test failed in: $$(tr '\n' ' ' < "$$failed")"; exit 1; fi

# bench runs on servers of its own (ports offset by BENCH_PORT_OFFSET, data
# in .servers/bench-<offset>), so that the shared test servers' traffic
# never enters its server-side request counts; they are stopped at the end.
# BENCH_PORT_OFFSET=0 uses (and keeps) the shared servers instead.
BENCH_PORT_OFFSET ?= 1005
BENCH_ROUNDS      ?= 6
BENCH_FLAGS       ?=
BENCHSTAT         ?= $(GO) run golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

bench:
	export IDEMLOCK_PORT_OFFSET=$(BENCH_PORT_OFFSET); \
	if [ "$(BENCH_PORT_OFFSET)" != 0 ]; then \
		export IDEMLOCK_SERVERS_DIR="$(CURDIR)/.servers/bench-$(BENCH_PORT_OFFSET)"; \
		trap 'bash $(CURDIR)/$(SERVERS) stop redis etcd consul memcached postgres >/dev/null 2>&1 || true' EXIT; \
	fi; \
	bash $(SERVERS) start redis etcd consul memcached postgres; \
	eval "$$(bash $(SERVERS) env)"; \
	export IDEMLOCK_REQUIRE_SERVERS=1; \
	cd bench; \
	$(GO) run ./cmd/report -rounds $(BENCH_ROUNDS) $(BENCH_FLAGS); \
	$(BENCHSTAT) -ignore round results.txt > benchstat.txt

# torture starts private servers of its own (internal/testenv.Private) and
# needs only the servers' variables; TORTURE_FLAGS go to the command
# (for example -takes 20000, or -run 'TestTorture/etcd' for one backend).
# The command is in the integration module; its paths are relative to the
# repository's root.
TORTURE_FLAGS ?=

torture:
	eval "$$(bash $(SERVERS) env)"; \
	cd internal/integration; \
	$(GO) run ./cmd/torture -out RELIABILITY.md $(TORTURE_FLAGS)
