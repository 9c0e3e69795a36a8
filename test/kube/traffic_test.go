package kube

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstream is an echo server on loopback. Each connection starts with a
// line naming the connection ("id\n"); the server answers with its own
// name ("backend=A\n") and then echoes everything, recording the SHA-256
// of what it received once the client half-closes.
type upstream struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup

	mu  sync.Mutex
	got map[string]string // connection id → hex SHA-256 of the bytes received
}

func startUpstream(t *testing.T, name string) *upstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &upstream{name: name, ln: ln, got: make(map[string]string)}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		u.wg.Wait()
	})
	return u
}

func (u *upstream) addr() string { return u.ln.Addr().String() }

func (u *upstream) serve(c net.Conn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Minute))
	br := bufio.NewReader(c)
	id, err := br.ReadString('\n')
	if err != nil {
		return
	}
	if _, err := fmt.Fprintf(c, "backend=%s\n", u.name); err != nil {
		return
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(c, h), br); err != nil {
		return
	}
	u.mu.Lock()
	u.got[strings.TrimSpace(id)] = hex.EncodeToString(h.Sum(nil))
	u.mu.Unlock()
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

func (u *upstream) received(id string) string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.got[id]
}

// dialer opens a connection through tcpmapd; tls is the handshake's
// state, nil for cleartext.
type dialer func(ctx context.Context) (net.Conn, *tls.ConnectionState, error)

func plainDialer(addr string) dialer {
	return func(ctx context.Context) (net.Conn, *tls.ConnectionState, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		return c, nil, err
	}
}

func tlsDialer(addr, sni string, roots *x509.CertPool) dialer {
	return clientCertDialer(addr, sni, roots)
}

// clientCertDialer is tlsDialer presenting certs, if any, as the client
// certificate, even when the server names other CAs (so that a foreign
// certificate is refused by the server, not withheld by the client).
func clientCertDialer(addr, sni string, roots *x509.CertPool, certs ...tls.Certificate) dialer {
	return func(ctx context.Context) (net.Conn, *tls.ConnectionState, error) {
		cfg := &tls.Config{ServerName: sni, RootCAs: roots, MinVersion: tls.VersionTLS12}
		if len(certs) > 0 {
			cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &certs[0], nil }
		}
		d := tls.Dialer{Config: cfg}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		st := c.(*tls.Conn).ConnectionState()
		return c, &st, nil
	}
}

var idSeq struct {
	sync.Mutex
	n int
}

func nextID(prefix string) string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return fmt.Sprintf("%s-%d", prefix, idSeq.n)
}

// opened is a connection through tcpmapd after the greeting.
type opened struct {
	id      string
	conn    net.Conn
	br      *bufio.Reader
	backend string
	tls     *tls.ConnectionState
}

// open dials and exchanges the greeting: which backend answered.
func open(ctx context.Context, dial dialer, prefix string) (*opened, error) {
	c, st, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	o := &opened{id: nextID(prefix), conn: c, br: bufio.NewReader(c), tls: st}
	if _, err := fmt.Fprintf(c, "%s\n", o.id); err != nil {
		c.Close()
		return nil, err
	}
	line, err := o.br.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	o.backend = strings.TrimPrefix(strings.TrimSpace(line), "backend=")
	return o, nil
}

// probe opens a connection, sends a little, and closes: which backend
// (and certificate) a new connection gets now.
func probe(ctx context.Context, dial dialer) (*opened, error) {
	o, err := open(ctx, dial, "probe")
	if err != nil {
		return nil, err
	}
	defer o.conn.Close()
	if _, err := o.conn.Write([]byte("ping")); err != nil {
		return nil, err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(o.br, buf); err != nil || string(buf) != "ping" {
		return nil, fmt.Errorf("echo %q: %v", buf, err)
	}
	return o, nil
}

// stream keeps a connection busy until stopped, then half-closes and
// checks that the bytes echoed back, and the bytes the upstream received,
// are the bytes sent.
type stream struct {
	o      *opened
	stop   chan struct{}
	result chan streamResult
	sent   atomic.Int64 // bytes written so far
}

// streamResult is the SHA-256 of the bytes sent, or why the connection
// broke.
type streamResult struct {
	sum string
	err error
}

func startStream(ctx context.Context, dial dialer, prefix string) (*stream, error) {
	o, err := open(ctx, dial, prefix)
	if err != nil {
		return nil, err
	}
	s := &stream{o: o, stop: make(chan struct{}), result: make(chan streamResult, 1)}
	go s.run()
	return s, nil
}

func (s *stream) run() {
	defer s.o.conn.Close()
	sent, recv := sha256.New(), sha256.New()
	readDone := make(chan error, 1)
	go func() {
		_, err := io.Copy(recv, s.o.br)
		readDone <- err
	}()
	chunk := make([]byte, 4096)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-s.stop:
			running = false
		case <-tick.C:
			_, _ = rand.Read(chunk)
			if _, err := s.o.conn.Write(chunk); err != nil {
				s.result <- streamResult{err: fmt.Errorf("%s: write after %d bytes: %w", s.o.id, s.sent.Load(), err)}
				return
			}
			sent.Write(chunk)
			s.sent.Add(int64(len(chunk)))
		}
	}
	cw, ok := s.o.conn.(interface{ CloseWrite() error })
	if !ok {
		s.result <- streamResult{err: fmt.Errorf("%s: no CloseWrite", s.o.id)}
		return
	}
	if err := cw.CloseWrite(); err != nil {
		s.result <- streamResult{err: fmt.Errorf("%s: close write: %w", s.o.id, err)}
		return
	}
	if err := <-readDone; err != nil {
		s.result <- streamResult{err: fmt.Errorf("%s: read after %d bytes sent: %w", s.o.id, s.sent.Load(), err)}
		return
	}
	if a, b := hex.EncodeToString(sent.Sum(nil)), hex.EncodeToString(recv.Sum(nil)); a != b {
		s.result <- streamResult{err: fmt.Errorf("%s: echoed bytes differ from the %d sent (sha256 %s vs %s)", s.o.id, s.sent.Load(), b, a)}
		return
	}
	s.result <- streamResult{sum: hex.EncodeToString(sent.Sum(nil))}
}

// finish stops the stream and returns the SHA-256 of what it sent, or
// why the connection broke.
func (s *stream) finish(ctx context.Context) (string, error) {
	close(s.stop)
	select {
	case r := <-s.result:
		return r.sum, r.err
	case <-ctx.Done():
		return "", fmt.Errorf("%s: %w", s.o.id, ctx.Err())
	}
}

// serverCert is a certificate for the TLS mappings, issued by ca.
type serverCert struct {
	certPEM, keyPEM []byte
	serial          *big.Int
}

type authority struct {
	cert *x509.Certificate
	key  any
	pool *x509.CertPool
}

func newAuthority(t *testing.T) *authority {
	t.Helper()
	k := ecKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tcpmap e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return &authority{cert: c, key: k, pool: pool}
}

func (a *authority) issue(t *testing.T, serial int64, names ...string) serverCert {
	t.Helper()
	k := ecKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, &k.PublicKey, a.key)
	if err != nil {
		t.Fatal(err)
	}
	kb := pkcs8(t, k)
	return serverCert{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(kb),
		serial:  big.NewInt(serial),
	}
}
