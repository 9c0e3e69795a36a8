package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The behaviours Emissary's own tests check (python/tests/kat/t_tcpmapping.py,
// summarised in emissary-behaviour.md items 1-6 and 9).

// Item 1: a hostless mapping passes the client's TLS through untouched.
func TestEmissaryPassthroughTLS(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "tls-upstream", 443, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"emissary/passthrough.yaml"}, nil)})...)

	// The client verifies the upstream's certificate for passthrough.test
	// and negotiates ALPN with it: only untouched TLS gets that far.
	g, err := tp.reachTLS(ctx, proxyAddr(9876), "passthrough.test", "tcpmap-e2e")
	if err != nil {
		t.Fatalf("port 9876: %v", err)
	}
	checkGreeting(t, "port 9876", g, want{upstream: "tls-upstream", port: 443, tls: true, sni: "passthrough.test", clientCert: "none"})
	if g.ALPN != "tcpmap-e2e" {
		t.Errorf("upstream negotiated ALPN %q, want the client's %q", g.ALPN, "tcpmap-e2e")
	}
}

// Item 4: `address:` binds that address only.
func TestEmissaryAddress(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 6789, false)
	tp.serveEcho(t, "cockroach", 6790, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"emissary/address.yaml"}, nil)})...)

	g, err := tp.reach(ctx, net.JoinHostPort(proxyA, "6789"))
	if err != nil {
		t.Fatalf("address A %s:6789: %v", proxyA, err)
	}
	checkGreeting(t, "address A", g, want{upstream: "upstream", port: 6789})

	// Address B is up and served (port 6790 listens on all addresses)...
	g, err = tp.reach(ctx, net.JoinHostPort(proxyB, "6790"))
	if err != nil {
		t.Fatalf("address B %s:6790: %v", proxyB, err)
	}
	checkGreeting(t, "address B port 6790", g, want{upstream: "cockroach", port: 6790})

	// ...but the mapping bound to A is not reachable through B.
	c, err := tp.connect(ctx, net.JoinHostPort(proxyB, "6789"))
	if err == nil {
		g, rerr := roundTrip(c)
		c.Close()
		if rerr == nil {
			t.Fatalf("address B %s:6789 reached %q; the mapping is bound to %s only", proxyB, g.Raw, proxyA)
		}
		t.Logf("address B %s:6789 accepted then failed: %v", proxyB, rerr)
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("address B %s:6789: got %v, want connection refused", proxyB, err)
	}
}

// Item 5: origination contexts with sni, a dot in the name, another
// namespace.
func TestEmissaryOriginationContext(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream", 443, true)
	tp.serveEcho(t, "upstream-host-1", 443, true)
	tp.serveEcho(t, "upstream-host-2", 443, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"emissary/origination-sni.yaml"}, nil)})...)

	for _, tc := range []struct {
		name   string
		listen int
		want   want
	}{
		{"tls: e2e-tlsclient (sni my-funny-name)", 6789, want{upstream: "upstream", port: 443, tls: true, sni: "my-funny-name", clientCert: clientCN}},
		{"tls: e2e.tlsclient (dot in name)", 6790, want{upstream: "upstream-host-1", port: 443, tls: true, sni: "my-hilarious-name", clientCert: clientCN}},
		{"tls: e2e-xns-tlsclient (context in other-namespace)", 6791, want{upstream: "upstream-host-2", port: 443, tls: true, sni: "my-hysterical-name", clientCert: clientCN}},
	} {
		g, err := tp.reach(ctx, proxyAddr(tc.listen))
		if err != nil {
			t.Errorf("%s (port %d): %v", tc.name, tc.listen, err)
			continue
		}
		checkGreeting(t, tc.name, g, tc.want)
	}
}

// Item 3: several SNI mappings on one port, each to its own upstream, with
// and without origination; v2 `tls: true`. Item 6: separate certificates
// per SNI, each verifying against its own CA.
func TestEmissarySeveralSNI(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host-1", 80, false)
	tp.serveEcho(t, "upstream-host-2", 80, false)
	tp.serveEcho(t, "upstream-host-2", 443, true)
	tp.serveEcho(t, "upstream-host", 443, true)
	tp.serveEcho(t, "upstream", 443, true)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"emissary/sni-several.yaml"}, nil)})...)

	for _, tc := range []struct {
		name string
		sni  string
		want want
	}{
		{"cleartext upstream", "tls-context-host-1", want{upstream: "upstream-host-1", port: 80, tls: false}},
		{"tls: e2e-tlscontext, portless service", "tls-context-host-2", want{upstream: "upstream-host-2", port: 443, tls: true, clientCert: ctxHostsCN}},
		{"v2 tls: true, portless service", "tls-context-host-3", want{upstream: "upstream-host", port: 443, tls: true, clientCert: "none"}},
	} {
		g, err := tp.reachTLS(ctx, proxyAddr(6789), tc.sni)
		if err != nil {
			t.Errorf("%s (sni %s): %v", tc.name, tc.sni, err)
			continue
		}
		checkGreeting(t, tc.name, g, tc.want)
	}

	g, err := tp.reach(ctx, proxyAddr(7654))
	if err != nil {
		t.Errorf("v2 hostless tls: true (port 7654): %v", err)
	} else {
		checkGreeting(t, "v2 hostless tls: true", g, want{upstream: "upstream", port: 443, tls: true, clientCert: "none"})
	}

	p := testPKI()
	for _, tc := range []struct {
		sni, upstream string
		roots         *x509.CertPool
	}{
		{"a.example.net", "upstream-host-1", p.pool},
		{"b.example.net", "upstream-host-2", p.pool2},
	} {
		c, err := tp.handshake(ctx, proxyAddr(6790), &tls.Config{ServerName: tc.sni, RootCAs: tc.roots})
		if err != nil {
			t.Errorf("separate certificates, sni %s (verified against its own CA): %v", tc.sni, err)
			continue
		}
		g, err := roundTrip(c)
		c.Close()
		if err != nil {
			t.Errorf("separate certificates, sni %s: %v", tc.sni, err)
			continue
		}
		checkGreeting(t, "separate certificates, sni "+tc.sni, g, want{upstream: tc.upstream, port: 80, tls: false})
	}
}

