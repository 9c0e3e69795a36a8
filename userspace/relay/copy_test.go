package relay

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/userspace/snapshot"
)

// mode is one of the four ways bytes cross the relay.
type mode struct {
	name          string
	tlsIn, tlsOut bool
}

var modes = []mode{
	{"cleartext", false, false},
	{"originate", false, true},
	{"terminate", true, false},
	{"terminate+originate", true, true},
}

// setupMode starts an upstream running handler and a relay in mode m, and
// returns the server and a function that opens a client connection (TLS
// handshake done when m terminates).
func setupMode(t *testing.T, m mode, handler func(net.Conn)) (*Server, func() net.Conn) {
	t.Helper()
	return setupModeWith(t, m, handler, nil)
}

// setupModeWith is setupMode with edit applied to the listener first.
func setupModeWith(t *testing.T, m mode, handler func(net.Conn), edit func(*snapshot.Listener)) (*Server, func() net.Conn) {
	t.Helper()
	pki := newPKI(t)
	var upCfg *tls.Config
	if m.tlsOut {
		upCfg = upstreamTLS(t, pki)
	}
	up := startUpstream(t, "up", upCfg, handler)
	b := backend("up", up.addr(), 100)
	if m.tlsOut {
		b.Origination = &snapshot.TLSClient{RootCAPEM: pki.caPEM, ServerName: "up.internal"}
	}
	l := tcpListener(b)
	if m.tlsIn {
		cert, key := pki.issue(t, "relay", "relay.example.com")
		l = tlsListener(tlsRoute("relay.example.com", &snapshot.TLSServer{CertPEM: cert, KeyPEM: key}, b))
	}
	if edit != nil {
		edit(&l)
	}
	srv, l := startRelay(t, l, Options{})
	addr := relayAddr(l)
	return srv, func() net.Conn {
		if !m.tlsIn {
			return dial(t, addr)
		}
		tc, err := dialTLS(t, addr, &tls.Config{ServerName: "relay.example.com", RootCAs: pki.pool})
		if err != nil {
			t.Fatalf("client handshake: %v", err)
		}
		return tc
	}
}

// TestPassthroughBothWays sends 64 MiB each way at once and compares
// hashes, in every mode.
func TestPassthroughBothWays(t *testing.T) {
	const size = 64 << 20
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			type result struct {
				n    int64
				sum  [32]byte
				sent [32]byte
				err  error
			}
			fromClient := make(chan result, 1)
			srv, connect := setupMode(t, m, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(60 * time.Second))
				sent := make(chan [32]byte, 1)
				go func() {
					s, _ := writeRandom(c, 2, size)
					halfClose(c)
					sent <- s
				}()
				n, sum, err := hashAll(c)
				fromClient <- result{n: n, sum: sum, sent: <-sent, err: err}
			})
			c := connect()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			clientSent := make(chan [32]byte, 1)
			go func() {
				s, err := writeRandom(c, 1, size)
				if err != nil {
					t.Errorf("client write: %v", err)
				}
				halfClose(c)
				clientSent <- s
			}()
			n, got, err := hashAll(c)
			if err != nil || n != size {
				t.Fatalf("client read %d bytes, err %v; want %d", n, err, size)
			}
			up := <-fromClient
			if up.err != nil || up.n != size {
				t.Fatalf("upstream read %d bytes, err %v; want %d", up.n, up.err, size)
			}
			if got != up.sent {
				t.Errorf("upstream→client: hash differs")
			}
			if want := <-clientSent; up.sum != want {
				t.Errorf("client→upstream: hash differs")
			}
			c.Close()
			waitFor(t, "connection to end", func() bool { return srv.Stats().Listener.Active == 0 })
			st := srv.Stats().Mappings[mappingRef("up")]
			want := MappingStats{Total: 1, BytesToUpstream: size, BytesToClient: size}
			if st != want {
				t.Errorf("mapping stats = %+v, want %+v", st, want)
			}
		})
	}
}

// TestHalfCloseFromClient: the client finishes sending first; the upstream
// answers after reading EOF and the client gets every byte.
func TestHalfCloseFromClient(t *testing.T) {
	const size = 1 << 20
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			sent := make(chan [32]byte, 1)
			_, connect := setupMode(t, m, func(c net.Conn) {
				req, err := io.ReadAll(c)
				if err != nil || string(req) != "request" {
					t.Errorf("upstream read %q, %v; want request then EOF", req, err)
					sent <- [32]byte{}
					return
				}
				s, err := writeRandom(c, 3, size)
				if err != nil {
					t.Errorf("upstream write: %v", err)
				}
				sent <- s
				// Full close, no CloseWrite: the relay must still deliver
				// everything before the FIN.
			})
			c := connect()
			io.WriteString(c, "request")
			if err := halfClose(c); err != nil {
				t.Fatal(err)
			}
			n, got, err := hashAll(c)
			if err != nil || n != size {
				t.Fatalf("client read %d bytes, err %v; want %d then EOF", n, err, size)
			}
			if got != <-sent {
				t.Errorf("response hash differs")
			}
		})
	}
}

