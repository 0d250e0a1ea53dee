# idemlock — build and test entry points.
#
#   make test          start the real test servers, lint, run every test
#                      against them; any failure, or any skip other than an
#                      "optional capability" one, fails
#   make lint          gofmt, go vet, staticcheck
#   make servers       start the test servers (scripts/servers.sh start)
#   make stop-servers  stop them

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

GO          ?= go
SERVERS     := scripts/servers.sh
STATICCHECK ?= $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2
TESTFLAGS   ?= -race -count=1 -timeout 20m

.PHONY: test lint servers stop-servers

servers:
	bash $(SERVERS) start

stop-servers:
	bash $(SERVERS) stop

lint:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt -l: these files need gofmt:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...

test: servers lint
	eval "$$(bash $(SERVERS) env)"; \
	export IDEMLOCK_REQUIRE_SERVERS=1; \
	$(GO) test $(TESTFLAGS) -json ./... | $(GO) run ./internal/cmd/testcheck
