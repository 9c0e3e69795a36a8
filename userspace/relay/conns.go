package relay

import (
	"net"
	"time"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Datapath labels, as Conns reports them.
const (
	// DatapathRelaySplice: relayed here, bytes moved by splice(2) without
	// entering this process's memory.
	DatapathRelaySplice = "relay-splice"
	// DatapathRelayCopy: relayed here through a userspace buffer.
	DatapathRelayCopy = "relay-copy"
	// DatapathKernel: handed to the kernel datapath (the eBPF splice).
	DatapathKernel = "kernel"
	// DatapathSetup: PROXY header, TLS handshake or dial in progress.
	DatapathSetup = "setup"
)

// ConnInfo describes one live connection.
type ConnInfo struct {
	Listener string
	Client   net.Addr // the PROXY header's source when there was one
	Mapping  config.Ref
	Started  time.Time
	// Datapath is one of the Datapath labels; Why says why this one.
	Datapath string
	Why      string
	// Bytes this process moved each way (for kernel connections only the
	// hand-off bytes; the kernel datapath reports the rest).
	BytesToUpstream, BytesToClient int64
	// Spliced is the kernel datapath's handle for a DatapathKernel
	// connection, to join with its own per-connection view.
	Spliced SplicedConn
}

// Conns lists the listener's live connections.
func (s *Server) Conns() []ConnInfo {
	s.mu.Lock()
	conns := make([]*relayConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	out := make([]ConnInfo, 0, len(conns))
	for _, c := range conns {
		info := ConnInfo{
			Listener:        s.key,
			Client:          c.clientAddr,
			Started:         c.start,
			Datapath:        DatapathSetup,
			BytesToUpstream: c.bytesUp.Load(),
			BytesToClient:   c.bytesDn.Load(),
		}
		if d := c.datapath.Load(); d != nil {
			info.Datapath, info.Why = d.label, d.why
		}
		c.mu.Lock()
		if c.bs != nil {
			info.Mapping = c.bs.backend.Mapping
		}
		info.Spliced = c.spliced
		c.mu.Unlock()
		out = append(out, info)
	}
	return out
}

// datapathChoice is how a connection's bytes move, and why.
type datapathChoice struct{ label, why string }

// setDatapath records the connection's datapath once it is chosen.
func (c *relayConn) setDatapath(label, why string) {
	c.datapath.Store(&datapathChoice{label: label, why: why})
}

// relayDatapath says how relay will move the bytes, and why.
func (c *relayConn) relayDatapath(idle time.Duration) (label, why string) {
	switch {
	case c.down.tls != nil:
		return DatapathRelayCopy, "TLS terminated here"
	case c.upstream.tls != nil:
		return DatapathRelayCopy, "TLS originated here"
	case idle > 0:
		return DatapathRelayCopy, "idle timeout needs to see activity"
	case c.down.tcp == nil || c.upstream.tcp == nil:
		return DatapathRelayCopy, "not a TCP socket"
	}
	if c.spliceWhy != "" {
		return DatapathRelaySplice, c.spliceWhy
	}
	return DatapathRelaySplice, "cleartext both ways"
}
