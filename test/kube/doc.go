// Package kube is tcpmap's end-to-end test against a real Kubernetes API
// server: TestMain builds kube-apiserver and etcd from the Go module proxy
// (apiserver/build.sh, cached by version), the test starts both on
// loopback, installs the CRDs of deploy/kubernetes/crds, and runs tcpmapd
// with --kubernetes as a real process against it.
//
// The tests need root (the binaries are cached under /var/cache/tcpmap) and
// go; without them they skip, except under CI=true where a skip would hide
// a broken setup and fails instead. A cold build of the servers takes about
// ten minutes, so run with a generous -timeout (e.g. 40m).
package kube
