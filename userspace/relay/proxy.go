package relay

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap"
)

// DefaultProxyHeaderTimeout bounds the wait for a PROXY protocol header
// when Options.ProxyHeaderTimeout is zero.
const DefaultProxyHeaderTimeout = 5 * time.Second

// proxyBufSize is the read buffer for the PROXY header. The header itself
// is at most 107 bytes (v1) or 16 + 4096 (v2, go-proxyproto's
// MaxV2HeaderSize; v2 reads through the buffer), but one socket read also
// takes whatever the client sent after it, typically its ClientHello or
// first request, which then goes on to the next stage.
const proxyBufSize = 4096

var proxyReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, proxyBufSize) }}

// errProxyDatagram refuses a header that claims a UDP client: a TCP
// connection cannot have come from one.
var errProxyDatagram = errors.New("PROXY header names a datagram transport on a TCP listener")

// readProxyHeader reads the PROXY v1 or v2 header that must open conn,
// within timeout. It returns the client address the header carries (nil
// for a LOCAL command, v1 UNKNOWN or an AF_UNIX source, where the socket
// peer stands) and the bytes that arrived after the header in the same
// read, which belong to the next stage. On error the connection must be
// closed: nothing of it may reach an upstream.
func readProxyHeader(conn net.Conn, timeout time.Duration) (client net.Addr, rest []byte, err error) {
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, nil, err
	}
	br := proxyReaders.Get().(*bufio.Reader)
	br.Reset(conn)
	defer func() {
		br.Reset(nil)
		proxyReaders.Put(br)
	}()
	bufferV1Line(br)
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, nil, err
	}
	client, err = headerClient(h)
	if err != nil {
		return nil, nil, err
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		rest = append([]byte(nil), b...)
	}
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		return nil, nil, err
	}
	return client, rest, nil
}

// v1MaxLine is the longest PROXY v1 header, CRLF included.
const v1MaxLine = 107

// bufferV1Line makes sure a PROXY v1 header that arrives in pieces is
// wholly buffered before go-proxyproto parses it: the library refuses a v1
// line that is not in its first read, which the spec permits but advises
// against. Tolerance costs nothing here because the header deadline already
// bounds a slow sender. It stops at the line's end, at v1MaxLine bytes, as
// soon as the bytes cannot be a v1 header, or on a read error (which
// proxyproto.Read then reports).
func bufferV1Line(br *bufio.Reader) {
	const sig = "PROXY "
	for {
		// Look at what is buffered before asking for more: a whole line
		// (usually with the client's first bytes behind it) needs no
		// further read, and must not wait for one.
		if n := br.Buffered(); n > 0 {
			b, _ := br.Peek(n)
			k := min(len(b), len(sig))
			if string(b[:k]) != sig[:k] || bytes.IndexByte(b, '\n') >= 0 || n >= v1MaxLine {
				return
			}
		}
		// Not a whole line yet: block for at least one more byte (the
		// header deadline bounds the wait).
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return
		}
	}
}

// headerClient is the client address a parsed header carries, nil when
// the socket peer should stand.
func headerClient(h *proxyproto.Header) (net.Addr, error) {
	if h.Command.IsLocal() {
		// A connection the proxy opened itself (health check): the
		// spec says to use the real connection endpoints.
		return nil, nil
	}
	switch {
	case h.TransportProtocol.IsDatagram():
		return nil, errProxyDatagram
	case h.TransportProtocol.IsUnix():
		return nil, nil
	}
	src, _, ok := h.TCPAddrs()
	if !ok {
		return nil, proxyproto.ErrInvalidAddress
	}
	return src, nil
}

// classifyProxy sorts a header read error into a reason.
func classifyProxy(err error) proxyReason {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return proxyTimeout
	case errors.Is(err, proxyproto.ErrNoProxyProtocol):
		return proxyMissing
	}
	return proxyInvalid
}

// acceptProxy reads c's PROXY header and makes its source the client
// address. False means the connection was closed (and, unless the server
// closed it, counted).
func (s *Server) acceptProxy(c *relayConn) bool {
	client, rest, err := readProxyHeader(c.client, s.proxyTimeout)
	if err != nil {
		if c.close(false) {
			reason := classifyProxy(err)
			s.stats.countProxy(reason)
			if ce := s.log.Check(zap.DebugLevel, "PROXY header refused"); ce != nil {
				ce.Write(zap.String("reason", string(reason)), zap.Stringer("client", c.clientAddr), zap.Error(err))
			}
		}
		return false
	}
	if client != nil {
		c.clientAddr = client
	}
	c.prefix = rest
	return true
}

// sendProxyHeader writes a PROXY header of version (1 or 2) to up: the
// client's address as source, the address it connected to as destination.
func (c *relayConn) sendProxyHeader(up net.Conn, version int, timeout time.Duration) error {
	h := proxyproto.HeaderProxyFromAddrs(byte(version), c.clientAddr, c.client.LocalAddr())
	b, err := h.Format()
	if err != nil {
		return err
	}
	up.SetWriteDeadline(time.Now().Add(timeout))
	if _, err := up.Write(b); err != nil {
		return err
	}
	return up.SetWriteDeadline(time.Time{})
}
