package e2e

import (
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHarness checks the test machinery itself, without tcpmapd: the
// namespaces are isolated, the proxy namespace resolves the fixture names,
// the upstream servers report what they saw, cleanup removes everything.
func TestHarness(t *testing.T) {
	t.Parallel()
	var names []string
	var etcDir string
	t.Run("topology", func(t *testing.T) {
		tp := newTopology(t)
		names = []string{tp.client.name, tp.proxy.name, tp.upstream.name}
		etcDir = tp.etcDir
		ctx := testContext(t, 30*time.Second)
		tp.serveEcho(t, "upstream", 22, false)
		tp.serveEcho(t, "upstream-host-2", 9999, true)

		// /etc/hosts inside `ip netns exec <proxy>` resolves the fixture names.
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.proxy.name, "getent", "hosts", "upstream-host-2").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), hostIP(t, "upstream-host-2")+" ") {
			t.Errorf("getent hosts upstream-host-2 in the proxy ns: %q, %v", out, err)
		}

		// The proxy namespace reaches the upstream; the client does not.
		c, err := tp.proxy.dial(ctx, net.JoinHostPort(hostIP(t, "upstream"), "22"))
		if err != nil {
			t.Fatalf("proxy ns → upstream:22: %v", err)
		}
		g, err := roundTrip(c)
		c.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkGreeting(t, "cleartext", g, want{upstream: "upstream", port: 22, tls: false, sni: "none", clientCert: "none"})
		if c, err := tp.client.dial(ctx, net.JoinHostPort(hostIP(t, "upstream"), "22")); err == nil {
			c.Close()
			t.Error("client ns reaches the upstream ns directly; traffic must go through the proxy")
		}

		// The TLS server reports SNI, client certificate and ALPN.
		raw, err := tp.proxy.dial(ctx, net.JoinHostPort(hostIP(t, "upstream-host-2"), "9999"))
		if err != nil {
			t.Fatal(err)
		}
		_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
		p := testPKI()
		cert, err := tls.X509KeyPair(p.client.certPEM, p.client.keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tc := tls.Client(raw, &tls.Config{ServerName: "my-funny-name", RootCAs: p.pool,
			Certificates: []tls.Certificate{cert}, NextProtos: []string{"x-test"}})
		g, err = roundTrip(tc)
		tc.Close()
		if err != nil {
			t.Fatal(err)
		}
		checkGreeting(t, "tls", g, want{upstream: "upstream-host-2", port: 9999, tls: true, sni: "my-funny-name", clientCert: clientCN})
		if g.ALPN != "x-test" {
			t.Errorf("alpn %q, want x-test", g.ALPN)
		}

		// A bulk exchange between two namespaces, small.
		ln, err := tp.upstream.listen(net.JoinHostPort(upstreamIP, "5000"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		res := make(chan bulkResult, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				res <- bulkResult{err: err}
				return
			}
			defer c.Close()
			res <- exchange(c, 2, 3<<20)
		}()
		bc, err := tp.proxy.dial(ctx, net.JoinHostPort(upstreamIP, "5000"))
		if err != nil {
			t.Fatal(err)
		}
		a := exchange(bc, 1, 3<<20)
		bc.Close()
		b := <-res
		if a.err != nil || b.err != nil {
			t.Fatalf("exchange: %v / %v", a.err, b.err)
		}
		if string(a.sent) != string(b.received) || string(b.sent) != string(a.received) || string(a.sent) == string(b.sent) {
			t.Errorf("exchange hashes: a %x/%x b %x/%x", a.sent, a.received, b.sent, b.received)
		}
	})
	// The subtest's cleanup has run: nothing is left.
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/run/netns", n)); !os.IsNotExist(err) {
			t.Errorf("netns %s still exists after cleanup", n)
		}
	}
	if etcDir != "" {
		if _, err := os.Stat(etcDir); !os.IsNotExist(err) {
			t.Errorf("%s still exists after cleanup", etcDir)
		}
	}
}
