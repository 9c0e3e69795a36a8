package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBadInput: each broken configuration is reported with the resource,
// field and reason, and the valid mapping beside it keeps serving.
func TestBadInput(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	tp.serveEcho(t, "cockroach", 7100, false)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	tp.serveEcho(t, "upstream-host-2", 9999, false)

	for _, tc := range []struct {
		name    string
		fixture string
		// problem selects the expected config problem.
		desc    string
		problem func(e logEntry) bool
		// checkOut must appear in `tcpmapd check` output.
		checkOut []string
		// notServed are TLS ports whose discarded mapping must not serve.
		notServed map[int]string
	}{
		{
			name:    "malformed YAML",
			fixture: "bad/malformed.yaml",
			desc:    "naming malformed.yaml and line 7",
			problem: func(e logEntry) bool {
				s := e.str("origin") + " " + e.str("reason")
				return e.str("level") == "error" && strings.Contains(s, "malformed.yaml") &&
					regexp.MustCompile(`malformed\.yaml:7\b|line 7\b`).MatchString(s)
			},
			checkOut: []string{"malformed.yaml"},
		},
		{
			name:    "unknown field",
			fixture: "bad/unknown-field.yaml",
			desc:    "naming spec.idle_timout_ms",
			problem: func(e logEntry) bool {
				return e.str("level") == "error" &&
					(e.str("field") == "spec.idle_timout_ms" || strings.Contains(e.str("reason"), "spec.idle_timout_ms"))
			},
			checkOut: []string{"TCPMapping default/typo", "idle_timout_ms"},
		},
		{
			name:    "missing secret",
			fixture: "bad/missing-secret.yaml",
			desc:    "naming Secret nosuchsecret",
			problem: func(e logEntry) bool {
				return e.str("level") == "error" && strings.Contains(e.problemText(), "nosuchsecret")
			},
			checkOut:  []string{"nosuchsecret"},
			notServed: map[int]string{2222: "my-host-1"},
		},
		{
			name:    "bad PEM",
			fixture: "bad/bad-pem.yaml",
			desc:    "for Secret default/badpem or TLSContext default/ctx-badpem",
			problem: func(e logEntry) bool {
				r := e.str("resource")
				return e.str("level") == "error" && (r == "Secret default/badpem" || r == "TLSContext default/ctx-badpem" ||
					strings.Contains(e.str("reason"), "badpem"))
			},
			checkOut:  []string{"badpem"},
			notServed: map[int]string{2223: "my-host-2"},
		},
		{
			name:    "duplicate port claim",
			fixture: "bad/duplicate-port.yaml",
			desc:    "for one of plain-7100 / sni-7100 naming the other",
			problem: func(e logEntry) bool {
				r, why := e.str("resource"), e.str("reason")
				return e.str("level") == "error" &&
					(r == "TCPMapping default/plain-7100" && strings.Contains(why, "sni-7100") ||
						r == "TCPMapping default/sni-7100" && strings.Contains(why, "plain-7100"))
			},
			checkOut: []string{"plain-7100", "sni-7100"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testContext(t, 60*time.Second)
			dir := configDir(t, []string{"bad/good-7000.yaml", tc.fixture}, nil)
			d := tp.start(t, daemonArgs([]string{dir})...)
			if p := d.findProblem(t, tc.desc, tc.problem); p != nil {
				t.Logf("reported: %s", p.problemText())
			}
			g, err := tp.reach(ctx, proxyAddr(7000))
			if err != nil {
				t.Errorf("good mapping on port 7000: %v", err)
			} else {
				checkGreeting(t, "good mapping", g, want{upstream: "upstream", port: 7000})
			}
			for port, sni := range tc.notServed {
				if c, err := tp.connectTLS(ctx, proxyAddr(port), sni); err == nil {
					g, rerr := roundTrip(c)
					c.Close()
					t.Errorf("port %d sni %s is served (%q, %v); its mapping should have been discarded", port, sni, g.Raw, rerr)
				}
			}
			out, code := tp.check(t, dir)
			if code != 1 {
				t.Errorf("tcpmapd check: exit %d, want 1; output:\n%s", code, out)
			}
			for _, s := range tc.checkOut {
				if !strings.Contains(out, s) {
					t.Errorf("tcpmapd check output lacks %q:\n%s", s, out)
				}
			}
		})
	}
}

