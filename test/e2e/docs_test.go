package e2e

import (
	"context"
	"crypto/tls"
	"testing"
	"time"
)

// The examples of aes-tcpmapping.md (the same YAML as
// emissary-2.2-tcpmapping.txt), loaded unchanged from testdata/docs, behave
// as the text says.

func TestDocsSSH(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 22, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/ssh.yaml"}, nil)})...)

	g, err := tp.reach(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatalf("port 2222: %v", err)
	}
	checkGreeting(t, "port 2222", g, want{upstream: "upstream", port: 22, tls: false})
}

func TestDocsCockroach(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "cockroach", 26257, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/cockroach.yaml"}, nil)})...)

	g, err := tp.reach(ctx, proxyAddr(26257))
	if err != nil {
		t.Fatalf("port 26257: %v", err)
	}
	checkGreeting(t, "port 26257", g, want{upstream: "cockroach", port: 26257, tls: false})
}

func TestDocsTerminate(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	tp.serveEcho(t, "upstream-host-2", 9999, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/terminate.yaml"}, nil)})...)

	for _, tc := range []struct{ sni, upstream string }{
		{"my-host-1", "upstream-host-1"},
		{"my-host-2", "upstream-host-2"},
	} {
		g, err := tp.reachTLS(ctx, proxyAddr(2222), tc.sni)
		if err != nil {
			t.Errorf("sni %s: %v", tc.sni, err)
			continue
		}
		// The upstream sees cleartext: the proxy terminated the client's TLS.
		checkGreeting(t, "sni "+tc.sni, g, want{upstream: tc.upstream, port: 9999, tls: false})
	}
	assertHandshakeFails(ctx, t, tp, proxyAddr(2222), "my-host-3")
}

func TestDocsTerminateOriginate(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host-1", 9999, true)
	tp.serveEcho(t, "upstream-host-2", 9999, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/terminate-originate.yaml"}, nil)})...)

	for _, tc := range []struct{ sni, upstream, cert string }{
		// https:// without tls: no client certificate.
		{"my-host-1", "upstream-host-1", "none"},
		// tls: origination-context: the client certificate of othersecret.
		{"my-host-2", "upstream-host-2", clientCN},
	} {
		g, err := tp.reachTLS(ctx, proxyAddr(2222), tc.sni)
		if err != nil {
			t.Errorf("sni %s: %v", tc.sni, err)
			continue
		}
		checkGreeting(t, "sni "+tc.sni, g, want{upstream: tc.upstream, port: 9999, tls: true, clientCert: tc.cert})
	}
	assertHandshakeFails(ctx, t, tp, proxyAddr(2222), "my-host-3")
}

func TestDocsOriginate(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host", 9999, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/originate.yaml"}, nil)})...)

	// A plaintext client; the upstream sees TLS and no client certificate.
	g, err := tp.reach(ctx, proxyAddr(2222))
	if err != nil {
		t.Fatalf("port 2222: %v", err)
	}
	checkGreeting(t, "port 2222", g, want{upstream: "upstream-host", port: 9999, tls: true, clientCert: "none"})
}

func TestDocsDefaultPorts(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 80, false)
	tp.serveEcho(t, "upstream", 443, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"docs/default-ports.yaml"}, nil)})...)

	for _, tc := range []struct {
		name   string
		listen int
		want   want
	}{
		{"service: upstream", 8080, want{upstream: "upstream", port: 80, tls: false}},
		{"service: https://upstream", 8443, want{upstream: "upstream", port: 443, tls: true, clientCert: "none"}},
		{"service: upstream, tls: origination-context", 8444, want{upstream: "upstream", port: 443, tls: true, clientCert: clientCN}},
		{"service: http://upstream, tls: origination-context", 8445, want{upstream: "upstream", port: 443, tls: true, clientCert: clientCN}},
	} {
		g, err := tp.reach(ctx, proxyAddr(tc.listen))
		if err != nil {
			t.Errorf("%s (port %d): %v", tc.name, tc.listen, err)
			continue
		}
		checkGreeting(t, tc.name, g, tc.want)
	}
}

// assertHandshakeFails checks that the proxy refuses the TLS handshake of a
// client offering sni. The client skips verification, so that only the
// proxy can make the handshake fail.
func assertHandshakeFails(ctx context.Context, t *testing.T, tp *topology, addr, sni string) {
	t.Helper()
	c, err := tp.handshake(ctx, addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
	if err != nil {
		t.Logf("sni %s refused as expected: %v", sni, err)
	} else {
		g, rerr := roundTrip(c)
		c.Close()
		t.Errorf("sni %s: handshake succeeded, want failure (then upstream said %q, err %v)", sni, g.Raw, rerr)
	}
}
