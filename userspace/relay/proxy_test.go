package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

func tcpAddr(s string) *net.TCPAddr {
	return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s))
}

// proxyHeader formats a PROXY PROXY-command header from src to dst.
func proxyHeader(t testing.TB, version byte, src, dst string) []byte {
	t.Helper()
	b, err := proxyproto.HeaderProxyFromAddrs(version, tcpAddr(src), tcpAddr(dst)).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// localHeader is a v2 LOCAL header (a health check from the proxy itself).
func localHeader(t testing.TB) []byte {
	t.Helper()
	b, err := (&proxyproto.Header{Version: 2, Command: proxyproto.LOCAL, TransportProtocol: proxyproto.UNSPEC}).Format()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bufConn reads through the bufio.Reader that parsed a PROXY header, so
// nothing read past the header is lost.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *bufConn) CloseWrite() error          { return b.Conn.(closeWriter).CloseWrite() }

// proxyReport is an upstream that requires the PROXY header the relay
// sends, then (with tlsCfg) a TLS handshake, answers "src=S dst=D\n" from
// the header and echoes the rest until EOF.
func proxyReport(tlsCfg *tls.Config) func(net.Conn) {
	return func(c net.Conn) {
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		if err != nil {
			fmt.Fprintf(c, "error=%v\n", err)
			return
		}
		var conn net.Conn = &bufConn{Conn: c, r: br}
		if tlsCfg != nil {
			tc := tls.Server(conn, tlsCfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			conn = tc
		}
		src, dst := "-", "-"
		if h.SourceAddr != nil {
			src, dst = h.SourceAddr.String(), h.DestinationAddr.String()
		}
		if _, err := fmt.Fprintf(conn, "src=%s dst=%s\n", src, dst); err != nil {
			return
		}
		io.Copy(conn, conn)
		halfClose(conn)
	}
}

// headerFirst sends header in the same write as the first bytes written
// to it (for TLS: the ClientHello).
type headerFirst struct {
	net.Conn
	header []byte
}

func (h *headerFirst) Write(b []byte) (int, error) {
	if h.header == nil {
		return h.Conn.Write(b)
	}
	n, err := h.Conn.Write(append(h.header, b...))
	n = max(0, n-len(h.header))
	h.header = nil
	return n, err
}

func (h *headerFirst) CloseWrite() error { return h.Conn.(closeWriter).CloseWrite() }

// TestProxyProtocolIn: PROXY v1 and v2 headers, IPv4 and IPv6, on a
// cleartext and a TLS listener, written together with the first payload
// (request or ClientHello). The header's source becomes the client address
// (the upstream is told it by send-PROXY v2, and logs carry it); the
// payload after the header is not lost.
func TestProxyProtocolIn(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, proxyReport(nil))
	b := backend("m", up.addr(), 100)
	b.SendProxyProtocol = 2
	headers := []struct {
		name    string
		header  func(t *testing.T) []byte
		wantSrc string // "" means the socket peer
	}{
		{"v1 TCP4", func(t *testing.T) []byte { return proxyHeader(t, 1, "192.0.2.10:4242", "198.51.100.1:443") }, "192.0.2.10:4242"},
		{"v1 TCP6", func(t *testing.T) []byte { return proxyHeader(t, 1, "[2001:db8::10]:4243", "[2001:db8::1]:443") }, "[2001:db8::10]:4243"},
		{"v2 TCP4", func(t *testing.T) []byte { return proxyHeader(t, 2, "192.0.2.11:4244", "198.51.100.1:443") }, "192.0.2.11:4244"},
		{"v2 TCP6", func(t *testing.T) []byte { return proxyHeader(t, 2, "[2001:db8::11]:4245", "[2001:db8::1]:443") }, "[2001:db8::11]:4245"},
		{"v2 LOCAL", func(t *testing.T) []byte { return localHeader(t) }, ""},
	}
	for _, tlsIn := range []bool{false, true} {
		for _, h := range headers {
			name := "cleartext/" + h.name
			if tlsIn {
				name = "TLS/" + h.name
			}
			t.Run(name, func(t *testing.T) {
				l := tcpListener(b)
				if tlsIn {
					l = tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"), b))
				}
				l.ProxyProtocol = true
				core, logs := observer.New(zapcore.DebugLevel)
				_, l = startRelay(t, l, Options{Logger: zap.New(core)})

				raw := dial(t, relayAddr(l))
				wantSrc := h.wantSrc
				if wantSrc == "" {
					wantSrc = raw.LocalAddr().String()
				}
				var c net.Conn
				if tlsIn {
					tc := tls.Client(&headerFirst{Conn: raw, header: h.header(t)},
						&tls.Config{ServerName: "a.example.com", RootCAs: pki.pool})
					if err := tc.Handshake(); err != nil {
						t.Fatalf("handshake behind the PROXY header: %v", err)
					}
					c = tc
				} else {
					if _, err := raw.Write(append(h.header(t), "payload in the header's packet\n"...)); err != nil {
						t.Fatal(err)
					}
					c = raw
				}
				br := bufio.NewReader(c)
				want := fmt.Sprintf("src=%s dst=%s", wantSrc, relayAddr(l))
				if got, err := br.ReadString('\n'); err != nil || got[:len(got)-1] != want {
					t.Fatalf("upstream says %q (%v), want %q", got, err, want)
				}
				if !tlsIn {
					if got, err := br.ReadString('\n'); err != nil || got != "payload in the header's packet\n" {
						t.Fatalf("echo of the payload sent with the header = %q, %v", got, err)
					}
				}
				io.WriteString(c, "more\n")
				if got, err := br.ReadString('\n'); err != nil || got != "more\n" {
					t.Fatalf("echo = %q, %v", got, err)
				}
				halfClose(c)
				if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
					t.Fatalf("after half-close read %q, %v; want EOF", rest, err)
				}
				waitFor(t, "connection closed log", func() bool {
					return logs.FilterMessage("connection closed").Len() == 1
				})
				if got := logs.FilterMessage("connection closed").All()[0].ContextMap()["client"]; got != wantSrc {
					t.Errorf("log client = %v, want %s", got, wantSrc)
				}
			})
		}
	}
}

// expectClosed reads until the relay closes c (EOF or reset), failing
// on the test's own, much longer deadline.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	_, err := io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("connection not closed by the relay")
	}
}

