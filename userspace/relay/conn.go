package relay

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// relayConn is one client connection from accept to close.
type relayConn struct {
	srv    *Server
	client net.Conn // as accepted
	start  time.Time
	// clientAddr is the client as logs, stats and decisions know it: the
	// source of the PROXY header when the listener requires one, else the
	// socket peer.
	clientAddr net.Addr
	// prefix holds client bytes read past the PROXY header. The next
	// stage takes them: the ClientHello peek on a TLS listener, else the
	// client-to-upstream direction writes them first.
	prefix []byte

	// mu guards the fields a concurrent close (Server.Close, idle timer,
	// the other direction) must see.
	mu     sync.Mutex
	closed bool
	up     *net.TCPConn
	// spliced is set once the kernel datapath owns the sockets; closing
	// then goes through it.
	spliced   SplicedConn
	idleTimer *time.Timer

	down, upstream endpoint
	bs             *backendState
	idleTimeout    time.Duration
	// lastActive is the time of the last chunk moved, as nanoseconds
	// since start; only kept when idleTimeout > 0.
	lastActive atomic.Int64
	splice     bool
	// Deferred splice (relayThenSplice): the threshold, the bytes moved
	// so far both ways, whether the pause for the hand-off has begun, and
	// whether a direction ended first (then there is no hand-off).
	spliceAfter int64
	moved       atomic.Int64
	pausing     atomic.Bool
	ended       atomic.Bool
	// Per-direction state, each written only by its own direction and
	// read after wg.Wait. Keeping the LimitedReaders here saves two
	// allocations per connection on the splice path.
	lr [2]io.LimitedReader
	// bytesUp and bytesDn are the bytes this process moved each way;
	// atomic because Conns reads them while the directions write.
	bytesUp, bytesDn atomic.Int64
	// datapath says how the bytes move, for Conns: set once before
	// copying starts, read concurrently.
	datapath atomic.Pointer[datapathChoice]
	// spliceWhy says why a cleartext connection stayed in userspace
	// (no kernel datapath, or it declined).
	spliceWhy string
	wg        sync.WaitGroup
}

func newRelayConn(s *Server, nc net.Conn) *relayConn {
	c := &relayConn{srv: s, client: nc, start: time.Now(), clientAddr: nc.RemoteAddr()}
	c.down = endpoint{conn: nc, raw: nc}
	c.down.tcp, _ = nc.(*net.TCPConn)
	return c
}

