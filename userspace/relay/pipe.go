package relay

import (
	"crypto/tls"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
)

// closeWriter is a connection that can end its write side alone (half
// close) and keep reading.
type closeWriter interface {
	CloseWrite() error
}

var (
	_ closeWriter = (*net.TCPConn)(nil)
	_ closeWriter = (*net.UnixConn)(nil)
	_ closeWriter = (*tls.Conn)(nil)
)

// endpoint is one side of a relayed connection.
type endpoint struct {
	conn net.Conn     // what bytes go through: the *tls.Conn or raw
	raw  net.Conn     // the socket
	tcp  *net.TCPConn // raw when it is TCP: splice and SO_LINGER need it
	tls  *tls.Conn    // non-nil when this side speaks TLS
}

// closeWrite ends dst's write side after its source reached EOF. On TLS
// that is close_notify, then FIN on the socket underneath, since
// tls.Conn.CloseWrite does not shut the socket down and the peer would
// otherwise never see end of stream.
func closeWrite(e *endpoint) {
	if e.tls != nil {
		_ = e.tls.CloseWrite()
	}
	if cw, ok := e.raw.(closeWriter); ok {
		_ = cw.CloseWrite()
	}
}

const (
	// spliceChunk is how much one splice call may move before the byte
	// counters are updated.
	spliceChunk = 1 << 20
	// bufSize holds two full TLS records.
	bufSize = 32 << 10
)

var bufPool = sync.Pool{New: func() any {
	b := make([]byte, bufSize)
	return &b
}}

// relay copies both ways until both directions end, then closes.
//
// A direction that reaches EOF half-closes its destination and leaves the
// other direction running. A direction that fails (reset, write to a
// closed peer) closes both sides with reset at once.
//
// Cleartext TCP on both sides without an idle timeout takes the splice
// path: the kernel moves the bytes and the relay never sees them. An idle
// timeout needs to see activity, so it forces the buffered path; that
// costs copies through userspace, which is acceptable for the few routes
// that set idle_timeout_ms (extending socket deadlines instead would keep
// splice but cannot tell one direction's silence from the other's
// activity without extra wakeups). The idle timer itself does not care
// which path or protocol moves the bytes: every chunk read or written in
// either direction resets it, so TLS on either side is covered the same
// way and a connection with bytes flowing is never closed for idleness.
func (c *relayConn) relay(idle time.Duration) {
	c.splice = idle <= 0 && c.down.tls == nil && c.upstream.tls == nil &&
		c.down.tcp != nil && c.upstream.tcp != nil
	c.setDatapath(c.relayDatapath(idle))
	if idle > 0 {
		c.startIdle(idle)
	}
	c.wg.Add(1)
	go c.pumpToClient()
	c.pump(&c.upstream, &c.down, true)
	c.wg.Wait()
	c.close(false)
}

func (c *relayConn) pumpToClient() {
	defer c.wg.Done()
	c.pump(&c.down, &c.upstream, false)
}

// pump copies src to dst and passes the end on: EOF as half-close, an
// error as reset of both sides.
func (c *relayConn) pump(dst, src *endpoint, toUpstream bool) {
	var err error
	if toUpstream && len(c.prefix) > 0 {
		err = c.writePrefix(dst.conn)
	}
	if err == nil {
		if c.splice {
			lr := &c.lr[0]
			if !toUpstream {
				lr = &c.lr[1]
			}
			err = c.spliceCopy(dst.tcp, src.tcp, toUpstream, lr)
		} else {
			err = c.bufferCopy(dst.conn, src.conn, toUpstream)
		}
	}
	if err == nil {
		closeWrite(dst)
		return
	}
	if c.close(true) {
		if ce := c.srv.log.Check(zap.DebugLevel, "connection reset"); ce != nil {
			dir := "upstream to client"
			if toUpstream {
				dir = "client to upstream"
			}
			ce.Write(zap.Stringer("client", c.clientAddr), zap.Stringer("mapping", c.bs.backend.Mapping),
				zap.String("direction", dir), zap.Error(err))
		}
	}
}

// writePrefix sends the client bytes that were read along with the PROXY
// header, before the rest of the client's stream (spliced or buffered)
// follows from the socket.
func (c *relayConn) writePrefix(dst io.Writer) error {
	c.touch()
	n, err := dst.Write(c.prefix)
	c.count(true, int64(n))
	c.prefix = nil
	c.touch()
	return err
}

// spliceCopy moves bytes from src to dst with splice(2): TCPConn.ReadFrom
// takes that path when its source is a *net.TCPConn, also inside an
// *io.LimitedReader, which bounds each call so counters move during long
// transfers. It returns nil at EOF.
func (c *relayConn) spliceCopy(dst, src *net.TCPConn, toUpstream bool, lr *io.LimitedReader) error {
	for {
		lr.R, lr.N = src, spliceChunk
		n, err := dst.ReadFrom(lr)
		c.count(toUpstream, n)
		if err != nil {
			return err
		}
		if lr.N > 0 { // the source ended before the chunk did
			return nil
		}
	}
}

// bufferCopy copies through a pooled buffer, for TLS on either side or an
// idle timeout. It returns nil at EOF.
func (c *relayConn) bufferCopy(dst io.Writer, src io.Reader, toUpstream bool) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			c.touch()
			nw, werr := dst.Write(buf[:nr])
			c.count(toUpstream, int64(nw))
			if werr != nil {
				return werr
			}
			if nw != nr {
				return io.ErrShortWrite
			}
			c.touch()
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

func (c *relayConn) count(toUpstream bool, n int64) {
	if n <= 0 {
		return
	}
	if toUpstream {
		c.bytesUp.Add(n)
		c.bs.counters.bytesToUpstream.Add(uint64(n))
		c.srv.stats.bytesToUpstream.Add(uint64(n))
	} else {
		c.bytesDn.Add(n)
		c.bs.counters.bytesToClient.Add(uint64(n))
		c.srv.stats.bytesToClient.Add(uint64(n))
	}
}

// touch records activity for the idle timer.
func (c *relayConn) touch() {
	if c.idleTimeout > 0 {
		c.lastActive.Store(int64(time.Since(c.start)))
	}
}

// startIdle arms the idle timer. One timer per connection, re-armed for
// the remaining quiet time when it fires early, keeps activity itself down
// to one atomic store per chunk.
func (c *relayConn) startIdle(d time.Duration) {
	c.idleTimeout = d
	c.touch()
	c.mu.Lock()
	if !c.closed {
		c.idleTimer = time.AfterFunc(d, c.checkIdle)
	}
	c.mu.Unlock()
}

func (c *relayConn) checkIdle() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	quiet := time.Since(c.start) - time.Duration(c.lastActive.Load())
	if quiet < c.idleTimeout {
		c.idleTimer.Reset(c.idleTimeout - quiet)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if c.close(false) {
		c.bs.counters.idleClosed.Add(1)
		if ce := c.srv.log.Check(zap.DebugLevel, "idle timeout"); ce != nil {
			ce.Write(zap.Stringer("client", c.clientAddr), zap.Stringer("mapping", c.bs.backend.Mapping),
				zap.Duration("idle_timeout", c.idleTimeout))
		}
	}
}