// TestProxyHeaderRefused: a missing, malformed or late header closes that
// connection only, counted by reason; nothing reaches the upstream.
func TestProxyHeaderRefused(t *testing.T) {
	up := startUpstream(t, "up", nil, echo)
	l := tcpListener(backend("m", up.addr(), 100))
	l.ProxyProtocol = true
	core, logs := observer.New(zapcore.DebugLevel)
	srv, l := startRelay(t, l, Options{ProxyHeaderTimeout: 300 * time.Millisecond, HandshakeTimeout: time.Hour,
		Logger: zap.New(core)})
	addr := relayAddr(l)

	good := dial(t, addr)
	good.Write(append(proxyHeader(t, 1, "192.0.2.1:1000", "192.0.2.2:2000"), "first"...))
	if got := make([]byte, 5); func() error { _, err := io.ReadFull(good, got); return err }() != nil || string(got) != "first" {
		t.Fatalf("good connection echo = %q", got)
	}

	v2BadLength := append(append([]byte(nil), proxyproto.SIGV2...), 0x21, 0x11, 0xff, 0xff)
	tests := []struct {
		name  string
		send  []byte // nil: send nothing
		count func(ListenerStats) uint64
	}{
		{"no header", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), func(s ListenerStats) uint64 { return s.ProxyMissing }},
		{"bad v1 address", []byte("PROXY TCP4 not-an-ip 192.0.2.2 1 2\r\nhello"), func(s ListenerStats) uint64 { return s.ProxyInvalid }},
		{"bad v2 length", v2BadLength, func(s ListenerStats) uint64 { return s.ProxyInvalid }},
		{"v2 over UDP", func() []byte {
			b, err := proxyproto.HeaderProxyFromAddrs(2, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 1},
				&net.UDPAddr{IP: net.IPv4(192, 0, 2, 2), Port: 2}).Format()
			if err != nil {
				t.Fatal(err)
			}
			return b
		}(), func(s ListenerStats) uint64 { return s.ProxyInvalid }},
		{"silent client", nil, func(s ListenerStats) uint64 { return s.ProxyTimeout }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.count(srv.Stats().Listener)
			c := dial(t, addr)
			if tt.send != nil {
				c.Write(tt.send)
			}
			expectClosed(t, c)
			waitFor(t, "refusal counted", func() bool { return tt.count(srv.Stats().Listener) == before+1 })
		})
	}

	echoRoundTrip(t, good, "still fine")
	st := srv.Stats()
	if got := st.Mappings[mappingRef("m")].Total; got != 1 {
		t.Errorf("upstream connections = %d, want only the good one", got)
	}
	if got := st.Listener.HandshakeTimeout; got != 0 {
		t.Errorf("handshake timeouts = %d, want 0", got)
	}
	refusals := logs.FilterMessage("PROXY header refused").All()
	if len(refusals) != len(tests) {
		t.Fatalf("refusal log lines = %d, want %d", len(refusals), len(tests))
	}
	for _, e := range refusals {
		if e.Level != zapcore.DebugLevel || e.ContextMap()["reason"] == nil || e.ContextMap()["client"] == nil {
			t.Errorf("refusal log = %v %v, want debug with reason and client", e.Level, e.ContextMap())
		}
	}
}

