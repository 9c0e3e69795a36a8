package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// TestMain fails the package when any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// ioTimeout bounds every socket operation in the tests so a hang fails.
const ioTimeout = 20 * time.Second

// --- PKI -------------------------------------------------------------

// testPKI is a throwaway CA that signs server and client certificates.
type testPKI struct {
	cert  *x509.Certificate
	key   *ecdsa.PrivateKey
	caPEM []byte
	pool  *x509.CertPool
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tcpmap test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{cert: cert, key: key, pool: x509.NewCertPool()}
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	p.pool.AddCert(cert)
	return p
}

var serial = struct {
	sync.Mutex
	n int64
}{n: 100}

// issue returns PEM certificate and key for cn, valid for dnsNames as a
// server and for client authentication.
func (p *testPKI) issue(t testing.TB, cn string, dnsNames ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial.Lock()
	serial.n++
	sn := serial.n
	serial.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(sn),
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func (p *testPKI) tlsCert(t testing.TB, cn string, dnsNames ...string) tls.Certificate {
	t.Helper()
	c, k := p.issue(t, cn, dnsNames...)
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// --- minimal stand-ins for the daemon's builders and dialer ----------

func testServerTLS(s *snapshot.TLSServer) (*tls.Config, error) {
	cert, err := tls.X509KeyPair(s.CertPEM, s.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	cfg := &tls.Config{
		Certificates:     []tls.Certificate{cert},
		MinVersion:       s.MinVersion,
		MaxVersion:       s.MaxVersion,
		CipherSuites:     s.CipherSuites,
		CurvePreferences: s.Curves,
		NextProtos:       s.ALPN,
	}
	if len(s.ClientCAPEM) > 0 {
		cfg.ClientCAs = x509.NewCertPool()
		if !cfg.ClientCAs.AppendCertsFromPEM(s.ClientCAPEM) {
			return nil, errors.New("client CA: no certificate")
		}
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if s.CertRequired {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg, nil
}

func testClientTLS(c *snapshot.TLSClient) (*tls.Config, error) {
	cfg := &tls.Config{
		ServerName:       c.ServerName,
		MinVersion:       c.MinVersion,
		MaxVersion:       c.MaxVersion,
		CipherSuites:     c.CipherSuites,
		CurvePreferences: c.Curves,
		NextProtos:       c.ALPN,
	}
	if len(c.CertPEM) > 0 {
		cert, err := tls.X509KeyPair(c.CertPEM, c.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if len(c.RootCAPEM) > 0 {
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(c.RootCAPEM) {
			return nil, errors.New("root CA: no certificate")
		}
	} else {
		cfg.InsecureSkipVerify = true
	}
	return cfg, nil
}

type testDialer struct{}

func (testDialer) Dial(ctx context.Context, up snapshot.Upstream, timeout time.Duration) (*net.TCPConn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.DialContext(ctx, "tcp", up.Address())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// --- upstream servers ------------------------------------------------

// upstream is a loopback server standing in for a backend service.
type upstream struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// startUpstream serves handler on 127.0.0.1; with tlsCfg set, handler
// gets a *tls.Conn whose handshake is done. Cleanup closes everything
// and waits for the handlers.
func startUpstream(t testing.TB, name string, tlsCfg *tls.Config, handler func(net.Conn)) *upstream {
	t.Helper()
	return startUpstreamAt(t, "127.0.0.1", name, tlsCfg, handler)
}

// startUpstreamAt is startUpstream on another loopback address.
func startUpstreamAt(t testing.TB, host, name string, tlsCfg *tls.Config, handler func(net.Conn)) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{name: name, ln: ln, conns: make(map[net.Conn]struct{})}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns[c] = struct{}{}
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer func() {
					u.mu.Lock()
					delete(u.conns, c)
					u.mu.Unlock()
					c.Close()
				}()
				c.SetDeadline(time.Now().Add(ioTimeout))
				var hc net.Conn = c
				if tlsCfg != nil {
					tc := tls.Server(c, tlsCfg)
					if err := tc.Handshake(); err != nil {
						return
					}
					hc = tc
				}
				handler(hc)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u
}

func (u *upstream) addr() snapshot.Upstream {
	a := u.ln.Addr().(*net.TCPAddr)
	return snapshot.Upstream{Service: u.name, Host: a.IP.String(), Port: a.Port, EnableIPv4: true, EnableIPv6: true}
}

// bannerEcho writes "name sni=S cn=C\n" (S and C from TLS, empty
// otherwise), then echoes until EOF.
func bannerEcho(name string) func(net.Conn) {
	return func(c net.Conn) {
		sni, cn := "", ""
		if tc, ok := c.(*tls.Conn); ok {
			cs := tc.ConnectionState()
			sni = cs.ServerName
			if len(cs.PeerCertificates) > 0 {
				cn = cs.PeerCertificates[0].Subject.CommonName
			}
		}
		if _, err := fmt.Fprintf(c, "%s sni=%s cn=%s\n", name, sni, cn); err != nil {
			return
		}
		io.Copy(c, c)
	}
}

// echo copies everything back and half-closes at EOF.
func echo(c net.Conn) {
	io.Copy(c, c)
	halfClose(c)
}

// halfClose ends c's write side; for TLS, close_notify then FIN.
func halfClose(c net.Conn) error {
	if tc, ok := c.(*tls.Conn); ok {
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		c = tc.NetConn()
	}
	return c.(closeWriter).CloseWrite()
}

// upstreamTLS is a server config for a TLS upstream that records client
// certificates signed by p.
func upstreamTLS(t testing.TB, p *testPKI) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.tlsCert(t, "up.internal", "up.internal")},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    p.pool,
	}
}

// --- snapshot builders -------------------------------------------------

func mappingRef(name string) config.Ref {
	return config.Ref{Kind: "TCPMapping", Namespace: "default", Name: name}
}

func backend(name string, up snapshot.Upstream, weight int) snapshot.Backend {
	return snapshot.Backend{Mapping: mappingRef(name), Weight: weight, Upstream: up}
}

func tcpListener(backends ...snapshot.Backend) snapshot.Listener {
	return snapshot.Listener{
		Protocol: snapshot.ProtocolTCP,
		Routes:   []snapshot.Route{{Backends: backends, ConnectTimeout: 5 * time.Second}},
	}
}

func tlsRoute(host string, term *snapshot.TLSServer, backends ...snapshot.Backend) snapshot.Route {
	return snapshot.Route{Host: host, Termination: term, Backends: backends, ConnectTimeout: 5 * time.Second}
}

func tlsListener(routes ...snapshot.Route) snapshot.Listener {
	return snapshot.Listener{Protocol: snapshot.ProtocolTLS, Routes: routes}
}

// --- relay -----------------------------------------------------------

// startRelay listens on 127.0.0.1, fills l's address and port, and serves
// it. It returns the server and the listener as the server knows it (for
// Update). Cleanup closes the server and checks Serve returned nil.
func startRelay(t testing.TB, l snapshot.Listener, opts Options) (*Server, snapshot.Listener) {
	t.Helper()
	return startRelayAt(t, "127.0.0.1", l, opts)
}

// startRelayAt is startRelay on another loopback address.
func startRelayAt(t testing.TB, host string, l snapshot.Listener, opts Options) (*Server, snapshot.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	l.Address = host
	l.Port = ln.Addr().(*net.TCPAddr).Port
	if opts.Dialer == nil {
		opts.Dialer = testDialer{}
	}
	if opts.ServerTLS == nil {
		opts.ServerTLS = testServerTLS
	}
	if opts.ClientTLS == nil {
		opts.ClientTLS = testClientTLS
	}
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	}
	s, err := NewServer(l, opts)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(ioTimeout):
			t.Errorf("Serve did not return after Close")
		}
	})
	return s, l
}

