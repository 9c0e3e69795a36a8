package kube

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/tcpmap/tcpmap/internal/testutil"
)

// TestKubernetesMissingCRD runs tcpmapd against an API server of its own
// with only the TCPMapping CRD installed: tcpmapd is ready, and relays the
// mapping, in seconds rather than after the 30 s sync timeout, with one
// warning naming the four missing CRDs. Then the TLSContext CRD is
// installed and a TLSContext with a TLS mapping created: tcpmapd watches
// the new kind without a restart and terminates TLS with its Secret.
func TestKubernetesMissingCRD(t *testing.T) {
	requireSetup(t)
	t.Parallel() // its own API server: nothing shared with the other tests
	ctx := testContext(t, 2*time.Minute)

	c := startCluster(t, ctx)
	c.installCRDs(t, ctx, "tcpmappings")
	c.createNamespace(t, ctx, ns)
	up := startUpstream(t, "A")
	ca := newAuthority(t)
	pPlain, pTLS, pMetrics := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	c.create(t, ctx, fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: plain}, spec: {address: 127.0.0.1, port: %d, service: %q}}", pPlain, up.addr()))

	start := time.Now()
	d := startDaemon(t, ctx, c.kubeconfig, "--metrics-addr", net.JoinHostPort("127.0.0.1", fmt.Sprint(pMetrics)))
	hc := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, ctx, "/readyz", func() error {
		resp, err := hc.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", pMetrics))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		return nil
	})
	plain := plainDialer(net.JoinHostPort("127.0.0.1", fmt.Sprint(pPlain)))
	waitFor(t, ctx, "the TCPMapping relays", func() error {
		_, err := probe(ctx, plain)
		return err
	})
	took := time.Since(start)
	t.Logf("ready and relaying %s after tcpmapd started", took.Round(time.Millisecond))
	if took > 10*time.Second {
		t.Errorf("ready and relaying took %s with four CRDs missing, want under 10s", took.Round(time.Millisecond))
	}
	want := "[tlscontexts.getambassador.io hosts.getambassador.io listeners.getambassador.io modules.getambassador.io]"
	if warnings := d.logField("missing CRDs", "missing"); len(warnings) != 1 || warnings[0] != want {
		t.Errorf("warnings about missing CRDs: %q, want one naming %s", warnings, want)
	}

	// The CRD appears; the objects that use it follow, as `kubectl apply`
	// of a manifest would create them.
	installed := time.Now()
	c.installCRDs(t, ctx, "tlscontexts")
	cert := ca.issue(t, 601, "tls.example")
	c.createSecret(t, ctx, tlsSecret("tls-cert", cert))
	c.create(t, ctx, "{apiVersion: getambassador.io/v3alpha1, kind: TLSContext, metadata: {name: tls-ctx}, spec: {hosts: [tls.example], secret: tls-cert}}")
	c.create(t, ctx, fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: tls}, spec: {address: 127.0.0.1, port: %d, host: tls.example, service: %q}}", pTLS, up.addr()))
	tlsDial := tlsDialer(net.JoinHostPort("127.0.0.1", fmt.Sprint(pTLS)), "tls.example", ca.pool)
	waitFor(t, ctx, "the TLS mapping relays with the TLSContext's Secret", func() error {
		o, err := probe(ctx, tlsDial)
		if err != nil {
			return err
		}
		if got := o.tls.PeerCertificates[0].SerialNumber; got.Cmp(cert.serial) != 0 {
			return errStop(fmt.Sprintf("certificate serial %v, want %v", got, cert.serial))
		}
		return nil
	})
	took = time.Since(installed)
	t.Logf("the TLSContext CRD was picked up and its mapping relayed %s after its install began", took.Round(time.Millisecond))
	// Each reload asks discovery again while a CRD is missing, so this
	// does not wait for the 30 s recheck.
	if took > 10*time.Second {
		t.Errorf("picking up the TLSContext CRD took %s, want under 10s", took.Round(time.Millisecond))
	}
	if got := d.logField("CRDs now installed", "crds"); len(got) != 1 || got[0] != "[tlscontexts.getambassador.io]" {
		t.Errorf("log lines saying a CRD is now watched: %q, want one naming tlscontexts.getambassador.io", got)
	}
	if _, err := probe(ctx, plain); err != nil {
		t.Errorf("the first TCPMapping after the CRD install: %v", err)
	}
}
