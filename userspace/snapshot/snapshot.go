// Package snapshot holds the resolved listener table: the one value that
// passes from configuration (config, resolve) to the datapaths (relay, and
// later the BPF splice) and the manager.
//
// A snapshot is plain data: comparing two listeners with reflect.DeepEqual
// tells whether anything about them changed. Every decision about where a
// connection goes is a method here, so that the userspace relay and the
// kernel splice decide identically.
package snapshot

import (
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Protocol is what a listener speaks to clients.
type Protocol string

const (
	// ProtocolTCP passes bytes through untouched; one route (one canary set).
	ProtocolTCP Protocol = "TCP"
	// ProtocolTLS terminates TLS and routes by SNI.
	ProtocolTLS Protocol = "TLS"
)

// Snapshot is the resolved configuration: every listener to open.
type Snapshot struct {
	Listeners []Listener `json:"listeners"`
}

// Listener is one listening socket: an (address, port) pair and the routes
// served on it.
type Listener struct {
	Address  string   `json:"address,omitempty"` // IP literal; "" means all addresses
	Port     int      `json:"port"`
	Protocol Protocol `json:"protocol"`
	// ProxyProtocol requires a PROXY v1/v2 header before anything else.
	ProxyProtocol bool `json:"proxy_protocol,omitempty"`
	// Source is the Listener resource that configured the port, or nil for
	// the internal listener created for a TCPMapping's port.
	Source *config.Ref `json:"source,omitempty"`
	// Routes: for TCP exactly one (Host ""); for TLS one per SNI host
	// pattern, most specific first.
	Routes []Route `json:"routes"`
}

// Key identifies the listener: "address:port", with "*" for all addresses.
func (l *Listener) Key() string {
	a := l.Address
	if a == "" {
		a = "*"
	}
	return net.JoinHostPort(a, strconv.Itoa(l.Port))
}

// BindAddress is what to pass to net.Listen.
func (l *Listener) BindAddress() string {
	return net.JoinHostPort(l.Address, strconv.Itoa(l.Port))
}

// Route is one canary set: every TCPMapping with the same (address, port,
// host). Settings that members must agree on live here; what may differ per
// member lives in Backend.
type Route struct {
	// Host is the SNI pattern ("example.com", "*.example.com", "*") on a TLS
	// listener, "" on a TCP listener.
	Host string `json:"host,omitempty"`
	// Termination is the server-side TLS for this SNI; nil on TCP listeners.
	Termination *TLSServer `json:"termination,omitempty"`
	// Backends share traffic by Weight.
	Backends []Backend `json:"backends"`
	// IdleTimeout closes a connection with no bytes either way for this
	// long; 0 means none.
	IdleTimeout time.Duration `json:"idle_timeout,omitempty"`
	// ConnectTimeout bounds the upstream dial.
	ConnectTimeout time.Duration `json:"connect_timeout"`
	// CircuitBreaker limits connections for the route.
	CircuitBreaker CircuitBreaker `json:"circuit_breaker"`
}

// Backend is one TCPMapping of a route: where to send bytes and how.
type Backend struct {
	Mapping config.Ref `json:"mapping"`
	// Weight is the share of the route's connections, an integer out of
	// the route's total weight (normally 100).
	Weight   int      `json:"weight"`
	Upstream Upstream `json:"upstream"`
	// Origination is the client-side TLS to the upstream; nil for
	// cleartext.
	Origination *TLSClient `json:"origination,omitempty"`
	// SendProxyProtocol is 0 (none), 1 or 2: the PROXY header version sent
	// to the upstream (tcpmap.io/send-proxy-protocol annotation).
	SendProxyProtocol int `json:"send_proxy_protocol,omitempty"`
}

// Upstream is the service to dial.
type Upstream struct {
	// Service is the TCPMapping's service as written.
	Service string `json:"service"`
	// Host is an IP literal or a DNS name to resolve.
	Host       string `json:"host"`
	Port       int    `json:"port"`
	EnableIPv4 bool   `json:"enable_ipv4"`
	EnableIPv6 bool   `json:"enable_ipv6"`
}

// Address returns "host:port".
func (u Upstream) Address() string {
	return net.JoinHostPort(u.Host, strconv.Itoa(u.Port))
}

// TLSServer is what a TLS listener presents for one SNI pattern.
type TLSServer struct {
	// Source is the Host or TLSContext that supplied the certificate.
	Source config.Ref `json:"source"`
	// CertPEM and KeyPEM are the server certificate chain and key.
	CertPEM []byte `json:"-"`
	KeyPEM  []byte `json:"-"`
	// ClientCAPEM, when set, verifies client certificates.
	ClientCAPEM  []byte `json:"-"`
	CertRequired bool   `json:"cert_required,omitempty"`
	TLSParams
}

// TLSClient is how to originate TLS to an upstream.
type TLSClient struct {
	// Context is the TLSContext used, nil for a bare https:// service.
	Context *config.Ref `json:"context,omitempty"`
	// CertPEM and KeyPEM are the client certificate offered, if any.
	CertPEM []byte `json:"-"`
	KeyPEM  []byte `json:"-"`
	// RootCAPEM verifies the upstream certificate; without it the upstream
	// is not verified (and the relay logs so once per mapping).
	RootCAPEM []byte `json:"-"`
	// ServerName is the SNI sent, "" for none.
	ServerName string `json:"server_name,omitempty"`
	TLSParams
}

// TLSParams are the protocol settings shared by both sides of TLS.
type TLSParams struct {
	MinVersion   uint16        `json:"min_version,omitempty"` // 0: Go's default
	MaxVersion   uint16        `json:"max_version,omitempty"`
	CipherSuites []uint16      `json:"cipher_suites,omitempty"`
	Curves       []tls.CurveID `json:"curves,omitempty"`
	ALPN         []string      `json:"alpn,omitempty"`
}

// CircuitBreaker is the effective circuit breaker of a route. Defaults are
// Envoy's: 1024 connections, 1024 pending.
type CircuitBreaker struct {
	Priority           string `json:"priority"`
	MaxConnections     int    `json:"max_connections"`
	MaxPendingRequests int    `json:"max_pending_requests"`
}

// Default limits, as Envoy applies them when Emissary sets none.
const (
	DefaultMaxConnections     = 1024
	DefaultMaxPendingRequests = 1024
	DefaultConnectTimeout     = 5 * time.Second
)

// SpliceEligible reports whether bytes of this backend on listener l may be
// moved by the kernel: cleartext on both sides.
func (l *Listener) SpliceEligible(b *Backend) bool {
	return l.Protocol == ProtocolTCP && b.Origination == nil
}

// TotalWeight is the sum of the backends' weights.
func (r *Route) TotalWeight() int {
	t := 0
	for _, b := range r.Backends {
		t += b.Weight
	}
	return t
}

// Pick chooses the backend for a connection given x, uniformly drawn from
// [0, TotalWeight()). Each backend owns a half-open slice of that range
// proportional to its weight, so the split is exact in expectation.
func (r *Route) Pick(x int) *Backend {
	for i := range r.Backends {
		x -= r.Backends[i].Weight
		if x < 0 {
			return &r.Backends[i]
		}
	}
	if len(r.Backends) == 0 {
		return nil
	}
	return &r.Backends[len(r.Backends)-1]
}

// String is a short description for logs.
func (l *Listener) String() string {
	return fmt.Sprintf("%s/%s", l.Key(), l.Protocol)
}