// TestCheckCommand: `tcpmapd check` exits 0 on a clean configuration and
// prints its listeners; it exits 1 listing every problem of a broken one.
func TestCheckCommand(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)

	clean := configDir(t, []string{"docs/terminate-originate.yaml"}, nil)
	out, code := tp.check(t, clean)
	if code != 0 {
		t.Errorf("check on a clean config: exit %d, want 0; output:\n%s", code, out)
	}
	if !strings.Contains(out, "2222") {
		t.Errorf("check on a clean config does not list listener port 2222:\n%s", out)
	}

	bad := configDir(t, []string{"bad/good-7000.yaml", "bad/malformed.yaml", "bad/unknown-field.yaml",
		"bad/missing-secret.yaml", "bad/bad-pem.yaml", "emissary/missing-fields.yaml"}, nil)
	out, code = tp.check(t, bad)
	if code != 1 {
		t.Errorf("check on a broken config: exit %d, want 1; output:\n%s", code, out)
	}
	for _, s := range []string{"malformed.yaml", "idle_timout_ms", "nosuchsecret", "badpem",
		"TCPMapping default/noport", "TCPMapping default/noservice"} {
		if !strings.Contains(out, s) {
			t.Errorf("check output lacks %q:\n%s", s, out)
		}
	}
	// A single file works as well as a directory.
	out, code = tp.check(t, clean+"/terminate-originate.yaml", clean+"/secrets.yaml")
	if code != 0 {
		t.Errorf("check on clean files: exit %d, want 0; output:\n%s", code, out)
	}
}

// TestTLSHandshakeRobustness: what a client sends (or does not) before or
// during the TLS handshake affects only its own connection.
func TestTLSHandshakeRobustness(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	dir := configDir(t, []string{"bad/tls-2222.yaml"}, nil)
	d := tp.start(t, daemonArgs([]string{dir}, "--handshake-timeout", "2s")...)
	addr := proxyAddr(2222)
	hello := clientHello(t, "my-host-1")

	good := func(ctx context.Context, t *testing.T) {
		t.Helper()
		g, err := tp.reachTLS(ctx, addr, "my-host-1")
		if err != nil {
			t.Fatalf("good TLS connection: %v", err)
		}
		checkGreeting(t, "good TLS connection", g, want{upstream: "upstream-host-1", port: 9999})
	}

	t.Run("garbage instead of ClientHello", func(t *testing.T) {
		ctx := testContext(t, 60*time.Second)
		// A good connection open across the garbage.
		live, err := tp.connectTLS(ctx, addr, "my-host-1")
		if err != nil {
			t.Fatalf("good TLS connection: %v", err)
		}
		defer live.Close()
		if _, err := roundTrip(live); err != nil {
			t.Fatalf("good TLS connection: %v", err)
		}
		random := make([]byte, 4096)
		_, _ = rand.NewChaCha8([32]byte{1, 2, 3}).Read(random)
		for name, garbage := range map[string][]byte{
			"HTTP request": []byte("GET / HTTP/1.1\r\nHost: my-host-1\r\n\r\n"),
			"random bytes": random,
			"SSH banner":   []byte("SSH-2.0-OpenSSH_9.6\r\n"),
		} {
			c, err := tp.connect(ctx, addr)
			if err != nil {
				t.Fatalf("%s: connect: %v", name, err)
			}
			_, _ = c.Write(garbage) // may fail if the proxy already closed
			if err := waitClosed(c, 10*time.Second); err != nil {
				t.Errorf("%s: %v", name, err)
			}
			c.Close()
			if err := echo(live); err != nil {
				t.Fatalf("after %s, the live good connection broke: %v", name, err)
			}
		}
		good(ctx, t)
	})

	t.Run("client gone mid-handshake", func(t *testing.T) {
		ctx := testContext(t, 60*time.Second)
		for name, part := range map[string][]byte{
			"half a ClientHello":       hello[:len(hello)/2],
			"a whole ClientHello":      hello,
			"a TLS record header only": hello[:5],
		} {
			c, err := tp.connect(ctx, addr)
			if err != nil {
				t.Fatalf("%s: connect: %v", name, err)
			}
			if _, err := c.Write(part); err != nil {
				t.Fatalf("%s: write: %v", name, err)
			}
			c.Close()
		}
		// Also a reset instead of a FIN.
		c, err := tp.connect(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = c.Write(hello[:len(hello)/3])
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()

		good(ctx, t)
		if !d.alive() {
			t.Fatal("tcpmapd exited")
		}
	})

	t.Run("silent client closed after handshake timeout", func(t *testing.T) {
		ctx := testContext(t, 60*time.Second)
		for name, send := range map[string][]byte{
			"nothing":               nil,
			"a partial ClientHello": hello[:len(hello)/2],
		} {
			c, err := tp.connect(ctx, addr)
			if err != nil {
				t.Fatalf("%s: connect: %v", name, err)
			}
			start := time.Now()
			if _, err := c.Write(send); err != nil {
				t.Fatalf("%s: write: %v", name, err)
			}
			err = waitClosed(c, 15*time.Second)
			elapsed := time.Since(start)
			c.Close()
			if err != nil {
				t.Errorf("sending %s: %v", name, err)
				continue
			}
			// A generous window around --handshake-timeout 2s: this checks
			// the deadline exists, not its precision.
			if elapsed < 1500*time.Millisecond || elapsed > 6*time.Second {
				t.Errorf("sending %s: closed after %v, want about 2s (1.5s..6s)", name, elapsed)
			} else {
				t.Logf("sending %s: closed after %v", name, elapsed.Round(time.Millisecond))
			}
		}
		good(ctx, t)
	})

	for _, e := range d.logs() {
		switch e.str("level") {
		case "panic", "dpanic", "fatal":
			t.Errorf("tcpmapd logged at %s: %v", e.str("level"), e)
		}
	}
}

// waitClosed reads until the peer closes the connection (EOF or reset),
// discarding what arrives (a TLS alert, say). It fails if max passes first.
func waitClosed(c net.Conn, max time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(max))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	switch {
	case err == nil:
		return nil // EOF
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("connection still open after " + max.String())
	default:
		return nil // reset: closed too
	}
}