// TestProxyHeaderTimeoutOnTLSListener: the header timeout runs before,
// and apart from, the TLS handshake timeout.
func TestProxyHeaderTimeoutOnTLSListener(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, echo)
	l := tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"), backend("m", up.addr(), 100)))
	l.ProxyProtocol = true
	srv, l := startRelay(t, l, Options{ProxyHeaderTimeout: 300 * time.Millisecond, HandshakeTimeout: time.Hour})
	expectClosed(t, dial(t, relayAddr(l)))
	waitFor(t, "header timeout counted", func() bool { return srv.Stats().Listener.ProxyTimeout == 1 })
	if got := srv.Stats().Listener.HandshakeTimeout; got != 0 {
		t.Errorf("handshake timeouts = %d, want 0", got)
	}
}

// TestSendProxyProtocol: the upstream parses the header the relay sends
// and sees the original client, from an incoming PROXY header or the
// socket, and the relay's address as destination; also ahead of TLS
// origination.
func TestSendProxyProtocol(t *testing.T) {
	pki := newPKI(t)
	for _, version := range []int{1, 2} {
		for _, incoming := range []bool{false, true} {
			for _, originate := range []bool{false, true} {
				name := fmt.Sprintf("v%d/incoming=%v/originate=%v", version, incoming, originate)
				t.Run(name, func(t *testing.T) {
					var upCfg *tls.Config
					if originate {
						upCfg = upstreamTLS(t, pki)
					}
					up := startUpstream(t, "up", nil, proxyReport(upCfg))
					b := backend("m", up.addr(), 100)
					b.SendProxyProtocol = version
					if originate {
						b.Origination = &snapshot.TLSClient{RootCAPEM: pki.caPEM, ServerName: "up.internal"}
					}
					l := tcpListener(b)
					l.ProxyProtocol = incoming
					_, l = startRelay(t, l, Options{})

					c := dial(t, relayAddr(l))
					wantSrc := c.LocalAddr().String()
					if incoming {
						wantSrc = "[2001:db8::7]:5555"
						c.Write(proxyHeader(t, 2, wantSrc, "[2001:db8::1]:443"))
					}
					want := fmt.Sprintf("src=%s dst=%s", wantSrc, relayAddr(l))
					if got := readLine(t, c); got != want {
						t.Errorf("upstream says %q, want %q", got, want)
					}
					echoRoundTrip(t, c, "after the header")
				})
			}
		}
	}
}

