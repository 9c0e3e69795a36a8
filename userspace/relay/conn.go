package relay

import (
	"crypto/tls"
	"errors"
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

	// mu guards the fields a concurrent close (Server.Close, idle timer,
	// the other direction) must see.
	mu        sync.Mutex
	closed    bool
	up        *net.TCPConn
	idleTimer *time.Timer

	down, upstream endpoint
	bs             *backendState
	idleTimeout    time.Duration
	// lastActive is the time of the last chunk moved, as nanoseconds
	// since start; only kept when idleTimeout > 0.
	lastActive atomic.Int64
	splice     bool
	// Per-direction state, each written only by its own direction and
	// read after wg.Wait. Keeping the LimitedReaders here saves two
	// allocations per connection on the splice path.
	lr               [2]io.LimitedReader
	bytesUp, bytesDn int64
	wg               sync.WaitGroup
}

func newRelayConn(s *Server, nc net.Conn) *relayConn {
	c := &relayConn{srv: s, client: nc, start: time.Now()}
	c.down = endpoint{conn: nc, raw: nc}
	c.down.tcp, _ = nc.(*net.TCPConn)
	return c
}

// handle runs one connection: handshake, pick, dial, originate, copy. It
// is the connection's first goroutine and copies client→upstream itself.
func (s *Server) handle(c *relayConn) {
	defer s.untrack(c)
	t := s.table.Load()
	rs := &t.routes[0]
	if t.listener.Protocol == snapshot.ProtocolTLS {
		tc := s.serverHandshake(c, t)
		if tc == nil {
			return
		}
		if rs = t.routeForSNI(tc.ConnectionState().ServerName); rs == nil {
			// configForClient accepted this name on the same table.
			c.close(false)
			return
		}
		c.down.conn, c.down.tls = tc, tc
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
	m.total.Add(1)
	m.active.Add(1)
	defer m.active.Add(-1)

	timeout := rs.route.ConnectTimeout
	if timeout <= 0 {
		timeout = snapshot.DefaultConnectTimeout
	}
	up, err := s.opts.Dialer.Dial(s.ctx, bs.backend.Upstream, timeout)
	if err != nil {
		if !c.isClosed() { // not a dial cut short by Close
			m.dialFailures.Add(1)
			s.log.Warn("upstream dial failed", zap.Stringer("mapping", bs.backend.Mapping),
				zap.String("upstream", bs.backend.Upstream.Address()), zap.Error(err))
		}
		// Reset, not FIN: a client that already sent a request must not
		// take an empty, clean end of stream for the answer.
		c.close(true)
		return
	}
	if !c.setUpstream(up) {
		return
	}
	c.upstream = endpoint{conn: up, raw: up, tcp: up}
	if bs.clientTLS != nil {
		tc := tls.Client(up, bs.clientTLS)
		// The deadline bounds the handshake without the goroutine that
		// HandshakeContext starts for a cancellable context.
		up.SetDeadline(time.Now().Add(s.hsTimeout))
		if err := tc.Handshake(); err != nil {
			if !c.isClosed() {
				m.handshakeFailures.Add(1)
				s.log.Warn("upstream TLS handshake failed", zap.Stringer("mapping", bs.backend.Mapping),
					zap.String("upstream", bs.backend.Upstream.Address()), zap.Error(err))
			}
			c.close(true)
			return
		}
		up.SetDeadline(time.Time{})
		c.upstream.conn, c.upstream.tls = tc, tc
	}

	c.relay(rs.route.IdleTimeout)
	if ce := s.log.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.Stringer("client", c.client.RemoteAddr()), zap.Stringer("mapping", bs.backend.Mapping),
			zap.Int64("bytes_to_upstream", c.bytesUp), zap.Int64("bytes_to_client", c.bytesDn),
			zap.Duration("duration", time.Since(c.start)))
	}
}

// serverHandshake terminates the client's TLS, nil when it failed (the
// connection is then closed and the failure counted).
func (s *Server) serverHandshake(c *relayConn, t *table) *tls.Conn {
	tc := tls.Server(c.client, t.serverTLS)
	// A deadline rather than HandshakeContext: it also closes clients that
	// connect and send nothing, and needs no extra goroutine.
	c.client.SetDeadline(time.Now().Add(s.hsTimeout))
	err := tc.Handshake()
	if err == nil {
		c.client.SetDeadline(time.Time{})
		return tc
	}
	if c.close(false) {
		reason := classifyHandshake(err)
		s.stats.countHandshake(reason)
		lvl := zap.DebugLevel
		if reason == reasonRejected {
			// Policy failures (client certificate, version) are worth
			// seeing; scanners and dropped clients are not.
			lvl = zap.InfoLevel
		}
		if ce := s.log.Check(lvl, "client TLS handshake failed"); ce != nil {
			fields := []zap.Field{zap.String("reason", string(reason)),
				zap.Stringer("client", c.client.RemoteAddr()), zap.Error(err)}
			var sni *unknownSNIError
			if errors.As(err, &sni) {
				fields = append(fields, zap.String("sni", sni.name))
			}
			ce.Write(fields...)
		}
	}
	return nil
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
	c.mu.Unlock()
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
