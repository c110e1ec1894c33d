#!/usr/bin/env bash
# Prints the path of a real kube-apiserver (v1.31.0) for the integration
# tests in test/kubeapi, building it first if it is not cached.
#
#   hack/build-kube-apiserver.sh            # build if not cached, print the path
#   FLOWLENS_CACHE=/some/dir hack/build-kube-apiserver.sh
#   FORCE=1 hack/build-kube-apiserver.sh    # rebuild even if cached
#
# The binary is $FLOWLENS_CACHE/kube-apiserver-<version> (default
# /var/cache/flowlens). The last line of stdout is its path.
#
# hack/build-kube.sh builds it, together with the other commands of a
# single-node cluster (test/nodee2e) in one `go build`: they share most of
# their packages, so the apiserver alone would save little.
set -euo pipefail

version=v1.31.0
cache="${FLOWLENS_CACHE:-/var/cache/flowlens}"
out="$cache/kube-apiserver-$version"

if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "$out"
  exit 0
fi
"$(dirname "${BASH_SOURCE[0]}")/build-kube.sh" >/dev/null
[ -x "$out" ] || { echo "build-kube-apiserver: $out missing after hack/build-kube.sh" >&2; exit 1; }
echo "$out"
