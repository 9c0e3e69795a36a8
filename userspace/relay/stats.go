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

// Stats is a point-in-time copy of a Server's counters.
//
// Byte counters move while a connection is open: per read/write chunk on
// the buffered path (TLS on either side, or an idle timeout), per
// spliceChunk (1 MiB) or at the end of a direction on the cleartext splice
// path, where the kernel moves the bytes and the relay only learns the
// count when a splice call returns.
type Stats struct {
	Listener ListenerStats
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

	// Client TLS handshake failures by reason.
	HandshakeTimeout      uint64 // silence or too slow: HandshakeTimeout passed
	HandshakeClientClosed uint64 // client closed or reset mid-handshake
	HandshakeNotTLS       uint64 // first bytes were not a TLS record
	UnknownSNI            uint64 // no route for the server name (or no SNI and no "*")
	HandshakeRejected     uint64 // any other TLS failure: version, cipher, client certificate

	// NoBackend counts connections whose route had no backend to pick.
	NoBackend uint64
}

// MappingStats counts the connections that picked one TCPMapping.
type MappingStats struct {
	Active          int64  // open now
	Total           uint64 // picked, dial failures included
	BytesToUpstream uint64
	BytesToClient   uint64
	// HandshakeFailures counts failed TLS handshakes to the upstream.
	HandshakeFailures uint64
	DialFailures      uint64
}

type listenerCounters struct {
	accepted, acceptErrors                 atomic.Uint64
	active                                 atomic.Int64
	bytesToUpstream, bytesToClient         atomic.Uint64
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
	handshakeFailures              atomic.Uint64
	dialFailures                   atomic.Uint64
	// warnedUnverified makes the "upstream certificate not verified"
	// warning appear once per mapping, not once per Update.
	warnedUnverified atomic.Bool
}

func (c *mappingCounters) snapshot() MappingStats {
	return MappingStats{
		Active:            c.active.Load(),
		Total:             c.total.Load(),
		BytesToUpstream:   c.bytesToUpstream.Load(),
		BytesToClient:     c.bytesToClient.Load(),
		HandshakeFailures: c.handshakeFailures.Load(),
		DialFailures:      c.dialFailures.Load(),
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
	var sni *unknownSNIError
	switch {
	case errors.As(err, &sni):
		return reasonUnknownSNI
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
