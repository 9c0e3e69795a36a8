package relay

import (
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/config"
)

// Splicer hands a cleartext connection's bytes to the kernel (the eBPF
// sockmap datapath). The relay still accepts, reads any PROXY header,
// picks the backend, applies the circuit breaker and dials; from then on
// the kernel moves the payload and the relay only hears how it ended.
type Splicer interface {
	// Splice takes ownership of both connections. done is called exactly
	// once, from any goroutine, when both directions have finished or the
	// connection was closed. On error nothing was taken: the relay copies
	// the bytes itself.
	Splice(client, upstream *net.TCPConn, info SpliceInfo, done func(SpliceResult)) (SplicedConn, error)
}

// ErrSpliceAborted, wrapped in a Splice error, means the hand-off failed
// after the kernel had taken bytes: the datapath has reset and closed both
// sockets, and the relay must not relay them.
var ErrSpliceAborted = errors.New("kernel splice aborted during hand-off")

// SpliceInfo is what the kernel datapath needs to know of a connection.
type SpliceInfo struct {
	Mapping     config.Ref
	IdleTimeout time.Duration
}

// SpliceResult is how a spliced connection ended.
type SpliceResult struct {
	// Bytes moved after the hand-off, each way, whoever moved them.
	BytesToUpstream, BytesToClient int64
	// Of those, the bytes that went through this process: a congested
	// direction is back-pressured through userspace.
	PassedToUpstream, PassedToClient int64
	IdleClosed                       bool
	Reset                            bool
}

// SplicedConn is a connection the kernel datapath owns.
type SplicedConn interface {
	// Close ends the connection now (with RST when reset); done follows.
	Close(reset bool)
}

// spliceOutcome says what became of an attempt to splice.
type spliceOutcome int

const (
	spliceDeclined spliceOutcome = iota // relay it here
	spliceHanded                        // the kernel owns it
	spliceFailed                        // closed; nothing more to do
)

// kernelSplice writes the client bytes already read (behind a PROXY
// header) to the upstream, so that they precede everything the kernel will
// move, then hands both sockets over. finish runs once the spliced
// connection has ended.
func (s *Server) kernelSplice(c *relayConn, up *net.TCPConn, idle time.Duration, finish func()) spliceOutcome {
	if len(c.prefix) > 0 {
		if err := c.writePrefix(up); err != nil {
			c.close(true)
			return spliceFailed
		}
	}
	m := c.bs.counters
	done := func(r SpliceResult) {
		// Bytes this process copied count as its own, so that the
		// kernel counters claim only what never left the kernel.
		c.count(true, r.PassedToUpstream)
		c.count(false, r.PassedToClient)
		m.kernelBytesToUpstream.Add(uint64(max(r.BytesToUpstream-r.PassedToUpstream, 0)))
		m.kernelBytesToClient.Add(uint64(max(r.BytesToClient-r.PassedToClient, 0)))
		if r.IdleClosed {
			m.idleClosed.Add(1)
		}
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		if ce := s.log.Check(zap.DebugLevel, "connection closed"); ce != nil {
			// The kernel's counts are of the bytes after the hand-off;
			// before_handoff are the ones this process relayed first
			// (a PROXY prefix, or a deferred hand-off's first bytes).
			ce.Write(zap.Stringer("client", c.clientAddr), zap.Stringer("mapping", c.bs.backend.Mapping),
				zap.String("datapath", "kernel"), zap.Int64("bytes_to_upstream", r.BytesToUpstream),
				zap.Int64("bytes_to_client", r.BytesToClient),
				zap.Int64("before_handoff_to_upstream", c.bytesUp.Load()-r.PassedToUpstream),
				zap.Int64("before_handoff_to_client", c.bytesDn.Load()-r.PassedToClient),
				zap.Bool("idle_closed", r.IdleClosed), zap.Bool("reset", r.Reset), zap.Duration("duration", time.Since(c.start)))
		}
		finish()
	}
	sc, err := s.opts.Splicer.Splice(c.down.tcp, up, SpliceInfo{Mapping: c.bs.backend.Mapping, IdleTimeout: idle}, done)
	if errors.Is(err, ErrSpliceAborted) {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		m.countRefusal(refuseDialFailed)
		s.log.Warn("kernel splice hand-off aborted; connection reset", zap.Stringer("mapping", c.bs.backend.Mapping),
			zap.Stringer("client", c.clientAddr), zap.Error(err))
		return spliceFailed
	}
	if err != nil {
		m.spliceDeclined.Add(1)
		c.spliceWhy = "kernel splice declined: " + err.Error()
		if ce := s.log.Check(zap.DebugLevel, "kernel splice declined; relaying in userspace"); ce != nil {
			ce.Write(zap.Stringer("mapping", c.bs.backend.Mapping), zap.Error(err))
		}
		return spliceDeclined
	}
	m.spliced.Add(1)
	c.setDatapath(DatapathKernel, "cleartext passthrough spliced by the kernel")
	c.mu.Lock()
	closed := c.closed
	if !closed {
		c.spliced = sc
	}
	c.mu.Unlock()
	if closed { // Server.Close raced the hand-off: end it here
		sc.Close(false)
	}
	return spliceHanded
}