// TestHalfCloseFromUpstream: the upstream finishes first; the client keeps
// sending and the upstream gets every byte.
func TestHalfCloseFromUpstream(t *testing.T) {
	const size = 1 << 20
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			type result struct {
				n   int64
				sum [32]byte
				err error
			}
			got := make(chan result, 1)
			_, connect := setupMode(t, m, func(c net.Conn) {
				io.WriteString(c, "banner")
				if err := halfClose(c); err != nil {
					t.Errorf("upstream half-close: %v", err)
				}
				n, sum, err := hashAll(c)
				got <- result{n, sum, err}
			})
			c := connect()
			banner, err := io.ReadAll(c)
			if err != nil || string(banner) != "banner" {
				t.Fatalf("client read %q, %v; want banner then EOF", banner, err)
			}
			want, err := writeRandom(c, 4, size)
			if err != nil {
				t.Fatalf("client write after upstream half-close: %v", err)
			}
			halfClose(c)
			r := <-got
			if r.err != nil || r.n != size || r.sum != want {
				t.Errorf("upstream read %d bytes (hash match %v), err %v; want %d", r.n, r.sum == want, r.err, size)
			}
			if _, err := c.Read(make([]byte, 1)); err != io.EOF {
				t.Errorf("client read after both ends closed: %v, want EOF", err)
			}
		})
	}
}

// TestResetPropagation: a reset on one side reaches the other as a reset.
func TestResetPropagation(t *testing.T) {
	t.Run("upstream resets", func(t *testing.T) {
		up := startUpstream(t, "up", nil, func(c net.Conn) {
			io.ReadFull(c, make([]byte, 1)) // the relay's dial has completed
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		})
		_, l := startRelay(t, tcpListener(backend("up", up.addr(), 100)), Options{})
		c := dial(t, relayAddr(l))
		io.WriteString(c, "x")
		_, err := c.Read(make([]byte, 1))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("client read = %v, want connection reset", err)
		}
	})
	t.Run("client resets", func(t *testing.T) {
		readErr := make(chan error, 1)
		up := startUpstream(t, "up", nil, func(c net.Conn) {
			io.WriteString(c, "hi")
			_, err := io.ReadAll(c)
			readErr <- err
		})
		_, l := startRelay(t, tcpListener(backend("up", up.addr(), 100)), Options{})
		c := dial(t, relayAddr(l))
		io.ReadFull(c, make([]byte, 2)) // the relay has dialed
		c.SetLinger(0)
		c.Close()
		if err := <-readErr; !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("upstream read = %v, want connection reset", err)
		}
	})
}

// expectReset connects to addr and expects the relay to reset the
// connection. The reset can beat the end of connect(2), so a dial failing
// with ECONNRESET counts too.
func expectReset(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, ioTimeout)
	if err == nil {
		defer c.Close()
		c.SetDeadline(time.Now().Add(ioTimeout))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("got %v, want connection reset", err)
	}
}

func TestDialFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nothing listens there now
	dead := snapshot.Upstream{Host: "127.0.0.1", Port: port}
	srv, l := startRelay(t, tcpListener(backend("dead", dead, 100)), Options{})
	expectReset(t, relayAddr(l))
	want := MappingStats{Total: 1, Refusals: Refusals{DialFailed: 1}}
	waitFor(t, "dial failure counted", func() bool {
		return srv.Stats().Mappings[mappingRef("dead")] == want
	})
}

// TestIdleTimeout: in every mode, a quiet connection is closed on both
// sides and counted; a busy one on the same mapping, with bytes flowing
// one way at a time, is not.
func TestIdleTimeout(t *testing.T) {
	const idle = time.Second
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			upClosed := make(chan error, 2)
			srv, connect := setupModeWith(t, m, func(c net.Conn) {
				upClosed <- echoUntilEnd(c)
			}, func(l *snapshot.Listener) { l.Routes[0].IdleTimeout = idle })

			quiet, busy := connect(), connect()
			echoRoundTrip(t, quiet, "hello") // fully connected, then silence
			closed := make(chan error, 1)
			go func() {
				_, err := quiet.Read(make([]byte, 1))
				closed <- err
			}()
			// Keep busy talking for well over the idle timeout: a ping,
			// then the pong, then quiet for far less than the timeout.
			for end := time.Now().Add(2*idle + idle/2); time.Now().Before(end); {
				echoRoundTrip(t, busy, "x")
				time.Sleep(idle / 20)
			}
			if err := <-closed; err != io.EOF {
				t.Errorf("quiet connection read = %v, want EOF from the idle timeout", err)
			}
			if err := <-upClosed; err != nil {
				t.Errorf("upstream of the quiet connection: %v, want EOF", err)
			}
			echoRoundTrip(t, busy, "still here")
			if got := srv.Stats().Mappings[mappingRef("up")].IdleClosed; got != 1 {
				t.Errorf("idle closes = %d, want 1", got)
			}
		})
	}
}

// echoUntilEnd echoes c and returns the read error that ended it, nil
// for EOF.
func echoUntilEnd(c net.Conn) error {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
