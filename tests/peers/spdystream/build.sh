#!/usr/bin/env bash
# Builds the spdystream test peer (peer.go) in GOPATH mode against the Debian package
# golang-github-docker-spdystream-dev, and prints the path of the binary on stdout.
#
#   build.sh [OUTDIR]      default OUTDIR: ${CARGO_TARGET_DIR:-<crate>/target}/peers
#
# Exit status: 0 built; 3 a prerequisite is missing (go, or the spdystream sources);
# 1 anything else (a compile error is a real failure, not a reason to skip).
# Build products and the Go build cache stay under OUTDIR (or $GOCACHE if set), never in the
# source tree.
set -euo pipefail

src="${BASH_SOURCE[0]}"
[[ "$src" == */* ]] || src="./$src"
here="$(cd "${src%/*}" && pwd)"
crate="$(cd "$here/../../.." && pwd)"
outdir="${1:-${CARGO_TARGET_DIR:-$crate/target}/peers}"
gopath="${SPDYSTREAM_GOPATH:-/usr/share/gocode}"

missing() {
    echo "build.sh: $*" >&2
    exit 3
}

command -v go >/dev/null 2>&1 ||
    missing "go is not installed (apt-get install golang-go golang-github-docker-spdystream-dev)"
pkg=""
for candidate in github.com/moby/spdystream github.com/docker/spdystream; do
    if [ -f "$gopath/src/$candidate/connection.go" ]; then
        pkg="$candidate"
        break
    fi
done
[ -n "$pkg" ] ||
    missing "spdystream sources not found under $gopath/src (apt-get install golang-github-docker-spdystream-dev)"
# peer.go imports the canonical path; the Debian package ships docker/ as a symlink to moby/.
[ -f "$gopath/src/github.com/moby/spdystream/connection.go" ] ||
    missing "$gopath/src/github.com/moby/spdystream is missing (only $pkg found)"

mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
bin="$outdir/spdystream-peer"

export GO111MODULE=off
export GOPATH="$gopath"
export GOCACHE="${GOCACHE:-$outdir/go-cache}"
export GOFLAGS=""
export CGO_ENABLED=0
# The package tree is read-only and outside our control: build from a temp dir so nothing
# (not even go's lock files) lands next to peer.go.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$here/peer.go" "$work/peer.go"
if ! (cd "$work" && go build -trimpath -o "$bin.tmp" peer.go) >&2; then
    echo "build.sh: go build of $here/peer.go failed" >&2
    exit 1
fi
mv -f "$bin.tmp" "$bin"
echo "$bin"