// TestIPv6Listener: a listener on ::1, an IPv6 upstream, send-PROXY v1
// (TCP6), and an IPv4 client address from an incoming header sent on as a
// v4-mapped address.
func TestIPv6Listener(t *testing.T) {
	probe, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	probe.Close()
	up := startUpstreamAt(t, "::1", "up6", nil, proxyReport(nil))
	b := backend("m", up.addr(), 100)
	b.SendProxyProtocol = 1

	t.Run("socket peer", func(t *testing.T) {
		_, l := startRelayAt(t, "::1", tcpListener(b), Options{})
		c := dial(t, relayAddr(l))
		want := fmt.Sprintf("src=%s dst=%s", c.LocalAddr(), relayAddr(l))
		if got := readLine(t, c); got != want {
			t.Errorf("upstream says %q, want %q", got, want)
		}
		echoRoundTrip(t, c, "v6")
	})
	t.Run("IPv4 client from header", func(t *testing.T) {
		l := tcpListener(b)
		l.ProxyProtocol = true
		_, l = startRelayAt(t, "::1", l, Options{})
		c := dial(t, relayAddr(l))
		c.Write(proxyHeader(t, 2, "192.0.2.9:999", "192.0.2.1:80"))
		want := fmt.Sprintf("src=192.0.2.9:999 dst=%s", relayAddr(l))
		if got := readLine(t, c); got != want {
			t.Errorf("upstream says %q, want %q", got, want)
		}
		echoRoundTrip(t, c, "mixed")
	})
}

// expectedRelay is what the upstream must receive when data is a whole
// connection's input to a PROXY listener: the bytes after a valid header,
// or nothing (ok false) when data does not start with one.
func expectedRelay(data []byte) (rest []byte, ok bool) {
	r := bytes.NewReader(data)
	br := bufio.NewReaderSize(r, proxyBufSize)
	h, err := proxyproto.Read(br)
	if err != nil {
		return nil, false
	}
	if _, err := headerClient(h); err != nil {
		return nil, false
	}
	consumed := len(data) - br.Buffered() - r.Len()
	return data[consumed:], true
}

// FuzzProxyHeader feeds arbitrary bytes to a PROXY listener in front of an
// echo upstream: the relay must not panic, must deliver nothing when the
// bytes do not start with a valid header, and everything after the header
// when they do.
func FuzzProxyHeader(f *testing.F) {
	f.Add(proxyHeader(f, 1, "192.0.2.1:1", "192.0.2.2:2"))
	f.Add(append(proxyHeader(f, 1, "[2001:db8::1]:1", "[2001:db8::2]:2"), "data"...))
	f.Add(append(proxyHeader(f, 2, "192.0.2.1:1", "192.0.2.2:2"), "data"...))
	f.Add(append(proxyHeader(f, 2, "[2001:db8::1]:1", "[2001:db8::2]:2"), bytes.Repeat([]byte("x"), 5000)...))
	f.Add(append(localHeader(f), "health"...))
	f.Add([]byte("PROXY UNKNOWN\r\nafter"))
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n"))
	f.Add([]byte("PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n"))
	f.Add([]byte("PROXY TCP6 192.0.2.1 192.0.2.2 1 2\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5})
	f.Add(append(append([]byte(nil), proxyproto.SIGV2...), 0x21, 0x31, 0x00, 0xd8))
	f.Add(append(append([]byte(nil), proxyproto.SIGV2...), 0x21, 0x12, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2))
	f.Add(append(append([]byte(nil), proxyproto.SIGV2...), 0x20, 0x00, 0x00, 0x03, 'a', 'b', 'c', 'd'))
	f.Add(proxyproto.SIGV2[:7])
	f.Add([]byte{})

	// One relay for every input: the fuzz function runs sequentially in
	// each worker process.
	u := startUpstream(f, "echo", nil, echo)
	l := tcpListener(backend("m", u.addr(), 100))
	l.ProxyProtocol = true
	srv, l := startRelay(f, l, Options{ProxyHeaderTimeout: 5 * time.Second, Logger: zap.NewNop()})
	addr := relayAddr(l)

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 16<<10 {
			data = data[:16<<10] // within the socket buffers both ways
		}
		want, valid := expectedRelay(data)
		before := srv.Stats().Mappings[mappingRef("m")].Total
		c := dial(t, addr)
		c.Write(data) // may fail once the relay has refused the header
		c.CloseWrite()
		got, err := io.ReadAll(c)
		c.SetLinger(0) // everything is read: no TIME_WAIT for each input
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("relay neither answered nor closed")
		}
		dialed := srv.Stats().Mappings[mappingRef("m")].Total - before
		if !valid {
			if len(got) != 0 || dialed != 0 {
				t.Fatalf("no valid header, yet the upstream was dialed %d times and echoed %q", dialed, got)
			}
			return
		}
		if !bytes.Equal(got, want) || err != nil {
			t.Fatalf("valid header: echoed %d bytes (err %v), want the %d after the header", len(got), err, len(want))
		}
	})
}