// Item 6 (and 3): termination with a Host, with a TLSContext in another
// namespace, a shared wildcard certificate, an SNI wildcard.
func TestEmissaryTermination(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "upstream-host-1", 9999, false)
	tp.serveEcho(t, "upstream-host-2", 9999, false)
	tp.serveEcho(t, "upstream-host", 9999, false)
	tp.start(t, daemonArgs([]string{configDir(t, []string{"emissary/termination.yaml"}, nil)})...)

	for _, tc := range []struct {
		name     string
		listen   int
		sni      string
		upstream string
	}{
		{"Host with tlsSecret in other-namespace", 6789, "hostcert.example.org", "upstream-host-1"},
		{"TLSContext in other-namespace", 6790, "tls-context-host-2", "upstream-host-2"},
		{"shared wildcard certificate, a", 6791, "a.example.com", "upstream-host-1"},
		{"shared wildcard certificate, b", 6791, "b.example.com", "upstream-host-2"},
		{"SNI wildcard *.example.com", 6792, "c.example.com", "upstream-host"},
		{"SNI wildcard *.example.com, other name", 6792, "zz.example.com", "upstream-host"},
	} {
		// connectTLS verifies the certificate served for tc.sni against the
		// test CA, so a wrong certificate fails here.
		g, err := tp.reachTLS(ctx, proxyAddr(tc.listen), tc.sni)
		if err != nil {
			t.Errorf("%s (port %d): %v", tc.name, tc.listen, err)
			continue
		}
		checkGreeting(t, tc.name, g, want{upstream: tc.upstream, port: 9999, tls: false})
	}
	// Names no route covers are refused, although the wildcard certificate
	// would cover c.example.com.
	assertHandshakeFails(ctx, t, tp, proxyAddr(6792), "example.org")
	assertHandshakeFails(ctx, t, tp, proxyAddr(6791), "c.example.com")
}

// Item 9: a TCPMapping without port or service is rejected with an error;
// the rest of the configuration is served.
func TestEmissaryMissingFields(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	ctx := testContext(t, 60*time.Second)
	tp.serveEcho(t, "cockroach", 7002, false)
	dir := configDir(t, []string{"emissary/missing-fields.yaml"}, nil)
	d := tp.start(t, daemonArgs([]string{dir})...)

	for _, tc := range []struct{ resource, field string }{
		{"TCPMapping default/noport", "spec.port"},
		{"TCPMapping default/noservice", "spec.service"},
	} {
		p := d.findProblem(t, tc.resource+" "+tc.field, func(e logEntry) bool {
			return e.str("resource") == tc.resource && e.str("field") == tc.field
		})
		if p != nil {
			if lvl := e2eLevel(p); lvl != "error" {
				t.Errorf("%s: logged at %q, want error", p.problemText(), lvl)
			}
			if p.str("reason") == "" {
				t.Errorf("%s: empty reason", p.problemText())
			}
		}
	}
	g, err := tp.reach(ctx, proxyAddr(7002))
	if err != nil {
		t.Fatalf("good mapping on port 7002: %v", err)
	}
	checkGreeting(t, "port 7002", g, want{upstream: "cockroach", port: 7002})

	out, code := tp.check(t, dir)
	if code != 1 {
		t.Errorf("tcpmapd check: exit %d, want 1; output:\n%s", code, out)
	}
	for _, s := range []string{"TCPMapping default/noport", "spec.port", "TCPMapping default/noservice", "spec.service"} {
		if !strings.Contains(out, s) {
			t.Errorf("tcpmapd check output lacks %q:\n%s", s, out)
		}
	}
}

// e2eLevel is the zap level of a log entry.
func e2eLevel(e logEntry) string { return e.str("level") }

// ambassador_id: a daemon serves only resources carrying its id ("default"
// when a resource has none).
func TestAmbassadorID(t *testing.T) {
	t.Parallel()
	tp := newTopology(t)
	tp.serveEcho(t, "upstream", 7000, false)
	tp.serveEcho(t, "cockroach", 7001, false)
	dir := configDir(t, []string{"emissary/ambassador-id.yaml"}, nil)
	for _, tc := range []struct {
		id             string
		served, absent int
		upstream       string
	}{
		{"", 7000, 7001, "upstream"},
		{"other", 7001, 7000, "cockroach"},
	} {
		t.Run("id="+tc.id, func(t *testing.T) {
			ctx := testContext(t, 30*time.Second)
			var extra []string
			if tc.id != "" {
				extra = []string{"--ambassador-id", tc.id}
			}
			tp.start(t, daemonArgs([]string{dir}, extra...)...)
			g, err := tp.reach(ctx, proxyAddr(tc.served))
			if err != nil {
				t.Fatalf("port %d: %v", tc.served, err)
			}
			checkGreeting(t, "served mapping", g, want{upstream: tc.upstream, port: tc.served})
			if c, err := tp.connect(ctx, proxyAddr(tc.absent)); err == nil {
				c.Close()
				t.Errorf("port %d accepts; its mapping is for another ambassador_id", tc.absent)
			}
		})
	}
}
