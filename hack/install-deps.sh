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
[ ${#components[@]} -gt 0 ] || components=(base ipfix-tools suricata clickhouse kube)

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

install_suricata() {
  # The backports source is derived from the first stanza of the machine's
  # own debian.sources (same mirror and keyring), only its Suites changed.
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
  if ! dpkg-query -W -f='${Status}' suricata 2>/dev/null | grep -q 'install ok installed'; then
    echo "install-deps: installing suricata from bookworm-backports"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports suricata
    # Tests start their own Suricata; a packaged service would sniff the host.
    if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
      systemctl disable --now suricata 2>/dev/null || true
    fi
  fi
}

# goflow2 has no Debian package: built from its pinned module version into
# /usr/local/bin, once per version.
GOFLOW2_VERSION=v2.2.6
install_goflow2() {
  local bin=/usr/local/bin/goflow2 go=${GO:-go}
  if [ -x "$bin" ] && "$go" version -m "$bin" 2>/dev/null | grep -q "mod[[:space:]]*github.com/netsampler/goflow2/v2[[:space:]]*$GOFLOW2_VERSION[[:space:]]"; then
    return 0
  fi
  command -v "$go" >/dev/null || { echo "install-deps: goflow2 needs Go ($go not found)" >&2; exit 1; }
  echo "install-deps: building goflow2 $GOFLOW2_VERSION"
  GOBIN=/usr/local/bin GOFLAGS= "$go" install "github.com/netsampler/goflow2/v2/cmd/goflow2@$GOFLOW2_VERSION"
}

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
      install_goflow2
      ;;
    suricata) install_suricata ;;
    clickhouse) apt_install clickhouse-server clickhouse-client ;;
    kube)
      apt_install etcd-server
      # Built once and cached under /var/cache/flowlens (minutes the first
      # time, instant after).
      "$(dirname "${BASH_SOURCE[0]}")/build-kube-apiserver.sh" >/dev/null
      ;;
    antrea-fa) "$(dirname "${BASH_SOURCE[0]}")/build-antrea-flow-aggregator.sh" v2.5.3 >/dev/null ;;
    *) echo "install-deps: unknown component $c" >&2; exit 2 ;;
  esac
done
echo "install-deps: ok (${components[*]})"
