#!/usr/bin/env bash
# Installs what `make test`, `make bench` and `make demo` need on a fresh
# Debian bookworm machine. Idempotent: a second run installs nothing.
#
#   hack/install-deps.sh                 # everything (make test)
#   hack/install-deps.sh base suricata   # only these components
#
# Components:
#   base        netns harness, nftables/iptables DNAT, conntrack CLI
#   ipfix-tools nfdump, tshark, pmacct (nfacctd) and goflow2 (built with Go,
#               pinned), for IPFIX interoperability tests
#   suricata    Suricata 7 from bookworm-backports (L7 tests, demo)
#   clickhouse  clickhouse-server 18.16 (aggregator sink tests; run per test)
#   kube        etcd-server plus a kube-apiserver built from source and cached
#   node        a real single-node cluster (test/nodee2e): containerd, runc,
#               the CNI plugins (bridge, host-local), and kube-apiserver,
#               kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#               and kubectl built from source in one go and cached
#   chromium    Debian's chromium, driven headless by the UI's browser test
#               (test/uie2e); never downloaded by the test itself
#   helm        helm (pinned, built with Go): the chart's lint and template
#               tests (make chart-test, part of make test)
#   kubeconform kubeconform (pinned, built with Go): validates the rendered
#               chart against schemas generated offline (hack/kubeschemas)
#   images      mmdebstrap, for `make images` (Suricata and ClickHouse
#               images from Debian packages); not in the default set
#   ebpf        clang, llvm, libbpf-dev and bpftool: only for `make generate`
#               (the eBPF objects are committed, so tests need none of it);
#               not in the default set
#   antrea-fa   Antrea's Flow Aggregator v2.5.3 (test/antreafa), built from git
#               checkouts and cached: not in the default set, since the module
#               proxy refuses antrea.io modules (see
#               hack/build-antrea-flow-aggregator.sh for the ANTREA_*_SRC it needs)
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (network namespaces, conntrack, apt)" >&2
  exit 1
fi

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(base ipfix-tools suricata clickhouse kube node chromium helm kubeconform)

apt_updated=0
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "install-deps: installing ${missing[*]}"
  if [ "$apt_updated" = 0 ]; then
    apt-get update -q
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The backports source is derived from the first stanza of the machine's
# own debian.sources (same mirror and keyring), only its Suites changed.
# Suricata 7 comes from there, on the host and in make images' image.
ensure_backports() {
  local backports=/etc/apt/sources.list.d/bookworm-backports.sources
  if [ ! -e "$backports" ]; then
    awk 'BEGIN { RS = ""; FS = "\n" } NR == 1 {
           for (i = 1; i <= NF; i++) {
             if ($i ~ /^Suites:/) print "Suites: bookworm-backports"; else print $i
           }
         }' /etc/apt/sources.list.d/debian.sources > "$backports.tmp"
    grep -q '^Suites: bookworm-backports$' "$backports.tmp" || { echo "install-deps: cannot derive $backports" >&2; exit 1; }
    mv "$backports.tmp" "$backports"
    apt-get update -q
    apt_updated=1
  fi
}

install_suricata() {
  ensure_backports
  if ! dpkg-query -W -f='${Status}' suricata 2>/dev/null | grep -q 'install ok installed'; then
    echo "install-deps: installing suricata from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports suricata
    # Tests start their own Suricata; a packaged service would sniff the host.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now suricata 2>/dev/null || true
    fi
  fi
}

# Tools with no Debian package (or none of the version we pin) are built
# from their pinned module version into /usr/local/bin, once per version:
# a binary whose embedded module version differs is rebuilt.
#   install_go_tool NAME MODULE PACKAGE VERSION [LDFLAGS]
install_go_tool() {
  local name=$1 mod=$2 pkg=$3 version=$4 ldflags=${5:-} bin=/usr/local/bin/$1 go=${GO:-go}
  if [ -x "$bin" ] && "$go" version -m "$bin" 2>/dev/null | grep -q "mod[[:space:]]*$mod[[:space:]]*$version[[:space:]]"; then
    return 0
  fi
  command -v "$go" >/dev/null || { echo "install-deps: $name needs Go ($go not found)" >&2; exit 1; }
  echo "install-deps: building $name $version (minutes the first time)"
  GOBIN=/usr/local/bin GOFLAGS= CGO_ENABLED=0 "$go" install -trimpath -ldflags "$ldflags" "$pkg@$version"
  "$go" version -m "$bin" | grep -q "mod[[:space:]]*$mod[[:space:]]*$version[[:space:]]" ||
    { echo "install-deps: $bin is not $mod $version after go install" >&2; exit 1; }
}