func relayAddr(l snapshot.Listener) string {
	return net.JoinHostPort(l.Address, strconv.Itoa(l.Port))
}

// dial connects to addr with a deadline on the whole conversation.
func dial(t testing.TB, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(ioTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// dialTLS connects and handshakes; the error is the handshake's.
func dialTLS(t testing.TB, addr string, cfg *tls.Config) (*tls.Conn, error) {
	t.Helper()
	tc := tls.Client(dial(t, addr), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	return tc, tc.HandshakeContext(ctx)
}

func readLine(t testing.TB, c net.Conn) string {
	t.Helper()
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read line: %v (got %q)", err, line)
	}
	return line[:len(line)-1]
}

// echoRoundTrip writes msg and expects it back.
func echoRoundTrip(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	if _, err := io.WriteString(c, msg); err != nil {
		t.Fatalf("write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
}

// waitFor polls cond until it holds or a generous deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// --- payloads ----------------------------------------------------------

// writeRandom writes n pseudo-random bytes from seed and returns their
// SHA-256.
func writeRandom(w io.Writer, seed uint64, n int64) ([32]byte, error) {
	var s [32]byte
	s[0] = byte(seed)
	gen := mrand.NewChaCha8(s)
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for n > 0 {
		chunk := buf[:min(int64(len(buf)), n)]
		gen.Read(chunk)
		h.Write(chunk)
		if _, err := w.Write(chunk); err != nil {
			return [32]byte{}, err
		}
		n -= int64(len(chunk))
	}
	return [32]byte(h.Sum(nil)), nil
}

// sendThenHalfClose writes n pseudo-random bytes from seed to c in a
// goroutine, then half-closes c; the channel yields their SHA-256.
func sendThenHalfClose(t testing.TB, c *net.TCPConn, seed uint64, n int64) <-chan [32]byte {
	sent := make(chan [32]byte, 1)
	go func() {
		sum, err := writeRandom(c, seed, n)
		if err != nil {
			t.Errorf("send: %v", err)
		}
		c.CloseWrite()
		sent <- sum
	}()
	return sent
}

// hashAll reads r to EOF and returns the byte count and SHA-256.
func hashAll(r io.Reader) (int64, [32]byte, error) {
	h := sha256.New()
	n, err := io.CopyBuffer(h, r, make([]byte, 256<<10))
	return n, [32]byte(h.Sum(nil)), err
}
