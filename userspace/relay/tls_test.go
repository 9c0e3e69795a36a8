package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// termination returns a TLSServer for names, signed by pki.
func termination(t *testing.T, pki *testPKI, names ...string) *snapshot.TLSServer {
	cert, key := pki.issue(t, names[0], names...)
	return &snapshot.TLSServer{CertPEM: cert, KeyPEM: key}
}

func TestSNIRouting(t *testing.T) {
	pki := newPKI(t)
	term := termination(t, pki, "a.example.com", "b.example.com", "*.example.com", "other.test")
	ua := startUpstream(t, "ua", nil, bannerEcho("ua"))
	ub := startUpstream(t, "ub", nil, bannerEcho("ub"))
	uw := startUpstream(t, "uw", nil, bannerEcho("uw"))
	us := startUpstream(t, "ustar", nil, bannerEcho("ustar"))

	withoutStar := tlsListener(
		tlsRoute("a.example.com", term, backend("a", ua.addr(), 100)),
		tlsRoute("b.example.com", term, backend("b", ub.addr(), 100)),
		tlsRoute("*.example.com", term, backend("w", uw.addr(), 100)),
	)
	withStar := withoutStar
	withStar.Routes = append(withStar.Routes[:3:3], tlsRoute("*", term, backend("star", us.addr(), 100)))

	tests := []struct {
		name     string
		listener snapshot.Listener
		sni      string
		want     string // banner name; "" means the handshake fails
	}{
		{"exact a", withoutStar, "a.example.com", "ua"},
		{"exact b", withoutStar, "B.Example.COM", "ub"},
		{"wildcard", withoutStar, "x.example.com", "uw"},
		{"unknown SNI", withoutStar, "other.test", ""},
		{"no SNI", withoutStar, "", ""},
		{"no SNI with star", withStar, "", "ustar"},
		{"unknown SNI with star", withStar, "other.test", "ustar"},
		{"exact beats star", withStar, "a.example.com", "ua"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			srv, l := startRelay(t, tt.listener, Options{Logger: zap.New(core)})
			cfg := &tls.Config{ServerName: tt.sni, RootCAs: pki.pool}
			if tt.sni == "" {
				cfg.InsecureSkipVerify = true // Go verifies against ServerName
			}
			c, err := dialTLS(t, relayAddr(l), cfg)
			if tt.want == "" {
				// RFC 6066: unrecognized_name, not internal_error.
				if err == nil || !strings.Contains(err.Error(), "unrecognized name") {
					t.Fatalf("handshake error = %v, want the unrecognized name alert", err)
				}
				// The relay counts, then logs.
				waitFor(t, "handshake failure logged", func() bool {
					return logs.FilterMessage("client TLS handshake failed").Len() > 0
				})
				if got := srv.Stats().Listener.UnknownSNI; got != 1 {
					t.Errorf("unknown SNI count = %d, want 1", got)
				}
				entries := logs.FilterMessage("client TLS handshake failed").All()
				if len(entries) != 1 || entries[0].Level != zapcore.DebugLevel {
					t.Fatalf("log entries = %+v, want one at debug", entries)
				}
				f := entries[0].ContextMap()
				if f["reason"] != "unknown SNI" || f["sni"] != tt.sni || f["client"] != c.LocalAddr().String() {
					t.Errorf("log fields = %v, want reason, sni %q and client %s", f, tt.sni, c.LocalAddr())
				}
				return
			}
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := readLine(t, c); got != tt.want+" sni= cn=" {
				t.Errorf("banner = %q, want upstream %s", got, tt.want)
			}
			echoRoundTrip(t, c, "ping")
		})
	}
}

