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

.PHONY: all build test unit fuzz integration bench soak demo generate lint deps demo-deps clean chart-test images e2e-images nodee2e

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

# test/nodee2e (a real single-node cluster, the chart installed with helm)
# needs the images: `images` and `e2e-images` run first.
integration: deps build images e2e-images
	$(GO) test $(INTEGRATION_FLAGS) $(PKGS)

# The whole suite: installs what the integration tests need, then unit,
# integration and end-to-end tests. Must run as root.
test: lint unit fuzz chart-test integration

# The Helm chart (build/charts/flowlens): helm lint, then every rendering
# of it validated by kubeconform -strict against JSON schemas generated
# offline (hack/kubeschemas) from the OpenAPI document inside the
# k8s.io/kubernetes module hack/kube-apiserver pins (cached per version),
# for the default values and for ci/full-values.yaml (L7, ClickHouse,
# mutual TLS); then the chart's content tests (test/chart: security
# settings, RBAC, and the rendered configs loaded by the real parsers).
# helm and kubeconform are pinned in hack/install-deps.sh.
CHART          := build/charts/flowlens
KUBE_VERSION   := 1.31.0
FLOWLENS_CACHE ?= /var/cache/flowlens
KUBE_SCHEMAS   := $(FLOWLENS_CACHE)/kubeschemas-v$(KUBE_VERSION)
CHART_VALUES   := $(CHART)/values.yaml $(CHART)/ci/full-values.yaml

$(KUBE_SCHEMAS)/.done: hack/kubeschemas/main.go hack/kube-apiserver/go.mod
	@dir=$$(cd hack/kube-apiserver && GOFLAGS=-mod=readonly GOWORK=off $(GO) mod download -json k8s.io/kubernetes | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p'); \
	  [ -n "$$dir" ] || { echo "chart-test: cannot download k8s.io/kubernetes (hack/kube-apiserver/go.mod)" >&2; exit 1; }; \
	  grep -q 'v$(KUBE_VERSION)$$' <<<"$$(basename $$dir)" || { echo "chart-test: $$dir is not v$(KUBE_VERSION)" >&2; exit 1; }; \
	  rm -rf $(KUBE_SCHEMAS) && $(GO) run ./hack/kubeschemas -spec $$dir/api/openapi-spec/swagger.json -out $(KUBE_SCHEMAS)
	touch $@

chart-test: $(KUBE_SCHEMAS)/.done
	hack/install-deps.sh helm kubeconform suricata
	@set -e; for v in $(CHART_VALUES); do \
		echo "helm lint -f $$v; helm template -f $$v | kubeconform -strict"; \
		helm lint --strict --quiet --kube-version $(KUBE_VERSION) $(CHART) -f $$v; \
		helm template flowlens $(CHART) --namespace flowlens --kube-version $(KUBE_VERSION) -f $$v | \
			kubeconform -strict -summary -kubernetes-version $(KUBE_VERSION) \
				-schema-location '$(KUBE_SCHEMAS)/{{ .ResourceKind }}{{ .KindSuffix }}.json'; \
	done
	$(GO) test $(INTEGRATION_FLAGS) ./test/chart

# Container images without a registry or a daemon (hack/images): the
# three binaries, static, on a minimal base, and Suricata and ClickHouse
# from Debian packages (mmdebstrap). Written to bin/images/*.tar (docker
# archive format: `ctr -n k8s.io images import`, `docker load`, `podman
# load`), tagged flowlens-*:$(IMAGE_TAG). The Debian images take ~90 s
# each; IMAGES=agent,aggregator,cli limits what is built.
IMAGE_TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGES    ?= agent,aggregator,cli,suricata,clickhouse
images:
	hack/install-deps.sh images
	@mkdir -p $(BIN)/images/rootfs
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/images/rootfs/ \
		./cmd/flowlens-agent ./cmd/flowlens-aggregator ./cmd/flowlens ./cmd/flowlens-sysctl
	cd hack/images && GOWORK=off GOFLAGS=-mod=readonly $(GO) test -count=1 . && \
		GOWORK=off GOFLAGS=-mod=readonly $(GO) run . -tag $(IMAGE_TAG) \
		-bin $(CURDIR)/$(BIN)/images/rootfs -out $(CURDIR)/$(BIN)/images -images $(IMAGES)

# The real-node end-to-end test's images (test/nodee2e): its pods' one
# static binary (test/nodee2e/testpod), and the same binary as the pod
# sandbox ("pause") image, so the node pulls nothing.
e2e-images:
	@mkdir -p $(BIN)/images/rootfs
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/images/rootfs/flowlens-e2e-pod ./test/nodee2e/testpod
	cd hack/images && GOWORK=off GOFLAGS=-mod=readonly $(GO) run . -tag $(IMAGE_TAG) \
		-bin $(CURDIR)/$(BIN)/images/rootfs -out $(CURDIR)/$(BIN)/images -images e2e,e2e-pause

# Only the real-node end-to-end test (a part of `make integration`).
nodee2e: deps images e2e-images
	$(GO) test $(INTEGRATION_FLAGS) -v -run TestNodeE2E ./test/nodee2e

# test/agentbench runs the real agent binary on a 1M-entry idle table and
# on 1k and 5k connections/s of churn through a DNAT Service, each counter
# mode beside the polling baseline, once each (-benchtime 1x: one run is
# minutes of scenario, its ns/op the wall time). About 15 minutes; the
# scenario sizes are FLOWLENS_BENCH_* variables (see its doc comments).
AGENTBENCH := ./test/agentbench
bench: demo-deps
	$(GO) test -tags integration -run '^$$' -bench . -skip Soak -benchmem -benchtime 3x -count 1 -timeout 30m $$($(GO) list -tags integration $(PKGS) | grep -v '/test/agentbench$$') | tee bench.out
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 1x -count 1 -timeout 60m -v $(AGENTBENCH) | tee -a bench.out

# Churn of short connections through agent -> aggregator -> ClickHouse for
# FLOWLENS_SOAK_DURATION (default 10m) at FLOWLENS_SOAK_RATE connections/s
# (default 500), then checks every connection's rows (test/soak).
soak: demo-deps
	$(GO) test -tags integration -run '^$$' -bench Soak -benchtime 1x -count 1 -timeout 60m -v ./test/soak | tee soak.out

# DEMO_FLAGS=-serve keeps the demo (and its web UI) running until Ctrl-C.
demo: demo-deps build
	$(GO) run ./hack/demo $(DEMO_FLAGS)

# Regenerates committed generated code: the eBPF objects and their Go
# bindings (pkg/bpfcounters, pkg/packetdrops, pkg/tcphealth, needs `hack/install-deps.sh ebpf`) and the UI.
generate:
	@command -v clang >/dev/null || { echo "make generate: clang not found; run hack/install-deps.sh ebpf" >&2; exit 1; }
	$(GO) generate $(PKGS)

clean:
	rm -rf $(BIN) bench.out
