// Package e2e runs the real tcpmapd binary in Linux network namespaces and
// checks, byte for byte, what reaches upstream servers and clients.
//
// The tests need root (network namespaces, veth pairs, /etc/netns). Without
// root they skip, except under CI=true where a skip would hide a broken
// pipeline, so they fail instead.
//
// Topology of every test: a client namespace and an upstream namespace, each
// joined to a proxy namespace by a veth pair. tcpmapd runs in the proxy
// namespace (through `ip netns exec`, which bind-mounts
// /etc/netns/<ns>/hosts over /etc/hosts, so the names used in Emissary's
// documentation resolve to addresses in the upstream namespace). Test
// servers and clients run in this process: a goroutine enters a namespace
// only while it creates its socket, since a socket keeps its namespace.
//
// Set TCPMAPD to a prebuilt binary to skip building cmd/tcpmapd.
package e2e