// handle runs one connection: PROXY header, handshake, pick, circuit
// breaker, dial, PROXY header out, originate, copy. It is the
// connection's first goroutine and copies client→upstream itself.
func (s *Server) handle(c *relayConn) {
	// Once the kernel owns a connection, its end (not this function's)
	// releases what the connection holds; handedOff skips the defers.
	handedOff := false
	defer func() {
		if !handedOff {
			s.untrack(c)
		}
	}()
	t := s.table.Load()
	if t.listener.ProxyProtocol && !s.acceptProxy(c) {
		return
	}
	rs := &t.routes[0]
	if t.listener.Protocol == snapshot.ProtocolTLS {
		if rs = s.acceptTLS(c, t); rs == nil {
			return
		}
	}

	bs := rs.pick(s.rand)
	if bs == nil {
		s.stats.noBackend.Add(1)
		s.log.Warn("route has no backend", zap.String("host", rs.route.Host))
		c.close(false)
		return
	}
	c.bs = bs
	m := bs.counters
	if reason, ok := rs.breaker.admit(rs.limits); !ok {
		m.countRefusal(reason)
		s.logTrip(c, rs, reason)
		// Reset, as for a failed dial: no upstream will answer.
		c.close(true)
		return
	}
	m.total.Add(1)
	m.active.Add(1)
	defer func() {
		if !handedOff {
			m.active.Add(-1)
		}
	}()

	timeout := rs.route.ConnectTimeout
	if timeout <= 0 {
		timeout = snapshot.DefaultConnectTimeout
	}
	dialStart := time.Now()
	up, err := s.opts.Dialer.Dial(s.ctx, bs.backend.Upstream, timeout)
	if s.opts.ObserveDial != nil {
		s.opts.ObserveDial(bs.backend.Mapping, time.Since(dialStart), err)
	}
	rs.breaker.dialed(err == nil)
	if err != nil {
		if !c.isClosed() { // not a dial cut short by Close
			m.countRefusal(refuseDialFailed)
			s.log.Warn("upstream dial failed", zap.Stringer("mapping", bs.backend.Mapping),
				zap.String("upstream", bs.backend.Upstream.Address()), zap.Stringer("client", c.clientAddr), zap.Error(err))
		}
		// Reset, not FIN: a client that already sent a request must not
		// take an empty, clean end of stream for the answer.
		c.close(true)
		return
	}
	defer func() {
		if !handedOff {
			rs.breaker.release()
		}
	}()
	if !c.setUpstream(up) {
		return
	}
	c.upstream = endpoint{conn: up, raw: up, tcp: up}
	if v := bs.backend.SendProxyProtocol; v != 0 {
		// Before TLS: the upstream reads the header off the socket, then
		// speaks TLS.
		if err := c.sendProxyHeader(up, v, s.hsTimeout); err != nil {
			if !c.isClosed() {
				m.countRefusal(refuseDialFailed)
				s.log.Warn("sending PROXY header upstream failed", zap.Stringer("mapping", bs.backend.Mapping),
					zap.String("upstream", bs.backend.Upstream.Address()), zap.Stringer("client", c.clientAddr), zap.Error(err))
			}
			c.close(true)
			return
		}
	}
	if bs.clientTLS != nil {
		tc := tls.Client(up, bs.clientTLS)
		// The deadline bounds the handshake without the goroutine that
		// HandshakeContext starts for a cancellable context.
		up.SetDeadline(time.Now().Add(s.hsTimeout))
		if err := tc.Handshake(); err != nil {
			if !c.isClosed() {
				m.countRefusal(refuseUpstreamTLS)
				s.log.Warn("upstream TLS handshake failed", zap.Stringer("mapping", bs.backend.Mapping),
					zap.String("upstream", bs.backend.Upstream.Address()), zap.Stringer("client", c.clientAddr), zap.Error(err))
			}
			c.close(true)
			return
		}
		up.SetDeadline(time.Time{})
		c.upstream.conn, c.upstream.tls = tc, tc
	}

	if s.opts.Splicer != nil && c.down.tcp != nil && t.listener.SpliceEligible(bs.backend) {
		finish := func() {
			m.active.Add(-1)
			rs.breaker.release()
			s.untrack(c)
		}
		if s.opts.SpliceAfterBytes > 0 || s.opts.SpliceAfterTime > 0 {
			handedOff = s.relayThenSplice(c, rs.route.IdleTimeout, finish)
			if !handedOff {
				s.logClosed(c)
			}
			return
		}
		switch s.kernelSplice(c, up, rs.route.IdleTimeout, finish) {
		case spliceHanded:
			handedOff = true
			return
		case spliceFailed:
			return
		}
	}

	c.relay(rs.route.IdleTimeout)
	s.logClosed(c)
}

// logClosed logs the end of a connection relayed here.
func (s *Server) logClosed(c *relayConn) {
	if ce := s.log.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.Stringer("client", c.clientAddr), zap.Stringer("mapping", c.bs.backend.Mapping),
			zap.Int64("bytes_to_upstream", c.bytesUp.Load()), zap.Int64("bytes_to_client", c.bytesDn.Load()),
			zap.Duration("duration", time.Since(c.start)))
	}
}

// logTrip logs a circuit breaker refusal at info, at most once per route
// per tripLogInterval.
func (s *Server) logTrip(c *relayConn, rs *routeState, reason refusal) {
	trips, ok := rs.breaker.logTrip(time.Now())
	if !ok {
		return
	}
	s.log.Info("circuit breaker tripped: connection refused", zap.String("reason", string(reason)),
		zap.String("host", rs.route.Host), zap.Stringer("mapping", c.bs.backend.Mapping),
		zap.Stringer("client", c.clientAddr), zap.Int("trips", trips),
		zap.Int("max_connections", rs.limits.maxConnections),
		zap.Int("max_pending_requests", rs.limits.maxPending))
}

