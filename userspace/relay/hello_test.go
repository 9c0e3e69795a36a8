package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// rawClientHello returns the bytes a crypto/tls client sends first for
// cfg: its ClientHello record(s).
func rawClientHello(t *testing.T, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		tls.Client(a, cfg).Handshake()
	}()
	defer func() {
		a.Close()
		b.Close()
		<-done
	}()
	b.SetReadDeadline(time.Now().Add(ioTimeout))
	buf := make([]byte, 128<<10)
	n, err := b.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestUnknownSNIAlert: no route for the name gets exactly one fatal
// unrecognized_name alert record, then a clean end of stream.
func TestUnknownSNIAlert(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, echo)
	srv, l := startRelay(t, tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"),
		backend("m", up.addr(), 100))), Options{})
	c := dial(t, relayAddr(l))
	if _, err := c.Write(rawClientHello(t, &tls.Config{ServerName: "nobody.test", InsecureSkipVerify: true})); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	want := []byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("relay answered % x (%v), want % x then EOF", got, err, want)
	}
	waitFor(t, "unknown SNI counted", func() bool { return srv.Stats().Listener.UnknownSNI == 1 })
}

// dribble writes its first write in pieces, pausing between them, so the
// peek sees a ClientHello arrive over several reads.
type dribble struct {
	net.Conn
	done bool
}

func (d *dribble) Write(b []byte) (int, error) {
	if d.done {
		return d.Conn.Write(b)
	}
	d.done = true
	n := 0
	for _, cut := range []int{1, 3, 5, 64, len(b)} {
		cut = min(cut, len(b))
		if cut <= n {
			continue
		}
		m, err := d.Conn.Write(b[n:cut])
		n += m
		if err != nil {
			return n, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return n, nil
}

// TestHelloPeek: the peeked ClientHello is replayed intact, whatever its
// size and however it arrives, and an oversized one is refused.
func TestHelloPeek(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	srv, l := startRelay(t, tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"),
		backend("m", up.addr(), 100))), Options{})
	addr := relayAddr(l)

	// ALPN names make the ClientHello big: n names of 200 bytes.
	alpn := func(n int) []string {
		var p []string
		for i := range n {
			p = append(p, fmt.Sprintf("%03d", i)+strings.Repeat("p", 197))
		}
		return p
	}
	tests := []struct {
		name    string
		cfg     *tls.Config
		wrap    func(net.Conn) net.Conn
		refused bool
	}{
		{"TLS 1.2", &tls.Config{MaxVersion: tls.VersionTLS12}, nil, false},
		{"TLS 1.3", &tls.Config{MinVersion: tls.VersionTLS13}, nil, false},
		{"in pieces", &tls.Config{}, func(c net.Conn) net.Conn { return &dribble{Conn: c} }, false},
		{"8 KiB hello", &tls.Config{NextProtos: alpn(40)}, nil, false},
		{"20 KiB hello", &tls.Config{NextProtos: alpn(100)}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg.Clone()
			cfg.ServerName, cfg.RootCAs = "a.example.com", pki.pool
			var c net.Conn = dial(t, addr)
			if tt.wrap != nil {
				c = tt.wrap(c)
			}
			tc := tls.Client(c, cfg)
			err := tc.Handshake()
			if tt.refused {
				if err == nil {
					t.Fatalf("handshake succeeded, want it refused")
				}
				waitFor(t, "rejection counted", func() bool { return srv.Stats().Listener.HandshakeRejected == 1 })
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := readLine(t, tc); got != "up sni= cn=" {
				t.Errorf("banner = %q", got)
			}
			echoRoundTrip(t, tc, "ping")
		})
	}
}

// TestNotHandshakeRecord: a first record that is TLS but not a handshake
// (here an alert) counts as not TLS.
func TestNotHandshakeRecord(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, echo)
	srv, l := startRelay(t, tlsListener(tlsRoute("a.example.com", termination(t, pki, "a.example.com"),
		backend("m", up.addr(), 100))), Options{})
	c := dial(t, relayAddr(l))
	c.Write([]byte{0x15, 0x03, 0x03, 0x00, 0x02, 0x01, 0x00})
	expectClosed(t, c)
	waitFor(t, "not TLS counted", func() bool { return srv.Stats().Listener.HandshakeNotTLS == 1 })
}

// TestHelloRetryRequest: when the route's curves force a
// HelloRetryRequest, the second ClientHello comes from the socket after
// the replayed first one.
func TestHelloRetryRequest(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	term := termination(t, pki, "a.example.com")
	term.Curves = []tls.CurveID{tls.CurveP384} // Go clients send X25519 key shares first
	_, l := startRelay(t, tlsListener(tlsRoute("a.example.com", term, backend("m", up.addr(), 100))), Options{})
	c, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	if got := c.ConnectionState().CurveID; got != tls.CurveP384 {
		t.Errorf("curve = %v, want P-384 after a retry", got)
	}
	if got := readLine(t, c); got != "up sni= cn=" {
		t.Errorf("banner = %q", got)
	}
}
