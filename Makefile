# Device provisioning for embedded Linux fleets. `make help` lists targets.
SHELL := /bin/bash
GO    ?= go
BIN   := bin
TOOLS := $(CURDIR)/.tools

# The four binaries, each built from <part>/cmd/prov-<name>.
CMDS := ./pki/cmd/prov-pki ./core/cmd/prov-core ./proxy/cmd/prov-proxy ./deviceclient/cmd/prov-device

# The last commit's time, stamped into every binary as its build time
# (internal/buildinfo): the lowest clock floor of a board without a
# real-time clock. The commit's time, not the build's, so that the same
# commit builds the same bytes. Empty outside a git checkout.
COMMIT_TIME := $(shell git log -1 --format=%cI 2>/dev/null)
LDFLAGS     := -s -w -X github.com/fleetprov/prov/internal/buildinfo.CommitTime=$(COMMIT_TIME)

# Pinned linter; `make lint` installs exactly this version into .tools/.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(TOOLS)/golangci-lint-$(GOLANGCI_LINT_VERSION)

.DEFAULT_GOAL := help
.PHONY: help build test lint bench demo demo-ha up clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-7s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build prov-pki, prov-core, prov-proxy and prov-device into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ $(CMDS)

# Three test binaries at once on CI's two cores: most of the time of the
# slow packages is waiting (step-ca, PostgreSQL, certificates ageing,
# systemd booting in a container, a browser), not CPU (a run's CPU time is
# under half of two cores' wall time), so a third package fills the gaps.
TEST_PACKAGES_AT_ONCE ?= 3

test: ## run every test with the race detector (as root also the kernel tests), then every benchmark once, small
	$(GO) test -race -count=1 -p $(TEST_PACKAGES_AT_ONCE) -timeout 15m ./...
	$(GO) test -short -run '^$$' -bench . -benchtime 1x -timeout 10m ./...

lint: $(GOLANGCI_LINT) ## run the pinned golangci-lint
	$(GOLANGCI_LINT) run ./...

$(GOLANGCI_LINT):
	@mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(TOOLS)/golangci-lint $@

bench: ## measure every hot path beside its baseline; prints a table, writes BENCHMARKS.md (BENCHFLAGS=-quick: a minute)
	$(GO) run ./scripts/benchreport $(BENCHFLAGS)

demo: build ## the whole system end to end: PKI, CA, core, proxy, three devices, an update over MQTT
	./scripts/demo

demo-ha: build ## as root: PostgreSQL, two step-ca, three core replicas behind HAProxy, Mosquitto, two proxies; one replica killed mid-change
	./scripts/demo-ha

up: build ## run CA, core and proxy on loopback in the foreground, with commands to try (Ctrl-C stops)
	./scripts/dev-up

clean: ## remove build outputs and tools
	rm -rf $(BIN) $(TOOLS)
