#!/usr/bin/env bash
# Builds the Kubernetes commands a real single-node cluster needs (v1.31.0):
# kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy and kubectl, in ONE `go build` (they share most packages, so
# six commands cost little more than one: ~8 minutes on 2 cores with an
# empty Go build cache), and caches them per version so only the first run
# pays.
#
#   hack/build-kube.sh                      # build if not cached, print the dir
#   FLOWLENS_CACHE=/some/dir hack/build-kube.sh
#   FORCE=1 hack/build-kube.sh              # rebuild even if cached
#
# The binaries land in $FLOWLENS_CACHE/kubernetes-<version>/ (default
# /var/cache/flowlens); the apiserver is also linked to
# $FLOWLENS_CACHE/kube-apiserver-<version>, the path test/kubeapi reads.
# The last line of stdout is the directory.
#
# `go install k8s.io/kubernetes/cmd/...@...` is refused because Kubernetes'
# go.mod uses replace directives; hack/kube-apiserver is a small module that
# carries equivalent replace lines instead (tools.go lists the commands).
set -euo pipefail

version=v1.31.0
minor=31
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FLOWLENS_CACHE:-/var/cache/flowlens}"
out="$cache/kubernetes-$version"
apiserver="$cache/kube-apiserver-$version"

complete() {
  local c
  for c in "${cmds[@]}"; do [ -x "$out/$c" ] || return 1; done
}

if complete && [ "${FORCE:-0}" != 1 ]; then
  # A cache filled before the apiserver link existed, or the link removed.
  [ -x "$apiserver" ] || ln -f "$out/kube-apiserver" "$apiserver"
  echo "$out"
  exit 0
fi

mkdir -p "$cache"
tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"

pkgs=()
for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done

echo "build-kube: building ${cmds[*]} $version into $out (takes minutes)" >&2
start=$(date +%s)
(
  cd "$root/hack/kube-apiserver"
  # The root module's GOFLAGS (e.g. -mod=vendor) must not leak in here.
  GOFLAGS=-mod=readonly CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$tmp/" \
    -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" \
    "${pkgs[@]}"
)
for c in "${cmds[@]}"; do
  [ -x "$tmp/$c" ] || { echo "build-kube: $c missing from the build output" >&2; exit 1; }
done
rm -rf "$out"
mv "$tmp" "$out"
# A hard link, not a symlink: test/kubeapi checks the file, and a rebuild
# that replaces the directory must not leave it dangling.
ln -f "$out/kube-apiserver" "$apiserver"
echo "build-kube: done in $(( $(date +%s) - start ))s" >&2
echo "$out"