// TestProxyV1HeaderInPieces: a v1 header split across TCP segments (the
// spec lets receivers refuse it but recommends tolerance) is reassembled
// within the header deadline, and nothing after it is lost.
func TestProxyV1HeaderInPieces(t *testing.T) {
	up := startUpstream(t, "up", nil, proxyReport(nil))
	b := backend("m", up.addr(), 100)
	b.SendProxyProtocol = 2
	l := tcpListener(b)
	l.ProxyProtocol = true
	_, l = startRelay(t, l, Options{})

	c := dial(t, relayAddr(l))
	header := proxyHeader(t, 1, "192.0.2.10:4242", "198.51.100.1:443")
	for _, piece := range [][]byte{header[:3], header[3:20], header[20 : len(header)-1]} {
		if _, err := c.Write(piece); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // separate segments
	}
	if _, err := c.Write(append(header[len(header)-1:], "payload\n"...)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	want := fmt.Sprintf("src=192.0.2.10:4242 dst=%s", relayAddr(l))
	if got, err := br.ReadString('\n'); err != nil || got[:len(got)-1] != want {
		t.Fatalf("upstream says %q (%v), want %q", got, err, want)
	}
	if got, err := br.ReadString('\n'); err != nil || got != "payload\n" {
		t.Fatalf("echo of the payload after the header = %q, %v", got, err)
	}
}

// TestProxyHeaderWithPayloadDoesNotWait: a v1 header and the client's
// first bytes in one segment must be handled at once, not after the header
// deadline (a regression: the reassembly of split headers once asked for
// one byte more than the whole line before looking at it).
func TestProxyHeaderWithPayloadDoesNotWait(t *testing.T) {
	up := startUpstream(t, "up", nil, echo)
	l := tcpListener(backend("m", up.addr(), 100))
	l.ProxyProtocol = true
	_, l = startRelay(t, l, Options{ProxyHeaderTimeout: time.Minute})
	c := dial(t, relayAddr(l))
	c.SetReadDeadline(time.Now().Add(5 * time.Second)) // far below the minute
	header := proxyHeader(t, 1, "192.0.2.10:4242", "198.51.100.1:443")
	if _, err := c.Write(append(header, "ping\n"...)); err != nil {
		t.Fatal(err)
	}
	if got, err := bufio.NewReader(c).ReadString('\n'); err != nil || got != "ping\n" {
		t.Fatalf("echo = %q, %v: the relay waited for bytes it already had", got, err)
	}
}