// acceptTLS peeks at the ClientHello, picks the route by its server name
// and terminates TLS with that route's config. It returns nil when the
// connection was closed: no route for the name (the client gets a fatal
// unrecognized_name alert) or a failed handshake. Peek and handshake
// together are bounded by the handshake timeout, which also closes
// clients that connect and send nothing.
func (s *Server) acceptTLS(c *relayConn, t *table) *routeState {
	c.client.SetDeadline(time.Now().Add(s.hsTimeout))
	src := &prefixConn{Conn: c.client, prefix: c.prefix}
	c.prefix = nil
	name, hello, err := peekHello(c.client, src)
	if err != nil {
		s.handshakeFailed(c, err, "")
		return nil
	}
	rs := t.routeForSNI(name)
	if rs == nil {
		// RFC 6066: a server that recognises no name may end the
		// handshake with a fatal unrecognized_name alert. Written by
		// hand because crypto/tls only sends internal_error for a
		// refusal from GetConfigForClient.
		if c.isClosed() {
			return nil
		}
		c.client.Write(unrecognizedNameAlert)
		if cw, ok := c.client.(closeWriter); ok {
			// FIN after the alert, so it is not lost to a reset.
			cw.CloseWrite()
		}
		s.handshakeFailed(c, nil, name)
		return nil
	}
	tc := tls.Server(&prefixConn{Conn: c.client, prefix: hello}, rs.tls)
	if err := tc.Handshake(); err != nil {
		s.handshakeFailed(c, err, name)
		return nil
	}
	c.client.SetDeadline(time.Time{})
	c.down.conn, c.down.tls = tc, tc
	return rs
}

// handshakeFailed closes a connection whose client handshake failed and,
// unless the server closed it, counts and logs why. A nil err means no
// route for sni.
func (s *Server) handshakeFailed(c *relayConn, err error, sni string) {
	if !c.close(false) {
		return
	}
	reason := reasonUnknownSNI
	if err != nil {
		reason = classifyHandshake(err)
	}
	s.stats.countHandshake(reason)
	lvl := zap.DebugLevel
	if reason == reasonRejected {
		// Policy failures (client certificate, version) are worth
		// seeing; scanners and dropped clients are not.
		lvl = zap.InfoLevel
	}
	if ce := s.log.Check(lvl, "client TLS handshake failed"); ce != nil {
		fields := []zap.Field{zap.String("reason", string(reason)), zap.Stringer("client", c.clientAddr)}
		if err != nil {
			fields = append(fields, zap.Error(err))
		}
		if reason == reasonUnknownSNI || sni != "" {
			fields = append(fields, zap.String("sni", sni))
		}
		ce.Write(fields...)
	}
}

// setUpstream records the upstream socket so close reaches it; false (and
// up closed) when the connection was closed during the dial.
func (c *relayConn) setUpstream(up *net.TCPConn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		up.Close()
		return false
	}
	c.up = up
	return true
}

func (c *relayConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// close closes both sockets once; later calls return false. With reset
// the sockets close with SO_LINGER 0, so each peer sees RST instead of
// FIN: a reset on one side is passed on as a reset, not as a clean end of
// stream the peer could mistake for a complete transfer.
func (c *relayConn) close(reset bool) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	up := c.up
	if c.idleTimer != nil {
		c.idleTimer.Stop()
	}
	sc := c.spliced
	c.mu.Unlock()
	if sc != nil {
		// The kernel datapath owns the sockets; it closes them and
		// reports the end through done.
		sc.Close(reset)
		return true
	}
	if reset {
		if c.down.tcp != nil {
			c.down.tcp.SetLinger(0)
		}
		if up != nil {
			up.SetLinger(0)
		}
	}
	// Closing the sockets, never the tls.Conns: tls.Conn.Close would try
	// to send close_notify, for up to 5 s on a stuck peer.
	c.client.Close()
	if up != nil {
		up.Close()
	}
	return true
}
