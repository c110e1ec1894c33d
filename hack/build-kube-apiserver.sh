#!/usr/bin/env bash
# Builds a real kube-apiserver (v1.31.0) for the integration tests in
# test/kubeapi and caches it, so only the first run pays the ~5 minute build.
#
#   hack/build-kube-apiserver.sh            # build if not cached, print the path
#   FLOWLENS_CACHE=/some/dir hack/build-kube-apiserver.sh
#   FORCE=1 hack/build-kube-apiserver.sh    # rebuild even if cached
#
# The binary lands in $FLOWLENS_CACHE/kube-apiserver-<version>
# (default /var/cache/flowlens). The last line of stdout is its path.
#
# `go install k8s.io/kubernetes/cmd/kube-apiserver@...` is refused because
# Kubernetes' go.mod uses replace directives; hack/kube-apiserver is a small
# module that carries equivalent replace lines instead.
set -euo pipefail

version=v1.31.0
minor=31
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FLOWLENS_CACHE:-/var/cache/flowlens}"
out="$cache/kube-apiserver-$version"

if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT

echo "build-kube-apiserver: building $version into $out (takes minutes)" >&2
start=$(date +%s)
(
  cd "$root/hack/kube-apiserver"
  # The root module's GOFLAGS (e.g. -mod=vendor) must not leak in here.
  GOFLAGS=-mod=readonly CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$tmp" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
    k8s.io/kubernetes/cmd/kube-apiserver
)
mv "$tmp" "$out"
echo "build-kube-apiserver: done in $(( $(date +%s) - start ))s" >&2
echo "$out"
