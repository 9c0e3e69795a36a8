#!/bin/bash
# Build kube-apiserver and etcd from the Go module proxy, for the Kubernetes
# end-to-end test (test/kube). No Debian package ships kube-apiserver and
# nothing may be downloaded outside the package registries, so both servers
# are built from source in a throwaway module outside the repository (its
# own go.mod, never the project's), as ../../../../shared/notes/kubernetes.md
# describes.
#
# Output: $TCPMAP_KUBE_CACHE/$K8S/bin/{kube-apiserver,etcd}, printed as the
# last line. An existing complete bin/ is reused, so only the first run on a
# machine pays for the build (cold: ~10 min on 2 cores, 2.8 GB peak memory).
# The usual `go env GOMODCACHE`/`GOCACHE` are used, so the module downloads
# and compiled packages are shared with other builds.
#
# Environment:
#   TCPMAP_KUBE_CACHE  cache root (default /var/cache/tcpmap/kube)
#   TCPMAP_KUBE_SEED   a bin/ directory holding both binaries of this version
#                      to copy instead of building (default: the
#                      kubernetes.md demo's /var/cache/tcpmap/kapi-demo/bin);
#                      set it empty to force a build
#
# Needs: go >= 1.26, network access to the Go module proxy, flock.
set -euo pipefail

K8S=v1.37.2   # kube-apiserver; its staging modules are v0.37.2
STG=v0.37.2
ROOT=${TCPMAP_KUBE_CACHE:-/var/cache/tcpmap/kube}
OUT=$ROOT/$K8S
BIN=$OUT/bin
SEED=${TCPMAP_KUBE_SEED-/var/cache/tcpmap/kapi-demo/bin}

have() { [ -x "$1/kube-apiserver" ] && [ -x "$1/etcd" ] &&
  "$1/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes $K8S"; }

mkdir -p "$OUT"
# One build at a time per cache: concurrent test runs wait for the first.
exec 9>"$OUT/.lock"
flock 9

if have "$BIN"; then echo "$BIN"; exit 0; fi

if [ -n "$SEED" ] && have "$SEED"; then
  mkdir -p "$BIN.tmp"
  cp "$SEED/kube-apiserver" "$SEED/etcd" "$BIN.tmp/"
  rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
  echo "copied from $SEED" >&2
  echo "$BIN"; exit 0
fi

B=$OUT/build
rm -rf "$B" "$BIN.tmp"; mkdir -p "$B" "$BIN.tmp"; cd "$B"
export GOFLAGS=-buildvcs=false GOWORK=off GO111MODULE=on
# k8s.io/kubernetes requires its staging modules at v0.0.0 with replace
# directives to ./staging; a module depending on it must replace each one
# with its published version.
{ printf 'module kapibuild\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' $K8S
  for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
    cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice externaljwt \
    kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
    mount-utils pod-security-admission sample-apiserver streaming; do
    printf '\tk8s.io/%s => k8s.io/%s %s\n' $m $m $STG; done; echo ')'; } > go.mod
printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/server/v3"\n\t_ "k8s.io/kubernetes/cmd/kube-apiserver"\n)\n' > tools.go

T0=$SECONDS; go mod tidy; echo "TIME go mod tidy: $((SECONDS-T0))s" >&2
# Without the version stamp kube-apiserver reports v0.0.0 and clients
# reject it.
V=k8s.io/component-base/version
T0=$SECONDS
go build -ldflags "-s -w -X $V.gitVersion=$K8S -X $V.gitMajor=1 -X $V.gitMinor=37 -X $V.gitTreeState=clean" \
  -o "$BIN.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
echo "TIME build kube-apiserver: $((SECONDS-T0))s" >&2
T0=$SECONDS
go build -ldflags "-s -w" -o "$BIN.tmp/etcd" go.etcd.io/etcd/server/v3
echo "TIME build etcd: $((SECONDS-T0))s" >&2
rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
echo "$BIN"
