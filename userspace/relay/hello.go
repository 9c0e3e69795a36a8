package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"
)

// maxHelloBytes bounds what the relay reads while peeking at a
// ClientHello: one full TLS record (16 KiB of payload plus its 5-byte
// header). Real ClientHellos, post-quantum key shares included, take a
// few KiB.
const maxHelloBytes = 16<<10 + 5

// recordTypeHandshake is the content type of the record that must open a
// TLS connection.
const recordTypeHandshake = 0x16

var (
	// errHelloPeeked aborts the peek handshake once the ClientHello is
	// parsed.
	errHelloPeeked = errors.New("client hello peeked")
	// errHelloTooLarge refuses a ClientHello that does not fit in
	// maxHelloBytes.
	errHelloTooLarge = errors.New("client hello larger than 16 KiB")
	// errNotHandshake refuses a connection whose first byte does not
	// open a TLS handshake record.
	errNotHandshake = errors.New("first record is not a TLS handshake")
)

// unrecognizedNameAlert is a fatal unrecognized_name alert (RFC 6066,
// section 3) as a TLS 1.2 record: content type alert, version 3.3, length
// 2, level fatal, description 112. Before ServerHello every TLS version
// sends alerts as such plaintext records.
var unrecognizedNameAlert = []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112}

// peekConfig makes crypto/tls parse a ClientHello and stop: its
// GetConfigForClient stores the server name in the helloConn the
// handshake runs on, then aborts. One config serves every peek, so a peek
// allocates no config of its own.
var peekConfig = &tls.Config{
	GetConfigForClient: func(chi *tls.ClientHelloInfo) (*tls.Config, error) {
		if h, ok := chi.Conn.(*helloConn); ok {
			h.serverName, h.parsed = chi.ServerName, true
		}
		return nil, errHelloPeeked
	},
}

// helloConn is the read-only connection crypto/tls parses the ClientHello
// from during the peek: reads come from src and are recorded in buf for
// the real handshake to replay, writes (the abort's alert) are discarded.
// Deadlines are the socket's, set by the caller.
type helloConn struct {
	src        io.Reader
	sock       net.Conn // for addresses only
	buf        []byte
	serverName string
	parsed     bool
}

func (h *helloConn) Read(p []byte) (int, error) {
	room := maxHelloBytes - len(h.buf)
	if room <= 0 {
		return 0, errHelloTooLarge
	}
	if len(p) > room {
		p = p[:room]
	}
	n, err := h.src.Read(p)
	if len(h.buf) == 0 && n > 0 && p[0] != recordTypeHandshake {
		// Not TLS, or TLS that does not start with a handshake:
		// whatever crypto/tls would make of it, it is no ClientHello.
		err = errNotHandshake
	}
	h.buf = append(h.buf, p[:n]...)
	return n, err
}

func (h *helloConn) Write(p []byte) (int, error)        { return len(p), nil }
func (h *helloConn) Close() error                       { return nil }
func (h *helloConn) LocalAddr() net.Addr                { return h.sock.LocalAddr() }
func (h *helloConn) RemoteAddr() net.Addr               { return h.sock.RemoteAddr() }
func (h *helloConn) SetDeadline(t time.Time) error      { return nil }
func (h *helloConn) SetReadDeadline(t time.Time) error  { return nil }
func (h *helloConn) SetWriteDeadline(t time.Time) error { return nil }

// peekHello reads and parses the ClientHello from src (conn's bytes,
// possibly after a PROXY header's leftovers). It returns the server name
// and every byte read, for the real handshake to replay. The caller bounds
// it with a deadline on conn.
func peekHello(conn net.Conn, src io.Reader) (serverName string, read []byte, err error) {
	h := &helloConn{src: src, sock: conn}
	err = tls.Server(h, peekConfig).Handshake()
	if h.parsed {
		return h.serverName, h.buf, nil
	}
	if err == nil || errors.Is(err, errHelloPeeked) {
		// Unreachable: the abort comes from the callback that sets parsed.
		err = errors.New("client hello not parsed")
	}
	return "", h.buf, err
}

// prefixConn is a socket whose first reads return bytes already taken
// from it: the PROXY leftovers to the peek, then everything the peek read
// to the real handshake.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.prefix) == 0 {
		return p.Conn.Read(b)
	}
	n := copy(b, p.prefix)
	p.prefix = p.prefix[n:]
	if len(p.prefix) == 0 {
		p.prefix = nil // let the buffer go
	}
	return n, nil
}