// TestOrigination: a cleartext listener originating TLS, as https://
// (no SNI, no client certificate, not verified) and with a TLSContext
// (client certificate, SNI, verified).
func TestOrigination(t *testing.T) {
	pki := newPKI(t)
	clientCert, clientKey := pki.issue(t, "tcpmap-client")
	up := startUpstream(t, "up", upstreamTLS(t, pki), bannerEcho("up"))
	tests := []struct {
		name string
		orig snapshot.TLSClient
		want string // banner; "" means the upstream handshake fails
	}{
		{"https", snapshot.TLSClient{}, "up sni= cn="},
		{"verified with SNI", snapshot.TLSClient{RootCAPEM: pki.caPEM, ServerName: "up.internal"}, "up sni=up.internal cn="},
		{"client certificate and SNI", snapshot.TLSClient{
			CertPEM: clientCert, KeyPEM: clientKey, RootCAPEM: pki.caPEM, ServerName: "up.internal",
		}, "up sni=up.internal cn=tcpmap-client"},
		{"wrong name fails verification", snapshot.TLSClient{RootCAPEM: pki.caPEM, ServerName: "wrong.internal"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := backend("orig", up.addr(), 100)
			b.Origination = &tt.orig
			srv, l := startRelay(t, tcpListener(b), Options{})
			if tt.want == "" {
				expectReset(t, relayAddr(l))
				waitFor(t, "upstream handshake failure counted", func() bool {
					return srv.Stats().Mappings[mappingRef("orig")].Refusals.UpstreamTLSFailed == 1
				})
				return
			}
			c := dial(t, relayAddr(l))
			if got := readLine(t, c); got != tt.want {
				t.Errorf("banner = %q, want %q", got, tt.want)
			}
			echoRoundTrip(t, c, "ping")
		})
	}
}

// TestMixedOnOneTLSListener routes four SNI names on one port to the four
// kinds of upstream TLS: none, https://, verified, mutual.
func TestMixedOnOneTLSListener(t *testing.T) {
	pki := newPKI(t)
	term := termination(t, pki, "*.example.com")
	clientCert, clientKey := pki.issue(t, "tcpmap-client")
	plain := startUpstream(t, "plain", nil, bannerEcho("plain"))
	secure := startUpstream(t, "secure", upstreamTLS(t, pki), bannerEcho("secure"))

	withTLS := func(name string, o *snapshot.TLSClient) snapshot.Backend {
		b := backend(name, secure.addr(), 100)
		b.Origination = o
		return b
	}
	l := tlsListener(
		tlsRoute("plain.example.com", term, backend("plain", plain.addr(), 100)),
		tlsRoute("bare.example.com", term, withTLS("bare", &snapshot.TLSClient{})),
		tlsRoute("verified.example.com", term, withTLS("verified",
			&snapshot.TLSClient{RootCAPEM: pki.caPEM, ServerName: "up.internal"})),
		tlsRoute("mtls.example.com", term, withTLS("mtls", &snapshot.TLSClient{
			CertPEM: clientCert, KeyPEM: clientKey, RootCAPEM: pki.caPEM, ServerName: "up.internal"})),
	)
	_, l = startRelay(t, l, Options{})
	tests := []struct{ sni, want string }{
		{"plain.example.com", "plain sni= cn="},
		{"bare.example.com", "secure sni= cn="},
		{"verified.example.com", "secure sni=up.internal cn="},
		{"mtls.example.com", "secure sni=up.internal cn=tcpmap-client"},
	}
	for _, tt := range tests {
		t.Run(tt.sni, func(t *testing.T) {
			c, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: tt.sni, RootCAs: pki.pool})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			if got := readLine(t, c); got != tt.want {
				t.Errorf("banner = %q, want %q", got, tt.want)
			}
			echoRoundTrip(t, c, "ping "+tt.sni)
		})
	}
}

