package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Stats is a point-in-time copy of a Server's counters. It is plain,
// comparable data (apart from its maps) meant to be turned into metrics
// and admin API answers; field names and the reason labels returned by the
// ByReason methods are stable.
//
// Byte counters move while a connection is open: per read/write chunk on
// the buffered path (TLS on either side, or an idle timeout), per
// spliceChunk (1 MiB) or at the end of a direction on the cleartext splice
// path, where the kernel moves the bytes and the relay only learns the
// count when a splice call returns.
type Stats struct {
	Listener ListenerStats
	// Routes holds one entry per route in the current table, by route
	// host ("" on a TCP listener). Counts of a route survive Update while
	// a route with the same host stays.
	Routes map[string]RouteStats
	// Mappings holds one entry per TCPMapping in the current routes.
	// Counters of a mapping survive Update while the mapping stays.
	Mappings map[config.Ref]MappingStats
}

// ListenerStats counts everything that happens on one listener, including
// connections that never reached a mapping.
type ListenerStats struct {
	Accepted     uint64 // connections accepted
	Active       int64  // connections open now, handshaking included
	AcceptErrors uint64 // temporary accept errors (EMFILE, ...) backed off

	BytesToUpstream uint64
	BytesToClient   uint64

	// PROXY protocol header failures, on listeners that require one.
	ProxyMissing uint64 // the first bytes were not a PROXY signature (or none came)
	ProxyInvalid uint64 // a PROXY signature with a malformed header, or the client left mid-header
	ProxyTimeout uint64 // no complete header within Options.ProxyHeaderTimeout

	// Client TLS handshake failures by reason.
	HandshakeTimeout      uint64 // silence or too slow: HandshakeTimeout passed
	HandshakeClientClosed uint64 // client closed or reset mid-handshake
	HandshakeNotTLS       uint64 // first bytes were not a TLS handshake record
	UnknownSNI            uint64 // no route for the server name (or no SNI and no "*")
	HandshakeRejected     uint64 // any other TLS failure: version, cipher, client certificate, oversized hello

	// NoBackend counts connections whose route had no backend to pick.
	NoBackend uint64
}

// ByReason returns the connections closed before reaching a route, by
// reason label: proxy_missing, proxy_invalid, proxy_timeout,
// handshake_timeout, handshake_client_closed, handshake_not_tls,
// unknown_sni, handshake_rejected, no_backend.
func (s ListenerStats) ByReason() map[string]uint64 {
	return map[string]uint64{
		"proxy_missing":           s.ProxyMissing,
		"proxy_invalid":           s.ProxyInvalid,
		"proxy_timeout":           s.ProxyTimeout,
		"handshake_timeout":       s.HandshakeTimeout,
		"handshake_client_closed": s.HandshakeClientClosed,
		"handshake_not_tls":       s.HandshakeNotTLS,
		"unknown_sni":             s.UnknownSNI,
		"handshake_rejected":      s.HandshakeRejected,
		"no_backend":              s.NoBackend,
	}
}

// RouteStats is the circuit breaker state of one route (one canary group:
// every mapping with the same host on the listener).
type RouteStats struct {
	// Active counts upstream connections from dial success until close.
	Active int64
	// Pending counts connections whose upstream dial is in progress.
	Pending int64
	// The effective limits and priority in force.
	MaxConnections     int
	MaxPendingRequests int
	Priority           string
	// Trips count connections refused by each limit.
	MaxConnectionsTrips     uint64
	MaxPendingRequestsTrips uint64
}

// MappingStats counts the connections that picked one TCPMapping.
type MappingStats struct {
	// Active counts connections open now: upstream dial in progress or
	// relaying.
	Active int64
	// Total counts connections admitted by the circuit breakers (the
	// dial was attempted); refusals are not in it.
	Total uint64
	// BytesToUpstream and BytesToClient are the bytes this process moved
	// (relayed connections; of spliced ones the hand-off bytes and what a
	// congested direction passed through userspace).
	BytesToUpstream uint64
	BytesToClient   uint64
	// Spliced counts connections handed to the kernel datapath;
	// SpliceDeclined those it refused (relayed here instead).
	Spliced, SpliceDeclined uint64
	// KernelBytesToUpstream and KernelBytesToClient are the bytes that
	// never left the kernel, added when each spliced connection ends.
	KernelBytesToUpstream, KernelBytesToClient uint64
	// Refusals counts connections closed without relaying, by reason.
	Refusals Refusals
	// IdleClosed counts connections (relayed or spliced) closed by the
	// route's idle timeout.
	IdleClosed uint64
}

// Refusals counts connections a mapping picked but never relayed.
type Refusals struct {
	MaxConnections     uint64 // circuit breaker: route at max_connections
	MaxPendingRequests uint64 // circuit breaker: route at max_pending_requests
	DialFailed         uint64 // upstream dial (or the PROXY header sent to it) failed
	UpstreamTLSFailed  uint64 // TLS handshake to the upstream failed
}

// ByReason returns the refusals by reason label: max_connections,
// max_pending_requests, dial_failed, upstream_tls_failed.
func (r Refusals) ByReason() map[string]uint64 {
	return map[string]uint64{
		string(refuseMaxConnections): r.MaxConnections,
		string(refuseMaxPending):     r.MaxPendingRequests,
		string(refuseDialFailed):     r.DialFailed,
		string(refuseUpstreamTLS):    r.UpstreamTLSFailed,
	}
}

