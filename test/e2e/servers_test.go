package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// greeting is the first line every upstream test server sends:
//
//	upstream=<name> port=<port> sni=<sni|none> clientcert=<cn|none> alpn=<proto|none> tls=<yes|no>
//
// Through the proxy it tells the client which upstream it reached and what
// that upstream saw of the proxy's (or the client's) TLS.
type greeting struct {
	Upstream   string
	Port       int
	SNI        string
	ClientCert string
	ALPN       string
	TLS        bool
	Raw        string
}

func (g greeting) String() string { return g.Raw }

func formatGreeting(name string, port int, cs *tls.ConnectionState) string {
	sni, cn, alpn, on := "none", "none", "none", "no"
	if cs != nil {
		on = "yes"
		if cs.ServerName != "" {
			sni = cs.ServerName
		}
		if len(cs.PeerCertificates) > 0 {
			cn = cs.PeerCertificates[0].Subject.CommonName
		}
		if cs.NegotiatedProtocol != "" {
			alpn = cs.NegotiatedProtocol
		}
	}
	return fmt.Sprintf("upstream=%s port=%d sni=%s clientcert=%s alpn=%s tls=%s\n", name, port, sni, cn, alpn, on)
}

func parseGreeting(line string) (greeting, error) {
	g := greeting{Raw: strings.TrimSpace(line)}
	seen := 0
	for _, f := range strings.Fields(line) {
		k, v, ok := strings.Cut(f, "=")
		if !ok {
			return g, fmt.Errorf("bad greeting %q", line)
		}
		seen++
		switch k {
		case "upstream":
			g.Upstream = v
		case "port":
			g.Port, _ = strconv.Atoi(v)
		case "sni":
			g.SNI = v
		case "clientcert":
			g.ClientCert = v
		case "alpn":
			g.ALPN = v
		case "tls":
			g.TLS = v == "yes"
		default:
			seen--
		}
	}
	if seen != 6 {
		return g, fmt.Errorf("bad greeting %q", line)
	}
	return g, nil
}

// upstreamServer is a test server listening in the upstream namespace.
type upstreamServer struct {
	name     string
	port     int
	ln       net.Listener
	tlsConf  *tls.Config
	handle   func(c net.Conn, cs *tls.ConnectionState)
	accepted atomic.Int64

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// serveEcho starts a greeting-then-echo server on host:port in the upstream
// namespace, terminating TLS when useTLS is set. The TLS server accepts any
// SNI, records a client certificate when one verifying against the test CA
// is offered, and agrees to the client's first ALPN protocol.
func (tp *topology) serveEcho(t testing.TB, host string, port int, useTLS bool) *upstreamServer {
	t.Helper()
	s := &upstreamServer{name: host, port: port}
	s.handle = func(c net.Conn, cs *tls.ConnectionState) {
		if _, err := io.WriteString(c, formatGreeting(host, port, cs)); err != nil {
			return
		}
		_, _ = io.Copy(c, c)
	}
	tp.startServer(t, s, host, port, useTLS)
	return s
}

// serveFunc starts a server whose connections are handled by h.
func (tp *topology) serveFunc(t testing.TB, host string, port int, useTLS bool, h func(c net.Conn, cs *tls.ConnectionState)) *upstreamServer {
	t.Helper()
	s := &upstreamServer{name: host, port: port, handle: h}
	tp.startServer(t, s, host, port, useTLS)
	return s
}

func (tp *topology) startServer(t testing.TB, s *upstreamServer, host string, port int, useTLS bool) {
	t.Helper()
	addr := net.JoinHostPort(hostIP(t, host), strconv.Itoa(port))
	ln, err := tp.upstream.listen(addr)
	if err != nil {
		t.Fatalf("upstream %s listen %s: %v", host, addr, err)
	}
	s.ln = ln
	s.conns = map[net.Conn]struct{}{}
	if useTLS {
		p := testPKI()
		s.tlsConf = &tls.Config{
			Certificates: []tls.Certificate{p.upstream},
			ClientAuth:   tls.VerifyClientCertIfGiven,
			ClientCAs:    p.pool,
			GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
				if len(hello.SupportedProtos) == 0 {
					return nil, nil
				}
				return &tls.Config{
					Certificates: []tls.Certificate{p.upstream},
					ClientAuth:   tls.VerifyClientCertIfGiven,
					ClientCAs:    p.pool,
					NextProtos:   hello.SupportedProtos[:1],
				}, nil
			},
		}
	}
	s.wg.Add(1)
	go s.acceptLoop()
	t.Cleanup(s.close)
}