// clientHello returns the bytes of a real TLS ClientHello for sni.
func clientHello(t testing.TB, sni string) []byte {
	t.Helper()
	cc := &captureConn{}
	_ = tls.Client(cc, &tls.Config{ServerName: sni, InsecureSkipVerify: true}).Handshake()
	if cc.buf.Len() < 50 || cc.buf.Bytes()[0] != 0x16 {
		t.Fatalf("captured %d bytes, not a ClientHello", cc.buf.Len())
	}
	return bytes.Clone(cc.buf.Bytes())
}

// captureConn records what is written and reads EOF.
type captureConn struct{ buf bytes.Buffer }

func (c *captureConn) Read([]byte) (int, error)         { return 0, io.EOF }
func (c *captureConn) Write(p []byte) (int, error)      { return c.buf.Write(p) }
func (c *captureConn) Close() error                     { return nil }
func (c *captureConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *captureConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *captureConn) SetDeadline(time.Time) error      { return nil }
func (c *captureConn) SetReadDeadline(time.Time) error  { return nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

// TestListenerPortInUse: a port the daemon cannot bind is logged as
// "listener failed" with its key, and the other listeners serve.
func TestListenerPortInUse(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	// Someone else holds port 7001 in the proxy namespace.
	squatter, err := tp.proxy.listen(":7001")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()

	dir := configDir(t, []string{"bad/good-7000.yaml", "lifecycle/added.yaml"}, nil)
	d := tp.launch(t, daemonArgs([]string{dir})...)
	e, err := d.waitLog(ctx, `"listener failed" for port 7001`, func(e logEntry) bool {
		if e.str("msg") != "listener failed" {
			return false
		}
		for k := range e {
			if strings.Contains(e.str(k), ":7001") {
				return true
			}
		}
		return false
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("logged: %v", e)
	g, err := poll(ctx, 10*time.Second, func(ctx context.Context) (greeting, error) {
		return tp.reach(ctx, proxyAddr(7000))
	})
	if err != nil {
		t.Fatalf("port 7000 beside the failed listener: %v", err)
	}
	checkGreeting(t, "port 7000", g, want{upstream: "upstream", port: 7000})

	// Once the port is free, a reload opens the listener.
	squatter.Close()
	d.signal(syscall.SIGHUP)
	g, err = poll(ctx, 10*time.Second, func(ctx context.Context) (greeting, error) {
		return tp.reach(ctx, proxyAddr(7001))
	})
	if err != nil {
		t.Fatalf("port 7001 after it was freed and SIGHUP: %v", err)
	}
	checkGreeting(t, "port 7001", g, want{upstream: "cockroach", port: 7001})
	if !d.alive() {
		t.Error("tcpmapd exited")
	}
}
