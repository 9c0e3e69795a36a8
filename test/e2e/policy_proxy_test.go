package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// PROXY protocol (issue 3, item 4): listeners that require a PROXY v1 or v2
// header (Listener protocolStack with PROXY, or the ambassador Module's
// use_proxy_proto), and the tcpmap.io/send-proxy-protocol annotation that
// passes the client's address on to the upstream.

// proxyHeaderTimeout is how long tcpmapd waits for a PROXY header (the
// relay's DefaultProxyHeaderTimeout); a client that sends none must be
// closed within it, plus slack.
const proxyHeaderTimeout = 5 * time.Second

// proxyHeader builds a PROXY header of version 1 or 2 for a TCP source and
// destination given as "ip:port".
func proxyHeader(t testing.TB, version byte, src, dst string) []byte {
	t.Helper()
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	proto := proxyproto.TCPv4
	if s.Addr().Is6() {
		proto = proxyproto.TCPv6
	}
	h := &proxyproto.Header{
		Version:           version,
		Command:           proxyproto.PROXY,
		TransportProtocol: proto,
		SourceAddr:        net.TCPAddrFromAddrPort(s),
		DestinationAddr:   net.TCPAddrFromAddrPort(d),
	}
	b, err := h.Format()
	if err != nil {
		t.Fatalf("format PROXY v%d header %s → %s: %v", version, src, dst, err)
	}
	return b
}

// proxySeen is what a PROXY-aware upstream reports in its first line:
//
//	upstream=<name> proxy=<v1|v2|none|error> src=<ip:port> dst=<ip:port>
type proxySeen struct {
	upstream, proxy, src, dst string
	raw                       string
}

func parseProxySeen(line string) (proxySeen, error) {
	s := proxySeen{raw: strings.TrimSpace(line)}
	for _, f := range strings.Fields(line) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "upstream":
			s.upstream = v
		case "proxy":
			s.proxy = v
		case "src":
			s.src = v
		case "dst":
			s.dst = v
		}
	}
	if s.upstream == "" || s.proxy == "" {
		return s, fmt.Errorf("bad upstream line %q", line)
	}
	return s, nil
}

// serveProxyAware starts an upstream that parses an optional PROXY header
// with go-proxyproto, reports it in its first line, then echoes the bytes
// after the header.
func (tp *topology) serveProxyAware(t testing.TB, host string, port int) *upstreamServer {
	t.Helper()
	return tp.serveFunc(t, host, port, false, func(c net.Conn, _ *tls.ConnectionState) {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		br := bufio.NewReader(c)
		h, err := proxyproto.Read(br)
		switch {
		case err == proxyproto.ErrNoProxyProtocol:
			fmt.Fprintf(c, "upstream=%s proxy=none\n", host)
		case err != nil:
			fmt.Fprintf(c, "upstream=%s proxy=error err=%s\n", host, strings.ReplaceAll(err.Error(), " ", "_"))
			return
		default:
			src, dst, ok := h.TCPAddrs()
			if !ok {
				fmt.Fprintf(c, "upstream=%s proxy=error err=not_tcp_%v\n", host, h.TransportProtocol)
				return
			}
			fmt.Fprintf(c, "upstream=%s proxy=v%d src=%s dst=%s\n", host, h.Version, src, dst)
		}
		_, _ = io.Copy(c, br)
	})
}

// sameAddrPort compares "ip:port" strings after unmapping v4-in-v6
// addresses, so that 203.0.113.7 sent in a TCP6 header still matches.
func sameAddrPort(a, b string) bool {
	pa, ea := netip.ParseAddrPort(a)
	pb, eb := netip.ParseAddrPort(b)
	return ea == nil && eb == nil && pa.Addr().Unmap() == pb.Addr().Unmap() && pa.Port() == pb.Port()
}

// readProxySeen reads and parses the upstream's first line.
func readProxySeen(c net.Conn) (proxySeen, error) {
	line, err := readLine(c)
	if err != nil {
		return proxySeen{}, fmt.Errorf("read upstream line (got %q): %w", line, err)
	}
	return parseProxySeen(line)
}

