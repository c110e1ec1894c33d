#!/usr/bin/env bash
# Builds Antrea's Flow Aggregator (cmd/flow-aggregator) for the
# interoperability test in test/antreafa and caches it, so only the first
# run pays the build (~10 minutes on 2 cores).
#
#   ANTREA_SRC=/path/to/antrea \
#   ANTREA_LIBOPENFLOW_SRC=/path/to/libOpenflow \
#   ANTREA_OFNET_SRC=/path/to/ofnet \
#     hack/build-antrea-flow-aggregator.sh [ref [version]]   # default v2.5.3
#
#   ref is the git ref of Antrea to build (a release tag, or e.g. main);
#   version, the version the binary reports, defaults to ref (give one
#   starting with "v" for a branch: Antrea's API server parses it).
#
#   FORCE=1 ...                  # rebuild even if cached
#   FLOWLENS_CACHE=/some/dir ... # cache directory (default /var/cache/flowlens)
#
# The binary lands in $FLOWLENS_CACHE/antrea-flow-aggregator-<version>;
# the last line of stdout is its path.
#
# Why from git checkouts: the Go module proxy this project's machines use
# refuses every antrea.io module (antrea.io/antrea, antrea.io/libOpenflow,
# antrea.io/ofnet: 403), so neither `go install` nor a helper module like
# hack/kube-apiserver can fetch them. (Antrea before v2.7 also declares
# module antrea.io/antrea while tagging v2.x, so a tag cannot be required
# as a module version at all.) The three ANTREA_*_SRC variables name git
# repositories (bare or not) or plain source trees; every other dependency
# comes from the module proxy as usual.
#
# ANTREA_LIBOPENFLOW_REF / ANTREA_OFNET_REF choose the commits of the two
# dependencies (default: the versions Antrea's go.mod requires). Only
# Antrea's OVS code uses them, which the aggregator links but never runs,
# so another commit with the same API builds an aggregator whose
# behaviour is the release's.
#
# ANTREA_DROP_REPLACES lists modules (space-separated) whose replace
# directive in Antrea's go.mod is dropped, so the upstream version Antrea
# requires is used: for a fork the module proxy refuses, e.g.
# gopkg.in/natefinch/lumberjack.v2 (Antrea's main replaces it with
# github.com/antrea-io/lumberjack).
set -euo pipefail

ref="${1:-v2.5.3}"
version="${2:-$ref}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${FLOWLENS_CACHE:-/var/cache/flowlens}"
out="$cache/antrea-flow-aggregator-$version"

if [ -x "$out" ] && [ "${FORCE:-0}" != 1 ]; then
  echo "$out"
  exit 0
fi

die() { echo "build-antrea-flow-aggregator: $*" >&2; exit 1; }

for v in ANTREA_SRC ANTREA_LIBOPENFLOW_SRC ANTREA_OFNET_SRC; do
  [ -n "${!v:-}" ] || die "$v is not set: the module proxy refuses antrea.io modules, so the Flow Aggregator is built from git checkouts (see the top of $0)"
  [ -d "${!v}" ] || die "$v=${!v} is not a directory"
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# export_tree SRC REF DEST: the tree of REF in git repository SRC, or SRC
# itself when it is not a git repository (REF must then be "tree").
export_tree() {
  local src="$1" ref="$2" dest="$3"
  mkdir -p "$dest"
  if git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$src" rev-parse --verify -q "$ref^{commit}" >/dev/null \
      || die "$src has no $ref (set the matching *_REF to a commit it has)"
    git -C "$src" archive "$ref" | tar -x -C "$dest"
    echo "build-antrea-flow-aggregator: $(basename "$dest") at $ref ($(git -C "$src" rev-parse --short=12 "$ref^{commit}"))" >&2
  else
    [ "$ref" = tree ] || die "$src is not a git repository; set its *_REF to \"tree\" to build it as it is"
    cp -a "$src/." "$dest/"
  fi
}

export_tree "$ANTREA_SRC" "$ref" "$work/antrea"
[ -f "$work/antrea/cmd/flow-aggregator/main.go" ] || die "$ANTREA_SRC at $ref has no cmd/flow-aggregator"
module="$(awk '$1 == "module" { print $2; exit }' "$work/antrea/go.mod")"
required() { awk -v m="$1" '$1 == m { print $2; exit }' "$work/antrea/go.mod"; }
export_tree "$ANTREA_LIBOPENFLOW_SRC" "${ANTREA_LIBOPENFLOW_REF:-$(required antrea.io/libOpenflow)}" "$work/libOpenflow"
export_tree "$ANTREA_OFNET_SRC" "${ANTREA_OFNET_REF:-$(required antrea.io/ofnet)}" "$work/ofnet"
for m in ${ANTREA_DROP_REPLACES:-}; do
  # A replace line is "replace M => ..." or, inside a block, "M => ...".
  awk -v m="$m" '!(($1 == m && $2 == "=>") || ($1 == "replace" && $2 == m && $3 == "=>"))' \
    "$work/antrea/go.mod" >"$work/go.mod.new"
  cmp -s "$work/go.mod.new" "$work/antrea/go.mod" && die "Antrea's go.mod at $ref has no replace of $m"
  mv "$work/go.mod.new" "$work/antrea/go.mod"
  echo "build-antrea-flow-aggregator: dropped the replace of $m (upstream $(required "$m"))" >&2
done
cat >>"$work/antrea/go.mod" <<EOF

replace antrea.io/libOpenflow => $work/libOpenflow

replace antrea.io/ofnet => $work/ofnet
EOF

mkdir -p "$cache"
tmp="$out.tmp.$$"
trap 'rm -rf "$work" "$tmp"' EXIT
echo "build-antrea-flow-aggregator: building $module $ref as $version into $out (takes minutes)" >&2
start=$(date +%s)
(
  cd "$work/antrea"
  # The replaced modules have no go.sum lines: -mod=mod records what the
  # build resolves, in this temporary copy only. The root module's GOFLAGS
  # must not leak in.
  GOFLAGS=-mod=mod CGO_ENABLED=0 GOWORK=off go build -trimpath -o "$tmp" \
    -ldflags "-s -w -X $module/pkg/version.Version=$version -X $module/pkg/version.ReleaseStatus=released" \
    ./cmd/flow-aggregator
)
"$tmp" --version >&2 || die "the built binary does not run"
mv "$tmp" "$out"
echo "build-antrea-flow-aggregator: done in $(( $(date +%s) - start ))s" >&2
echo "$out"
