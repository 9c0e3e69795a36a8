// Package deploy holds the tests of tcpmap's deployment artifacts: the
// Kubernetes manifests (deploy/kubernetes), the systemd unit
// (deploy/systemd) and the container image (deploy/Containerfile, make
// image). The manifests and the unit are checked against the daemon's own
// flag set (daemon.Options.AddFlags and Validate), so a renamed flag, a path
// outside every mount or a probe on the wrong port fails here instead of on
// a node. The image test builds the image and relays bytes through it under
// podman; it needs root, podman and runc, and skips without them except
// under CI=true, where a skip is a failure.
package deploy
