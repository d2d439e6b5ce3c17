#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kubectl from the Go modules pinned in this
# folder's go.mod, into a cache keyed on go.mod, go.sum and the mains. Prints
# the folder holding the binaries on stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${MTLS_CACHE_DIR:-$HOME/.cache/mtls-migrator}/controlplane
key=$(cd "$here" && cat go.mod go.sum cmd/*/main.go build.sh | sha256sum | cut -c1-16)
out="$cache_root/$key"
if [ -x "$out/kube-apiserver" ] && [ -x "$out/etcd" ] && [ -x "$out/kubectl" ]; then
  echo "control plane: cached binaries in $out" >&2
  echo "$out"
  exit 0
fi
k8s_version=$(awk '$1=="k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
etcd_version=$(cd "$here" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
tmp="$out.partial.$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$here"
echo "control plane: downloading modules (kubernetes $k8s_version, etcd $etcd_version)" >&2
go mod download
build() { # name ldflags
  local name=$1 ldflags=$2 t0
  t0=$(date +%s)
  echo "control plane: building $name (several minutes on 2 cores)..." >&2
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$tmp/$name" "./cmd/$name"
  echo "control plane: built $name in $(( $(date +%s) - t0 ))s" >&2
}
vpkg=k8s.io/component-base/version
kflags="-X $vpkg.gitVersion=$k8s_version -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$k8s_version" | cut -d. -f2) -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
build etcd "-X go.etcd.io/etcd/api/v3/version.Version=${etcd_version#v}"
build kube-apiserver "$kflags"
build kubectl "$kflags"
mv "$tmp" "$out"
trap - EXIT
echo "control plane: cold build took $(( $(date +%s) - start ))s" >&2
echo "$out"