// refusal names why a picked mapping was not relayed; the names appear in
// logs and as metric labels.
type refusal string

const (
	refuseMaxConnections refusal = "max_connections"
	refuseMaxPending     refusal = "max_pending_requests"
	refuseDialFailed     refusal = "dial_failed"
	refuseUpstreamTLS    refusal = "upstream_tls_failed"
)

type listenerCounters struct {
	accepted, acceptErrors                 atomic.Uint64
	active                                 atomic.Int64
	bytesToUpstream, bytesToClient         atomic.Uint64
	proxyMissing, proxyInvalid, proxyTime  atomic.Uint64
	hsTimeout, hsClosed, hsNotTLS, hsNoSNI atomic.Uint64
	hsRejected, noBackend                  atomic.Uint64
}

func (c *listenerCounters) snapshot() ListenerStats {
	return ListenerStats{
		Accepted:              c.accepted.Load(),
		Active:                c.active.Load(),
		AcceptErrors:          c.acceptErrors.Load(),
		BytesToUpstream:       c.bytesToUpstream.Load(),
		BytesToClient:         c.bytesToClient.Load(),
		ProxyMissing:          c.proxyMissing.Load(),
		ProxyInvalid:          c.proxyInvalid.Load(),
		ProxyTimeout:          c.proxyTime.Load(),
		HandshakeTimeout:      c.hsTimeout.Load(),
		HandshakeClientClosed: c.hsClosed.Load(),
		HandshakeNotTLS:       c.hsNotTLS.Load(),
		UnknownSNI:            c.hsNoSNI.Load(),
		HandshakeRejected:     c.hsRejected.Load(),
		NoBackend:             c.noBackend.Load(),
	}
}

type mappingCounters struct {
	active                         atomic.Int64
	total                          atomic.Uint64
	bytesToUpstream, bytesToClient atomic.Uint64
	refusedMaxConn, refusedPending atomic.Uint64
	dialFailed, upstreamTLSFailed  atomic.Uint64
	idleClosed                     atomic.Uint64
	// Kernel datapath: connections handed to it, attempts it declined,
	// and the bytes it moved (counted when each connection ends).
	spliced, spliceDeclined                    atomic.Uint64
	kernelBytesToUpstream, kernelBytesToClient atomic.Uint64
	// warnedUnverified makes the "upstream certificate not verified"
	// warning appear once per mapping, not once per Update.
	warnedUnverified atomic.Bool
}

func (c *mappingCounters) snapshot() MappingStats {
	return MappingStats{
		Active:          c.active.Load(),
		Total:           c.total.Load(),
		BytesToUpstream: c.bytesToUpstream.Load(),
		BytesToClient:   c.bytesToClient.Load(),
		Refusals: Refusals{
			MaxConnections:     c.refusedMaxConn.Load(),
			MaxPendingRequests: c.refusedPending.Load(),
			DialFailed:         c.dialFailed.Load(),
			UpstreamTLSFailed:  c.upstreamTLSFailed.Load(),
		},
		IdleClosed:            c.idleClosed.Load(),
		Spliced:               c.spliced.Load(),
		SpliceDeclined:        c.spliceDeclined.Load(),
		KernelBytesToUpstream: c.kernelBytesToUpstream.Load(),
		KernelBytesToClient:   c.kernelBytesToClient.Load(),
	}
}

func (c *mappingCounters) countRefusal(r refusal) {
	switch r {
	case refuseMaxConnections:
		c.refusedMaxConn.Add(1)
	case refuseMaxPending:
		c.refusedPending.Add(1)
	case refuseDialFailed:
		c.dialFailed.Add(1)
	case refuseUpstreamTLS:
		c.upstreamTLSFailed.Add(1)
	}
}

// handshakeReason names why a client handshake failed; the names appear in
// logs.
type handshakeReason string

const (
	reasonTimeout      handshakeReason = "timeout"
	reasonClientClosed handshakeReason = "client closed"
	reasonNotTLS       handshakeReason = "not TLS"
	reasonUnknownSNI   handshakeReason = "unknown SNI"
	reasonRejected     handshakeReason = "rejected"
)

// classifyHandshake sorts a client handshake error into a reason.
func classifyHandshake(err error) handshakeReason {
	var rh tls.RecordHeaderError
	switch {
	case errors.Is(err, errNotHandshake):
		return reasonNotTLS
	case errors.Is(err, os.ErrDeadlineExceeded):
		return reasonTimeout
	case errors.As(err, &rh):
		return reasonNotTLS
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return reasonClientClosed
	}
	return reasonRejected
}

func (c *listenerCounters) countHandshake(r handshakeReason) {
	switch r {
	case reasonTimeout:
		c.hsTimeout.Add(1)
	case reasonClientClosed:
		c.hsClosed.Add(1)
	case reasonNotTLS:
		c.hsNotTLS.Add(1)
	case reasonUnknownSNI:
		c.hsNoSNI.Add(1)
	default:
		c.hsRejected.Add(1)
	}
}

// proxyReason names why a PROXY protocol header was refused; the names
// appear in logs.
type proxyReason string

const (
	proxyMissing proxyReason = "missing"
	proxyInvalid proxyReason = "invalid"
	proxyTimeout proxyReason = "timeout"
)

func (c *listenerCounters) countProxy(r proxyReason) {
	switch r {
	case proxyMissing:
		c.proxyMissing.Add(1)
	case proxyTimeout:
		c.proxyTime.Add(1)
	default:
		c.proxyInvalid.Add(1)
	}
}