// TestPolicyProxyProtocol: PROXY v1 and v2 headers (TCP4 and TCP6 sources)
// sent by a client to [PROXY, TCP] and [PROXY, TLS, TCP] listeners are
// parsed, and the upstream, with tcpmap.io/send-proxy-protocol v1 or v2,
// sees the client's original address and port. Garbage and missing
// headers close only their own connection.
func TestPolicyProxyProtocol(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 80*time.Second)
	v2up := tp.serveProxyAware(t, "upstream", 7700)
	tp.serveProxyAware(t, "cockroach", 7701)
	tp.serveProxyAware(t, "upstream-host-1", 7702)
	d := tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/proxy-in.yaml"}, nil)})...)

	dst4 := func(port int) string { return net.JoinHostPort(proxyA, strconv.Itoa(port)) }
	dst6 := func(port int) string { return net.JoinHostPort(proxyIP6, strconv.Itoa(port)) }

	t.Run("cleartext", func(t *testing.T) {
		for _, tc := range []struct {
			name     string
			port     int
			version  byte
			src, dst string
			upstream string
			sent     string // the version the mapping sends upstream
		}{
			{"v1 TCP4 in, v2 out", 7700, 1, "203.0.113.7:40000", dst4(7700), "upstream", "v2"},
			{"v2 TCP4 in, v2 out", 7700, 2, "203.0.113.8:40001", dst4(7700), "upstream", "v2"},
			{"v2 TCP6 in, v2 out", 7700, 2, "[2001:db8::7]:40002", dst6(7700), "upstream", "v2"},
			{"v1 TCP4 in, v1 out", 7701, 1, "203.0.113.9:40003", dst4(7701), "cockroach", "v1"},
			{"v1 TCP6 in, v1 out", 7701, 1, "[2001:db8::9]:40004", dst6(7701), "cockroach", "v1"},
			{"v2 TCP4 in, v1 out", 7701, 2, "198.51.100.1:65535", dst4(7701), "cockroach", "v1"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := tp.connect(ctx, proxyAddr(tc.port))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				// Header and payload in one write, as a load balancer
				// forwarding a client's first segment may send them.
				payload := fmt.Sprintf("ping-after-header-%d\n", tc.port)
				if _, err := c.Write(append(proxyHeader(t, tc.version, tc.src, tc.dst), payload...)); err != nil {
					t.Fatal(err)
				}
				seen, err := readProxySeen(c)
				if err != nil {
					t.Fatal(err)
				}
				if seen.upstream != tc.upstream || seen.proxy != tc.sent || !sameAddrPort(seen.src, tc.src) {
					t.Errorf("upstream reported %q; want upstream=%s proxy=%s src=%s", seen.raw, tc.upstream, tc.sent, tc.src)
				} else {
					t.Logf("upstream reported %q", seen.raw)
				}
				got := make([]byte, len(payload))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != payload {
					t.Errorf("echo of the payload sent with the header: %q, %v; want %q", got, err, payload)
				}
				if err := echo(c); err != nil {
					t.Error(err)
				}
			})
		}
	})

	t.Run("TLS after the header", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			version byte
			src     string
			dst     string
		}{
			{"v2 TCP4", 2, "203.0.113.10:40005", dst4(7702)},
			{"v1 TCP6", 1, "[2001:db8::10]:40006", dst6(7702)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tc2, err := tp.proxyTLS(ctx, proxyAddr(7702), proxyHeader(t, tc.version, tc.src, tc.dst),
					&tls.Config{ServerName: "my-host-1", RootCAs: testPKI().pool})
				if err != nil {
					t.Fatal(err)
				}
				defer tc2.Close()
				seen, err := readProxySeen(tc2)
				if err != nil {
					t.Fatal(err)
				}
				if seen.upstream != "upstream-host-1" || seen.proxy != "v2" || !sameAddrPort(seen.src, tc.src) {
					t.Errorf("upstream reported %q; want upstream=upstream-host-1 proxy=v2 src=%s", seen.raw, tc.src)
				}
				if err := echo(tc2); err != nil {
					t.Error(err)
				}
			})
		}
		checkUnrecognizedName(t, "PROXY then TLS with an unknown name", func() error {
			c, err := tp.proxyTLS(ctx, proxyAddr(7702), proxyHeader(t, 2, "203.0.113.11:40007", dst4(7702)),
				&tls.Config{ServerName: "nobody.example", InsecureSkipVerify: true})
			if err == nil {
				c.Close()
			}
			return err
		})
	})

	t.Run("rejected headers", func(t *testing.T) {
		// A good connection, opened first and used again after every
		// rejection: a bad header closes its own connection only.
		good, err := tp.connect(ctx, proxyAddr(7700))
		if err != nil {
			t.Fatal(err)
		}
		defer good.Close()
		if _, err := good.Write(proxyHeader(t, 1, "203.0.113.20:41000", dst4(7700))); err != nil {
			t.Fatal(err)
		}
		if seen, err := readProxySeen(good); err != nil || !sameAddrPort(seen.src, "203.0.113.20:41000") {
			t.Fatalf("good connection: upstream reported %q, %v", seen.raw, err)
		}
		if err := echo(good); err != nil {
			t.Fatalf("good connection: %v", err)
		}
		base := v2up.accepted.Load()

		// Silent clients wait out the header timeout, concurrently with
		// the garbage below.
		var wg sync.WaitGroup
		defer wg.Wait()
		for _, s := range []struct{ name, prefix string }{
			{"no header at all", ""},
			// A v1 header in pieces is waited for (the relay is
			// tolerant, as the spec recommends) until the header
			// deadline closes it.
			{"a v1 header cut short", "PROXY TCP4 203.0.113.21 "},
			{"a v2 signature only", "\r\n\r\n\x00\r\nQUIT\n"},
		} {
			c, err := tp.connect(ctx, proxyAddr(7700))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, s.prefix); err != nil {
				c.Close()
				t.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				elapsed, err := expectClosed(c, proxyHeaderTimeout+5*time.Second)
				if err != nil {
					t.Errorf("%s: %v (header timeout %v)", s.name, err, proxyHeaderTimeout)
				} else {
					t.Logf("%s: closed after %v", s.name, elapsed)
				}
			}()
		}

		v2bad := proxyHeader(t, 2, "203.0.113.22:41001", dst4(7700))
		v2bad[12] = 0x31 // version 3
		v2long := proxyHeader(t, 2, "203.0.113.23:41002", dst4(7700))
		v2long[14], v2long[15] = 0xff, 0xff // claims 65535 address bytes
		for _, g := range []struct{ name, data string }{
			{"not a header", "ping-without-header\n"},
			{"a TLS ClientHello", "\x16\x03\x01\x00\x05hello"},
			{"v1 with a bad address", "PROXY TCP4 not-an-ip 10.231.1.1 40000 7700\r\nping\n"},
			{"v1 with a bad port", "PROXY TCP4 203.0.113.24 10.231.1.1 70000 7700\r\nping\n"},
			{"v1 with an unknown protocol", "PROXY SCTP4 203.0.113.25 10.231.1.1 40000 7700\r\nping\n"},
			{"v1 over 107 bytes", "PROXY TCP4 " + strings.Repeat("1", 120) + "\r\nping\n"},
			{"v2 version 3", string(v2bad) + "ping\n"},
			{"v2 length past the data", string(v2long[:16]) + "ping\n"},
			{"garbage", "GARBAGE\x00\xff\xfe NOT A PROXY HEADER\r\n\r\n"},
		} {
			c, err := tp.connect(ctx, proxyAddr(7700))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, g.data); err != nil {
				// The proxy may already have closed; expectClosed sees it.
				t.Logf("%s: write: %v", g.name, err)
			}
			// A complete but bad header is refused when read; "v2 length
			// past the data" waits for bytes that never come, so it may
			// take the header timeout.
			if _, err := expectClosed(c, proxyHeaderTimeout+5*time.Second); err != nil {
				t.Errorf("%s: %v", g.name, err)
			}
			c.Close()
			if err := echo(good); err != nil {
				t.Fatalf("good connection after %s: %v", g.name, err)
			}
		}
		wg.Wait()
		if got := v2up.accepted.Load() - base; got != 0 {
			t.Errorf("the upstream accepted %d connections for rejected headers, want 0", got)
		}
		if err := echo(good); err != nil {
			t.Errorf("good connection at the end: %v", err)
		}
		// Each refusal is logged with its reason (and counted under it).
		for _, reason := range []string{"missing", "invalid", "timeout"} {
			lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := d.waitLog(lctx, "PROXY header refused, reason "+reason, func(e logEntry) bool {
				return strings.Contains(e.str("msg"), "PROXY") && strings.Contains(e.str("msg"), "refused") && e.str("reason") == reason
			})
			cancel()
			if err != nil {
				t.Error(err)
			}
		}
	})
}

