# flowlens. `make test` is the test command (CI calls it); `make demo` shows
# the agent on a small simulated node.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO        ?= go
# Build with the toolchain go.mod's toolchain line names (a patched Go; the
# go command fetches it when the local one is older) even where a go env
# file says GOTOOLCHAIN=local, which would silently build with an
# unpatched standard library. GOTOOLCHAIN set in the environment wins.
export GOTOOLCHAIN ?= auto
BIN       := bin
GOFLAGS   ?=
PKGS      := ./...
# Integration tests need root, network namespaces and real components; they
# share the machine's conntrack/iptables so they run one package at a time.
INTEGRATION_FLAGS := -tags integration -p 1 -count=1 -timeout 25m

.PHONY: all build test unit fuzz integration bench soak demo generate lint deps demo-deps clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	hack/install-deps.sh

# The demo needs no Kubernetes API server or IPFIX analysers.
demo-deps:
	hack/install-deps.sh base suricata clickhouse

# staticcheck, pinned, installed once per version outside the module (a
# tool needs no entry in go.mod). Vulnerability scanning is not part of
# lint: it needs a vulnerability database, see docs/security.md.
STATICCHECK_VERSION := v0.8.2
TOOLS_DIR   := $(firstword $(subst :, ,$(shell $(GO) env GOPATH)))/bin/flowlens-tools
STATICCHECK := $(TOOLS_DIR)/staticcheck-$(STATICCHECK_VERSION)/staticcheck

$(STATICCHECK):
	GOBIN=$(dir $@) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration $(PKGS)
	$(STATICCHECK) $(PKGS)
	$(STATICCHECK) -tags integration $(PKGS)
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

unit:
	$(GO) test -count=1 $(PKGS)

# The fuzz targets of the decoders of untrusted input (IPFIX messages, EVE
# streams and lines), FUZZTIME each (`-fuzz` takes one package at a time).
# Seeds include the crafted attacks of issue 9; a failing input is saved
# under the package's testdata/fuzz and fails `make unit` from then on.
FUZZTIME     ?= 20s
FUZZ_TARGETS := ./pkg/ipfixcollect:FuzzMessage ./pkg/eve:FuzzLineReader ./pkg/eve:FuzzParseLine ./pkg/eve:FuzzScannerMatchesEncodingJSON
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "fuzz $${t##*:} ($${t%%:*}) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$${t##*:}\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 1s $${t%%:*}; \
	done

integration: deps build
	$(GO) test $(INTEGRATION_FLAGS) $(PKGS)

# The whole suite: installs what the integration tests need, then unit,
# integration and end-to-end tests. Must run as root.
test: lint unit fuzz integration

bench: demo-deps
	$(GO) test -tags integration -run '^$$' -bench . -skip Soak -benchmem -benchtime 3x -count 1 -timeout 30m $(PKGS) | tee bench.out

# Churn of short connections through agent -> aggregator -> ClickHouse for
# FLOWLENS_SOAK_DURATION (default 10m) at FLOWLENS_SOAK_RATE connections/s
# (default 500), then checks every connection's rows (test/soak).
soak: demo-deps
	$(GO) test -tags integration -run '^$$' -bench Soak -benchtime 1x -count 1 -timeout 60m -v ./test/soak | tee soak.out

demo: demo-deps build
	$(GO) run ./hack/demo

generate:
	$(GO) generate $(PKGS)

clean:
	rm -rf $(BIN) bench.out
