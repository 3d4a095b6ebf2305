#!/usr/bin/env bash
# Builds tests/e2e/go/registry_interop.go into OUT_BINARY, offline: GOPATH mode (no
# modules, no proxy) against Debian's Go packages under /usr/share/gocode, i.e. etcd 3.4's
# clientv3 from golang-etcd-server-dev and what it depends on. The Go build cache is kept
# in go-cache/ beside OUT_BINARY, so a second build only links.
#
#   tests/e2e/go/build.sh OUT_BINARY
#
# Needs the Debian packages golang-go and golang-etcd-server-dev (scripts/setup installs
# both).
set -euo pipefail

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
  echo "usage: $0 OUT_BINARY" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"
gocode=/usr/share/gocode

if ! command -v go >/dev/null 2>&1; then
  echo "$0: 'go' not found: install Debian's golang-go (scripts/setup does)" >&2
  exit 1
fi
if [ ! -f "$gocode/src/go.etcd.io/etcd/clientv3/client.go" ]; then
  echo "$0: etcd 3.4's Go client is missing from $gocode/src/go.etcd.io/etcd/clientv3:" \
       "install Debian's golang-etcd-server-dev (scripts/setup does)" >&2
  exit 1
fi

mkdir -p "$(dirname "$out")"
outdir="$(cd "$(dirname "$out")" && pwd)"
out="$outdir/$(basename "$out")"

# Everything from the local tree: no modules, no network, no user go env file.
export GO111MODULE=off
export GOPATH="$gocode"
export GOFLAGS=
export GOPROXY=off
export GOENV=off
export GOTOOLCHAIN=local
export GOCACHE="$outdir/go-cache"
# A static binary without cgo: no C toolchain needed, no libc resolver.
export CGO_ENABLED=0

cd "$here"
if ! go build -o "$out.tmp" registry_interop.go; then
  rm -f "$out.tmp"
  echo "$0: go build failed ($(go version))" >&2
  exit 1
fi
mv -f "$out.tmp" "$out"
