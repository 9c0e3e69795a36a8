// Package api is tcpmapd's admin API: HTTP/JSON on a unix socket, read by
// tcpmapctl. The socket's file mode (0600) is the access control: whoever
// may open it may operate the node proxy.
package api

import "time"

// DefaultSocket is where tcpmapd listens and tcpmapctl connects.
const DefaultSocket = "/run/tcpmap/tcpmapd.sock"

// Status is what `tcpmapctl status` shows.
type Status struct {
	// Datapath is "kernel+userspace" (cleartext passthrough spliced by
	// eBPF) or "userspace"; DatapathReason says why.
	Datapath       string     `json:"datapath"`
	DatapathReason string     `json:"datapath_reason"`
	BPF            *BPFStatus `json:"bpf,omitempty"`
	Listeners      []Listener `json:"listeners"`
	Problems       []Problem  `json:"problems"`
	// Resources is the outcome of every resource of every source in the
	// last reload, as Kubernetes Events announce it for its own.
	Resources []Resource  `json:"resources"`
	Kernel    *KernelStat `json:"kernel,omitempty"`
}

// Resource is what the last reload made of one resource.
type Resource struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Source is "file:PATH:LINE", "api" or "kubernetes".
	Source string `json:"source"`
	// Outcome is "accepted", "rejected" or "ignored" (its ambassador_id
	// names another installation).
	Outcome  string   `json:"outcome"`
	Errors   []string `json:"errors,omitempty"`   // "field: reason", why it was rejected
	Warnings []string `json:"warnings,omitempty"` // "field: reason", accepted anyway
}

// BPFStatus describes the loaded BPF objects.
type BPFStatus struct {
	PinDir     string   `json:"pin_dir"`
	AttachMode string   `json:"attach_mode"` // "link" or "legacy"
	Maps       []string `json:"maps"`
	Programs   []string `json:"programs"`
	// Steering says how listeners get their connections: "sk_lookup"
	// (one shared socket per address family serves every port) or
	// "per-port sockets"; SteeringReason says why when sk_lookup is off.
	Steering       string `json:"steering"`
	SteeringReason string `json:"steering_reason,omitempty"`
}

// KernelStat summarises the kernel datapath.
type KernelStat struct {
	Pairs int `json:"pairs"` // spliced connections live now
}

// Listener is one running listener.
type Listener struct {
	Key      string    `json:"key"`
	Protocol string    `json:"protocol"`
	Proxy    bool      `json:"proxy_protocol,omitempty"`
	Active   int64     `json:"active"`
	Accepted uint64    `json:"accepted"`
	Mappings []Mapping `json:"mappings"`
	// Refusals before a mapping was chosen (PROXY header, TLS handshake,
	// unknown SNI), by reason.
	Refusals map[string]uint64 `json:"refusals,omitempty"`
	// BPF is the listener's entry in the pinned listeners map.
	BPF *ListenerBPF `json:"bpf,omitempty"`
}

// ListenerBPF is a listener as the pinned maps listeners and
// listener_stats hold it.
type ListenerBPF struct {
	ID uint32 `json:"id"`
	// Steered: the sk_lookup program assigns its connections to the
	// shared socket of their family.
	Steered   bool     `json:"steered"`
	Endpoints []string `json:"endpoints"` // the map's keys: address:port, 0.0.0.0/:: for any
	// SteeredConnections is listener_stats' count of connections the
	// program assigned.
	SteeredConnections uint64 `json:"steered_connections"`
}

// MappingBPF is a mapping as the pinned maps mappings and
// mapping_totals hold it.
type MappingBPF struct {
	ID         uint32   `json:"id"`
	ListenerID uint32   `json:"listener_id"`
	Weight     uint32   `json:"weight"`
	Upstream   string   `json:"upstream"`
	Flags      []string `json:"flags"` // splice, tls-terminate, tls-originate, proxy-out
	// Kernel totals of its spliced pairs, live and closed (mapping_totals).
	Bytes       uint64 `json:"bytes"`
	Packets     uint64 `json:"packets"`
	PassedBytes uint64 `json:"passed_bytes"`
}

// Mapping is one TCPMapping's counters on a listener.
type Mapping struct {
	Name   string `json:"name"` // "namespace/name"
	Active int64  `json:"active"`
	Total  uint64 `json:"total"`
	// Spliced counts connections handed to the kernel datapath.
	Spliced uint64 `json:"spliced"`
	// Bytes this process moved each way, and bytes the kernel moved.
	BytesToUpstream       uint64            `json:"bytes_to_upstream"`
	BytesToClient         uint64            `json:"bytes_to_client"`
	KernelBytesToUpstream uint64            `json:"kernel_bytes_to_upstream"`
	KernelBytesToClient   uint64            `json:"kernel_bytes_to_client"`
	Refusals              map[string]uint64 `json:"refusals,omitempty"`
	IdleClosed            uint64            `json:"idle_closed"`
	// BPF is the mapping's entry in the pinned mappings map.
	BPF *MappingBPF `json:"bpf,omitempty"`
}

// Problem is one configuration problem.
type Problem struct {
	Level    string `json:"level"`
	Resource string `json:"resource,omitempty"`
	Field    string `json:"field,omitempty"`
	Reason   string `json:"reason"`
	Origin   string `json:"origin,omitempty"`
	Message  string `json:"message"`
}

// Conn is one live connection, as `tcpmapctl conns` shows it.
type Conn struct {
	Listener string `json:"listener"`
	Client   string `json:"client"`
	Mapping  string `json:"mapping"`
	// Datapath is "kernel", "relay-splice", "relay-copy" or "setup";
	// Why says why.
	Datapath string        `json:"datapath"`
	Why      string        `json:"why"`
	Age      time.Duration `json:"age_ns"`
	// Bytes each way, whoever moved them (kernel or this process).
	BytesToUpstream int64 `json:"bytes_to_upstream"`
	BytesToClient   int64 `json:"bytes_to_client"`
	// Kernel details the kernel datapath's view of a spliced connection.
	Kernel *KernelConn `json:"kernel,omitempty"`
}

// KernelConn is a spliced connection as the BPF maps see it.
type KernelConn struct {
	ClientCookie   uint64 `json:"client_cookie"`
	UpstreamCookie uint64 `json:"upstream_cookie"`
	// Mechanism per direction: "sockmap" (redirected in the kernel) or
	// "userspace-pass" (congested: back-pressured through this process),
	// with the reason.
	ToUpstream Direction `json:"to_upstream"`
	ToClient   Direction `json:"to_client"`
}

// Direction is one direction of a spliced connection.
type Direction struct {
	Mechanism  string        `json:"mechanism"`
	Why        string        `json:"why,omitempty"`
	Bytes      uint64        `json:"bytes"`
	Packets    uint64        `json:"packets"`
	LastActive time.Duration `json:"last_active_ago_ns"`
}
