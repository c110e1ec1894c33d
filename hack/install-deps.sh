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

# tracefs for eBPF tracepoints; harmless when already mounted.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
echo "install-deps: ok"
