#!/usr/bin/env bash
# Installs what `make test`, `make bench` and `make demo` need on a fresh
# Debian bookworm machine. Idempotent: a second run installs nothing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root (network namespaces, conntrack, apt)" >&2
  exit 1
fi

# Debian packages, by what needs them.
packages=(
  iproute2 iptables nftables conntrack   # test/netns harness, DNAT, conntrack -I for benches
  nfdump tshark                           # IPFIX interoperability tests
  curl ca-certificates
  clickhouse-server clickhouse-client     # test/clickhousetest: aggregator ClickHouse sink (18.16; run per test, not as a service)
  etcd-server                             # test/kubeapi: storage for the real kube-apiserver
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Suricata 7 for the L7 (EVE) integration tests, from bookworm-backports.
# The backports source is derived from the first stanza of the machine's own
# debian.sources (same mirror and keyring), only its Suites line changed.
backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [ ! -e "$backports" ]; then
  awk 'BEGIN { RS = ""; FS = "\n" } NR == 1 {
         for (i = 1; i <= NF; i++) {
           if ($i ~ /^Suites:/) print "Suites: bookworm-backports"; else print $i
         }
       }' /etc/apt/sources.list.d/debian.sources > "$backports.tmp"
  grep -q '^Suites: bookworm-backports$' "$backports.tmp" || { echo "install-deps: cannot derive $backports" >&2; exit 1; }
  mv "$backports.tmp" "$backports"
  apt-get update -q
fi
if ! dpkg-query -W -f='${Status}' suricata 2>/dev/null | grep -q 'install ok installed'; then
  echo "install-deps: installing suricata from bookworm-backports"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports suricata
  # Tests start their own Suricata; a packaged service would sniff the host.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now suricata 2>/dev/null || true
  fi
fi

# tracefs for eBPF tracepoints; harmless when already mounted.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true

# test/kubeapi: a real kube-apiserver, built from source once and cached
# under /var/cache/flowlens (a few minutes the first time, instant after).
"$(dirname "${BASH_SOURCE[0]}")/build-kube-apiserver.sh" >/dev/null

echo "install-deps: ok"