// proxyTLS connects to addr from the client namespace, sends header, then
// completes a TLS handshake with conf.
func (tp *topology) proxyTLS(ctx context.Context, addr string, header []byte, conf *tls.Config) (*tls.Conn, error) {
	c, err := tp.connect(ctx, addr)
	if err != nil {
		return nil, err
	}
	if _, err := c.Write(header); err != nil {
		c.Close()
		return nil, err
	}
	tc := tls.Client(c, conf)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tls handshake after a PROXY header to %s with sni %q: %w", addr, conf.ServerName, err)
	}
	return tc, nil
}

// TestPolicyModuleProxyProto: the ambassador Module's use_proxy_proto: true
// makes every listener, cleartext and TLS, require a PROXY header. The
// mappings send none upstream, so the upstream sees exactly the client's
// bytes after the header.
func TestPolicyModuleProxyProto(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	plain := tp.serveProxyAware(t, "upstream", 7800)
	terminated := tp.serveEcho(t, "upstream-host-1", 7801, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"policy/module-proxy.yaml"}, nil)})...)

	t.Run("cleartext with a header", func(t *testing.T) {
		c, err := tp.connect(ctx, proxyAddr(7800))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		payload := "ping-after-header\n"
		if _, err := c.Write(append(proxyHeader(t, 2, "203.0.113.30:42000", proxyAddr(7800)), payload...)); err != nil {
			t.Fatal(err)
		}
		seen, err := readProxySeen(c)
		if err != nil {
			t.Fatal(err)
		}
		// The upstream saw no PROXY header: the proxy consumed it.
		if seen.upstream != "upstream" || seen.proxy != "none" {
			t.Errorf("upstream reported %q; want upstream=upstream proxy=none", seen.raw)
		}
		got := make([]byte, len(payload))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != payload {
			t.Errorf("echo of the payload sent with the header: %q, %v; want %q", got, err, payload)
		}
	})
	t.Run("cleartext without a header", func(t *testing.T) {
		base := plain.accepted.Load()
		c, err := tp.connect(ctx, proxyAddr(7800))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "ping-without-header\n"); err != nil {
			t.Logf("write: %v", err)
		}
		if _, err := expectClosed(c, proxyHeaderTimeout+5*time.Second); err != nil {
			t.Errorf("no header on a use_proxy_proto listener: %v", err)
		}
		if got := plain.accepted.Load() - base; got != 0 {
			t.Errorf("the upstream accepted %d connections, want 0", got)
		}
	})
	t.Run("TLS with a header", func(t *testing.T) {
		c, err := tp.proxyTLS(ctx, proxyAddr(7801), proxyHeader(t, 1, "203.0.113.31:42001", proxyAddr(7801)),
			&tls.Config{ServerName: "my-host-1", RootCAs: testPKI().pool})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		g, err := roundTrip(c)
		if err != nil {
			t.Fatal(err)
		}
		checkGreeting(t, "my-host-1", g, want{upstream: "upstream-host-1", port: 7801, tls: false})
	})
	t.Run("TLS without a header", func(t *testing.T) {
		base := terminated.accepted.Load()
		c, err := tp.connectTLS(ctx, proxyAddr(7801), "my-host-1")
		if err == nil {
			c.Close()
			t.Fatal("TLS handshake without a PROXY header succeeded on a use_proxy_proto listener")
		}
		t.Logf("refused as expected: %v", err)
		if got := terminated.accepted.Load() - base; got != 0 {
			t.Errorf("the upstream accepted %d connections, want 0", got)
		}
	})
}
