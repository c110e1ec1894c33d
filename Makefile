# flowlens. `make test` is the test command (CI calls it); `make demo` shows
# the agent on a small simulated node.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO        ?= go
BIN       := bin
GOFLAGS   ?=
PKGS      := ./...
# Integration tests need root, network namespaces and real components; they
# share the machine's conntrack/iptables so they run one package at a time.
INTEGRATION_FLAGS := -tags integration -p 1 -count=1 -timeout 25m

.PHONY: all build test unit integration bench demo generate lint deps demo-deps clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	hack/install-deps.sh

# The demo needs no Kubernetes API server or IPFIX analysers.
demo-deps:
	hack/install-deps.sh base suricata clickhouse

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration $(PKGS)

unit:
	$(GO) test -count=1 $(PKGS)

integration: deps build
	$(GO) test $(INTEGRATION_FLAGS) $(PKGS)

# The whole suite: installs what the integration tests need, then unit,
# integration and end-to-end tests. Must run as root.
test: lint unit integration

bench: demo-deps
	$(GO) test -tags integration -run '^$$' -bench . -benchmem -benchtime 3x -count 1 -timeout 30m $(PKGS) | tee bench.out

demo: demo-deps build
	$(GO) run ./hack/demo

generate:
	$(GO) generate $(PKGS)

clean:
	rm -rf $(BIN) bench.out