GOFLOW2_VERSION=v2.2.6
# The chart's tools (make chart-test). HELM_VERSION's ldflag makes `helm
# version` report it (a plain go install says v3.x-dev).
HELM_VERSION=v3.21.4
KUBECONFORM_VERSION=v0.7.0

install_pmacct() {
  dpkg-query -W -f='${Status}' pmacct 2>/dev/null | grep -q 'install ok installed' && return 0
  apt_install pmacct
  # Tests start their own nfacctd; packaged daemons would hold the ports.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now nfacctd pmacctd sfacctd uacctd 2>/dev/null || true
  fi
}

for c in "${components[@]}"; do
  case "$c" in
    base)
      apt_install iproute2 iptables nftables conntrack curl ca-certificates
      # tracefs for eBPF tracepoints; harmless when already mounted.
      mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
      ;;
    ipfix-tools)
      echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
      apt_install nfdump tshark
      install_pmacct
      install_go_tool goflow2 github.com/netsampler/goflow2/v2 github.com/netsampler/goflow2/v2/cmd/goflow2 "$GOFLOW2_VERSION"
      ;;
    suricata) install_suricata ;;
    clickhouse) apt_install clickhouse-server clickhouse-client ;;
    kube)
      apt_install etcd-server
      # Built once and cached under /var/cache/flowlens (minutes the first
      # time, instant after).
      "$(dirname "${BASH_SOURCE[0]}")/build-kube-apiserver.sh" >/dev/null
      ;;
    node)
      apt_install etcd-server containerd runc containernetworking-plugins iptables conntrack
      # Tests start their own containerd (own root, state and socket); a
      # packaged service would manage the host's containers.
      if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now containerd 2>/dev/null || true
      fi
      for b in containerd containerd-shim-runc-v2 ctr runc; do
        command -v "$b" >/dev/null || { echo "install-deps: $b missing after installing containerd/runc" >&2; exit 1; }
      done
      for p in bridge host-local loopback portmap; do
        [ -x "/usr/lib/cni/$p" ] || { echo "install-deps: /usr/lib/cni/$p missing after installing containernetworking-plugins" >&2; exit 1; }
      done
      "$(dirname "${BASH_SOURCE[0]}")/build-kube.sh" >/dev/null
      ;;
    chromium)
      # A font: without recommends, a minimal machine may have none and
      # the screenshots would show empty boxes for text.
      apt_install chromium fonts-dejavu-core
      command -v chromium >/dev/null || { echo "install-deps: chromium installed but not in PATH" >&2; exit 1; }
      ;;
    ebpf)
      # libbpf-dev brings bpf_helpers.h; linux-libc-dev the UAPI headers.
      apt_install clang llvm libbpf-dev bpftool linux-libc-dev
      ;;
    helm)
      install_go_tool helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
        "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      ;;
    kubeconform)
      install_go_tool kubeconform github.com/yannh/kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" "-s -w"
      ;;
    images)
      # make images: mmdebstrap builds the Suricata and ClickHouse root
      # file systems from Debian packages (no container engine needed).
      apt_install mmdebstrap ca-certificates
      ensure_backports
      ;;
    antrea-fa) "$(dirname "${BASH_SOURCE[0]}")/build-antrea-flow-aggregator.sh" v2.5.3 >/dev/null ;;
    *) echo "install-deps: unknown component $c" >&2; exit 2 ;;
  esac
done
echo "install-deps: ok (${components[*]})"
