#!/usr/bin/env bash
# Reports the known vulnerabilities flowlens's code can reach, with a
# vulnerability database built on this machine from the golang.org/x/vulndb
# module. That module is fetched like any Go module (module proxy, checksum
# database), so no vulnerability-database service is asked and the scan
# needs nothing but what building flowlens needs. See docs/security.md.
#
#   hack/govulncheck.sh                        # ./... with the newest database
#   hack/govulncheck.sh -tags integration ./...
#   VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018 hack/govulncheck.sh
#
# Arguments go to govulncheck (default ./...). Exit status is govulncheck's:
# 3 when a vulnerability is reachable.
set -euo pipefail

GO=${GO:-go}
GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-v1.9.0}
VULNDB_VERSION=${VULNDB_VERSION:-latest}
# The standard library scanned is the toolchain's that builds flowlens: the
# one go.mod's toolchain line names, even where a go env file says local.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

cd "$(dirname "$0")/.."
gopath=$("$GO" env GOPATH)
tools=${FLOWLENS_TOOLS:-${gopath%%:*}/bin/flowlens-tools}

# Resolve "latest" outside the module so nothing can touch go.mod.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
version=$(cd "$work" && "$GO" list -m -f '{{.Version}}' "golang.org/x/vulndb@$VULNDB_VERSION")
src=$(cd "$work" && "$GO" mod download -json "golang.org/x/vulndb@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
if [ -z "$src" ] || [ ! -d "$src/data/osv" ]; then
  echo "govulncheck.sh: golang.org/x/vulndb@$version has no data/osv directory (got ${src:-nothing})" >&2
  exit 1
fi

# indexdb (from the same module) turns the OSV files into the layout
# govulncheck reads: index/db.json, index/modules.json, ID/<id>.json.
db=$tools/vulndb-$version
if [ ! -f "$db/index/db.json" ]; then
  indexdb=$tools/indexdb-$version/indexdb
  [ -x "$indexdb" ] || GOBIN=$(dirname "$indexdb") "$GO" install "golang.org/x/vulndb/cmd/indexdb@$version"
  rm -rf "$db.tmp"
  "$indexdb" -vulns "$src/data/osv" -out "$db.tmp"
  mv "$db.tmp" "$db"
fi

govulncheck=$tools/govulncheck-$GOVULNCHECK_VERSION/govulncheck
[ -x "$govulncheck" ] || GOBIN=$(dirname "$govulncheck") "$GO" install "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION"

echo "govulncheck.sh: $("$GO" version), database golang.org/x/vulndb@$version ($(find "$db/ID" -name '*.json' | wc -l) entries) in $db" >&2
[ $# -gt 0 ] || set -- ./...
exec "$govulncheck" -db "file://$db" "$@"