func (s *upstreamServer) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.accepted.Add(1)
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			defer func() {
				c.Close()
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
			}()
			if s.tlsConf == nil {
				s.handle(c, nil)
				return
			}
			tc := tls.Server(c, s.tlsConf)
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if err := tc.Handshake(); err != nil {
				return
			}
			_ = c.SetDeadline(time.Time{})
			cs := tc.ConnectionState()
			s.handle(tc, &cs)
		}()
	}
}

// close stops the server and closes its connections.
func (s *upstreamServer) close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// connect dials addr from the client namespace; the connection's deadline
// is the context's.
func (tp *topology) connect(ctx context.Context, addr string) (net.Conn, error) {
	c, err := tp.client.dial(ctx, addr)
	if err != nil {
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	return c, nil
}

// connectTLS dials addr from the client namespace and completes a TLS
// handshake sending sni, verifying the server certificate for sni against
// the test CA.
func (tp *topology) connectTLS(ctx context.Context, addr, sni string, alpn ...string) (*tls.Conn, error) {
	return tp.handshake(ctx, addr, &tls.Config{ServerName: sni, RootCAs: testPKI().pool, NextProtos: alpn})
}

// handshake dials addr from the client namespace and completes a TLS
// handshake with conf.
func (tp *topology) handshake(ctx context.Context, addr string, conf *tls.Config) (*tls.Conn, error) {
	sni := conf.ServerName
	c, err := tp.connect(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, conf)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake to %s with sni %q: %w", addr, sni, err)
	}
	return tc, nil
}

// readLine reads up to and including '\n' one byte at a time, so nothing
// after the line is consumed.
func readLine(r io.Reader) (string, error) {
	var b strings.Builder
	var one [1]byte
	for b.Len() < 4096 {
		if _, err := io.ReadFull(r, one[:]); err != nil {
			return b.String(), err
		}
		b.WriteByte(one[0])
		if one[0] == '\n' {
			return b.String(), nil
		}
	}
	return b.String(), errors.New("line too long")
}

var echoSeq atomic.Int64

// echo writes a unique line and checks that the same bytes come back.
func echo(c net.Conn) error {
	msg := fmt.Sprintf("ping-%d-%s\n", echoSeq.Add(1), strings.Repeat("x", 100))
	if _, err := io.WriteString(c, msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// roundTrip reads the upstream's greeting and checks one echo.
func roundTrip(c net.Conn) (greeting, error) {
	line, err := readLine(c)
	if err != nil {
		return greeting{}, fmt.Errorf("read greeting (got %q): %w", line, err)
	}
	g, err := parseGreeting(line)
	if err != nil {
		return g, err
	}
	return g, echo(c)
}

// reach connects in cleartext to addr, and returns the greeting of the
// upstream reached after checking an echo.
func (tp *topology) reach(ctx context.Context, addr string) (greeting, error) {
	c, err := tp.connect(ctx, addr)
	if err != nil {
		return greeting{}, err
	}
	defer c.Close()
	return roundTrip(c)
}

// reachTLS is reach over a TLS connection with the given SNI.
func (tp *topology) reachTLS(ctx context.Context, addr, sni string, alpn ...string) (greeting, error) {
	c, err := tp.connectTLS(ctx, addr, sni, alpn...)
	if err != nil {
		return greeting{}, err
	}
	defer c.Close()
	return roundTrip(c)
}

// want is what a test expects the upstream to report.
type want struct {
	upstream   string
	port       int
	tls        bool
	sni        string // "" means do not check
	clientCert string // "none" or a CN; "" means do not check
}

func checkGreeting(t testing.TB, what string, g greeting, w want) {
	t.Helper()
	if g.Upstream != w.upstream || (w.port != 0 && g.Port != w.port) || g.TLS != w.tls ||
		(w.sni != "" && g.SNI != w.sni) || (w.clientCert != "" && g.ClientCert != w.clientCert) {
		t.Errorf("%s: upstream reported %q; want upstream=%s port=%d tls=%v sni=%q clientcert=%q",
			what, g.Raw, w.upstream, w.port, w.tls, w.sni, w.clientCert)
	}
}

// proxyAddr is proxyA:port.
func proxyAddr(port int) string { return net.JoinHostPort(proxyA, strconv.Itoa(port)) }