func TestTLSParams(t *testing.T) {
	pki := newPKI(t)
	userCert := pki.tlsCert(t, "end-user")
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	b := backend("up", up.addr(), 100)

	t.Run("min version 1.3", func(t *testing.T) {
		term := termination(t, pki, "a.example.com")
		term.MinVersion = tls.VersionTLS13
		srv, l := startRelay(t, tlsListener(tlsRoute("a.example.com", term, b)), Options{})
		_, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool, MaxVersion: tls.VersionTLS12})
		if err == nil {
			t.Errorf("TLS 1.2 client: handshake succeeded, want it rejected")
		}
		c, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool})
		if err != nil {
			t.Fatalf("default client: %v", err)
		}
		if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
			t.Errorf("version = %x, want TLS 1.3", v)
		}
		waitFor(t, "rejection counted", func() bool { return srv.Stats().Listener.HandshakeRejected == 1 })
	})

	t.Run("client certificate required", func(t *testing.T) {
		term := termination(t, pki, "a.example.com")
		term.ClientCAPEM = pki.caPEM
		term.CertRequired = true
		_, l := startRelay(t, tlsListener(tlsRoute("a.example.com", term, b)), Options{})

		// In TLS 1.3 the client finishes its handshake before the server
		// checks the certificate, so the refusal may show on first read.
		c, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool})
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("without certificate: %v, want the handshake refused", err)
		}

		c, err = dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool,
			Certificates: []tls.Certificate{userCert}})
		if err != nil {
			t.Fatalf("with certificate: %v", err)
		}
		if got := readLine(t, c); got != "up sni= cn=" {
			t.Errorf("banner = %q", got)
		}
	})

	t.Run("ALPN", func(t *testing.T) {
		term := termination(t, pki, "a.example.com")
		term.ALPN = []string{"h2", "tcpmap-test"}
		_, l := startRelay(t, tlsListener(tlsRoute("a.example.com", term, b)), Options{})
		c, err := dialTLS(t, relayAddr(l), &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool,
			NextProtos: []string{"tcpmap-test"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ConnectionState().NegotiatedProtocol; got != "tcpmap-test" {
			t.Errorf("ALPN = %q, want tcpmap-test", got)
		}
	})
}

func TestHandshakeFailures(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", nil, bannerEcho("up"))
	term := termination(t, pki, "a.example.com")
	l := tlsListener(tlsRoute("a.example.com", term, backend("up", up.addr(), 100)))
	srv, l := startRelay(t, l, Options{HandshakeTimeout: 300 * time.Millisecond})
	addr := relayAddr(l)

	t.Run("silent client", func(t *testing.T) {
		expectClosed(t, dial(t, addr))
		waitFor(t, "timeout counted", func() bool { return srv.Stats().Listener.HandshakeTimeout == 1 })
	})
	t.Run("garbage", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
		expectClosed(t, c)
		waitFor(t, "garbage counted", func() bool { return srv.Stats().Listener.HandshakeNotTLS == 1 })
	})
	t.Run("client vanishes mid-handshake", func(t *testing.T) {
		vanish := dial(t, addr)
		// A handshake record header announcing 512 bytes, then 10.
		vanish.Write(append([]byte{0x16, 0x03, 0x01, 0x02, 0x00}, make([]byte, 10)...))

		good, err := dialTLS(t, addr, &tls.Config{ServerName: "a.example.com", RootCAs: pki.pool})
		if err != nil {
			t.Fatalf("concurrent good handshake: %v", err)
		}
		if got := readLine(t, good); got != "up sni= cn=" {
			t.Errorf("banner = %q", got)
		}
		vanish.Close()
		waitFor(t, "vanished client counted", func() bool { return srv.Stats().Listener.HandshakeClientClosed == 1 })
		echoRoundTrip(t, good, "still fine")
	})
}

// TestUnverifiedWarningOnce: the warning appears once per mapping, not per
// connection or per Update.
func TestUnverifiedWarningOnce(t *testing.T) {
	pki := newPKI(t)
	up := startUpstream(t, "up", upstreamTLS(t, pki), bannerEcho("up"))
	b := backend("bare", up.addr(), 100)
	b.Origination = &snapshot.TLSClient{}
	core, logs := observer.New(zapcore.WarnLevel)
	srv, l := startRelay(t, tcpListener(b), Options{Logger: zap.New(core)})
	if err := srv.Update(l); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		readLine(t, dial(t, relayAddr(l)))
	}
	got := logs.FilterMessage("upstream certificate not verified: set ca_secret on the TLSContext").All()
	if len(got) != 1 {
		t.Fatalf("warnings = %d, want 1", len(got))
	}
	if m := got[0].ContextMap()["mapping"]; m != "TCPMapping default/bare" {
		t.Errorf("warning mapping = %v", m)
	}
}
