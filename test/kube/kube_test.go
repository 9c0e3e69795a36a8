package kube

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

const ns = "tcpmap-e2e"

func gvr(resource string) schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "getambassador.io", Version: "v3alpha1", Resource: resource}
}

var plurals = map[string]string{"TCPMapping": "tcpmappings", "TLSContext": "tlscontexts", "Host": "hosts",
	"Listener": "listeners", "Module": "modules"}

// create creates one getambassador.io object from YAML in ns.
func (c *cluster) create(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	c.createIn(t, ctx, ns, text)
}

// createIn creates one getambassador.io object from YAML in namespace.
func (c *cluster) createIn(t *testing.T, ctx context.Context, namespace, text string) {
	t.Helper()
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(text), &obj); err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	u := &unstructured.Unstructured{Object: obj}
	if _, err := c.dyn.Resource(gvr(plurals[u.GetKind()])).Namespace(namespace).Create(ctx, u, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

func tlsSecret(name string, sc serverCert) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": sc.certPEM, "tls.key": sc.keyPEM},
	}
}

// events returns the Events on one object, as "Type Reason: message".
func (c *cluster) events(ctx context.Context, kind, name string) ([]corev1.Event, error) {
	l, err := c.cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name})
	if err != nil {
		return nil, err
	}
	return l.Items, nil
}

// refusedTLS returns nil when tcpmapd refuses a TLS client for its
// certificate: the handshake fails, or, in TLS 1.3 where the client
// finishes first, the first read gets the server's alert.
func refusedTLS(ctx context.Context, dial dialer) error {
	c, _, err := dial(ctx)
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err = fmt.Fprintf(c, "%s\n", nextID("refused")); err == nil {
			var line string
			line, err = bufio.NewReader(c).ReadString('\n')
			if err == nil {
				return fmt.Errorf("relayed (greeting %q), want refused", line)
			}
		}
	}
	if !strings.Contains(err.Error(), "certificate") {
		return fmt.Errorf("refused for another reason than the certificate: %w", err)
	}
	return nil
}

// TestKubernetesSource runs tcpmapd against a real API server: resources
// created through the API are served; a weight change and a Secret
// rotation apply to new connections while ten live ones stream on intact;
// an invalid resource gets a Warning Event and shows in tcpmapctl status
// while the others serve; a deleted TCPMapping closes its listener; a
// TLSContext whose ca_secret is an Opaque Secret requires client
// certificates signed by that CA; a tcpmapd with --watch-namespace sees
// only its namespace (testWatchNamespace); a configuration file's
// TLSContext uses Secrets that exist only in the cluster
// (testFileSecretFromKubernetes); with the API server stopped, tcpmapd
// keeps serving; and once it is back, tcpmapd reconnects and serves a
// TCPMapping created after the outage.
func TestKubernetesSource(t *testing.T) {
	requireSetup(t)
	t.Parallel() // its own API server: nothing shared with the other tests
	ctx := testContext(t, 4*time.Minute)
	step := func(name string) context.Context {
		t.Logf("step: %s", name)
		sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		t.Cleanup(cancel)
		return sctx
	}

	sctx := step("start etcd and kube-apiserver, install the CRDs")
	c := startCluster(t, sctx)
	c.installCRDs(t, sctx)
	if _, err := c.cs.CoreV1().Namespaces().Create(sctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	sctx = step("create the resources and start tcpmapd")
	upA, upB := startUpstream(t, "A"), startUpstream(t, "B")
	ca := newAuthority(t)
	cert1 := ca.issue(t, 101, "tls.example", "tls2.example")
	pPlain, pCanary, pTLS := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	if _, err := c.cs.CoreV1().Secrets(ns).Create(sctx, tlsSecret("tls-cert", cert1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, text := range []string{
		fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: plain}, spec: {address: 127.0.0.1, port: %d, service: %q}}", pPlain, upA.addr()),
		fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: canary-main}, spec: {address: 127.0.0.1, port: %d, service: %q}}", pCanary, upA.addr()),
		fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: canary-new}, spec: {address: 127.0.0.1, port: %d, service: %q, weight: 0}}", pCanary, upB.addr()),
		"{apiVersion: getambassador.io/v3alpha1, kind: Host, metadata: {name: tls-host}, spec: {hostname: tls.example, tlsSecret: {name: tls-cert}}}",
		"{apiVersion: getambassador.io/v3alpha1, kind: TLSContext, metadata: {name: tls-ctx}, spec: {hosts: [tls2.example], secret: tls-cert, min_tls_version: v1.2}}",
		fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: tls-a}, spec: {address: 127.0.0.1, port: %d, host: tls.example, service: %q}}", pTLS, upA.addr()),
		fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: tls-b}, spec: {address: 127.0.0.1, port: %d, host: tls2.example, service: %q}}", pTLS, upB.addr()),
	} {
		c.create(t, sctx, text)
	}
	d := startDaemon(t, sctx, c.kubeconfig)

	plainAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(pPlain))
	canaryAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(pCanary))
	tlsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(pTLS))
	plain, canary := plainDialer(plainAddr), plainDialer(canaryAddr)
	tlsA, tlsB := tlsDialer(tlsAddr, "tls.example", ca.pool), tlsDialer(tlsAddr, "tls2.example", ca.pool)

	sctx = step("the listeners open and relay; TLS terminates with the Secret's certificate per SNI")
	for _, x := range []struct {
		name    string
		dial    dialer
		backend string
	}{{"plain", plain, "A"}, {"canary (weight 0 on B)", canary, "A"}, {"tls.example (Host)", tlsA, "A"}, {"tls2.example (TLSContext)", tlsB, "B"}} {
		waitFor(t, sctx, x.name, func() error {
			o, err := probe(sctx, x.dial)
			if err != nil {
				return err
			}
			if o.backend != x.backend {
				return errStop(fmt.Sprintf("reached backend %s, want %s", o.backend, x.backend))
			}
			if o.tls != nil && o.tls.PeerCertificates[0].SerialNumber.Cmp(cert1.serial) != 0 {
				return errStop(fmt.Sprintf("certificate serial %v, want %v", o.tls.PeerCertificates[0].SerialNumber, cert1.serial))
			}
			return nil
		})
	}

	sctx = step("every resource gets one Accepted Event")
	for _, obj := range []struct{ kind, name string }{
		{"TCPMapping", "plain"}, {"TCPMapping", "canary-main"}, {"TCPMapping", "canary-new"},
		{"TCPMapping", "tls-a"}, {"TCPMapping", "tls-b"}, {"Host", "tls-host"}, {"TLSContext", "tls-ctx"},
		{"Secret", "tls-cert"},
	} {
		waitAccepted(t, sctx, c, obj.kind, obj.name)
	}

	sctx = step("an invalid TCPMapping is rejected with a Warning Event and shown in tcpmapctl status; the others serve")
	c.create(t, sctx, fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: bad}, spec: {port: 70000, service: %q}}", upA.addr()))
	waitFor(t, sctx, "Rejected Event on TCPMapping bad", func() error {
		evs, err := c.events(sctx, "TCPMapping", "bad")
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Reason == "Rejected" && e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "spec.port") {
				return nil
			}
		}
		return fmt.Errorf("events %v", evs)
	})
	out, err := d.ctl(sctx, "status")
	if err != nil {
		t.Fatalf("tcpmapctl status: %v\n%s", err, out)
	}
	if !strings.Contains(out, "error: TCPMapping "+ns+"/bad: spec.port:") || !strings.Contains(out, "(kubernetes)") {
		t.Errorf("tcpmapctl status does not show the rejected resource with its source:\n%s", out)
	}
	// The same outcomes as the Events, per resource: bad rejected for
	// spec.port, plain accepted, both from kubernetes.
	st, err := d.status(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := st.resource("TCPMapping", ns, "bad"); !ok || r.Source != "kubernetes" || r.Outcome != "rejected" ||
		len(r.Errors) == 0 || !strings.HasPrefix(r.Errors[0], "spec.port: ") {
		t.Errorf("status resource TCPMapping %s/bad = %+v (found %v), want rejected from kubernetes for spec.port", ns, r, ok)
	}
	if r, ok := st.resource("TCPMapping", ns, "plain"); !ok || r.Source != "kubernetes" || r.Outcome != "accepted" {
		t.Errorf("status resource TCPMapping %s/plain = %+v (found %v), want accepted from kubernetes", ns, r, ok)
	}
	if _, err := probe(sctx, plain); err != nil {
		t.Errorf("plain stopped serving after the invalid resource: %v", err)
	}

	sctx = step("ten connections stream while the weight changes and the Secret rotates")
	var streams []*stream
	t.Cleanup(func() {
		for _, s := range streams {
			s.o.conn.Close()
		}
	})
	for i := 0; i < 10; i++ {
		dial, name := canary, "canary"
		if i%2 == 1 {
			dial, name = tlsA, "tls"
		}
		s, err := startStream(sctx, dial, name)
		if err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		if s.o.backend != "A" {
			t.Fatalf("stream %s reached %s before the change, want A", s.o.id, s.o.backend)
		}
		streams = append(streams, s)
	}

	// Weight: all new canary connections move to B.
	patch := []byte(`{"spec":{"weight":100}}`)
	if _, err := c.dyn.Resource(gvr("tcpmappings")).Namespace(ns).Patch(sctx, "canary-new", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sctx, "new canary connections reach B", func() error {
		o, err := probe(sctx, canary)
		if err != nil {
			return err
		}
		if o.backend != "B" {
			return fmt.Errorf("reached %s", o.backend)
		}
		return nil
	})
	for i := 0; i < 5; i++ {
		if o, err := probe(sctx, canary); err != nil || o.backend != "B" {
			t.Fatalf("after weight 100 on B, a new connection: %v, %+v", err, o)
		}
	}

	// Secret rotation: new handshakes present the new certificate.
	cert2 := ca.issue(t, 202, "tls.example", "tls2.example")
	sec, err := c.cs.CoreV1().Secrets(ns).Get(sctx, "tls-cert", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sec.Data = tlsSecret("tls-cert", cert2).Data
	if _, err := c.cs.CoreV1().Secrets(ns).Update(sctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		name string
		dial dialer
	}{{"tls.example", tlsA}, {"tls2.example", tlsB}} {
		waitFor(t, sctx, x.name+" presents the rotated certificate", func() error {
			o, err := probe(sctx, x.dial)
			if err != nil {
				return err
			}
			if got := o.tls.PeerCertificates[0].SerialNumber; got.Cmp(cert2.serial) != 0 {
				return fmt.Errorf("serial %v", got)
			}
			return nil
		})
	}

	// The live connections kept moving data after the changes.
	for _, s := range streams {
		before := s.sent.Load()
		waitFor(t, sctx, s.o.id+" streams on after the changes", func() error {
			if s.sent.Load() < before+64<<10 {
				return fmt.Errorf("%d bytes sent", s.sent.Load())
			}
			return nil
		})
	}

	// Every live connection is intact, both ways.
	for _, s := range streams {
		sum, err := s.finish(sctx)
		if err != nil {
			t.Errorf("live connection broken by the changes: %v", err)
			continue
		}
		if got := upA.received(s.o.id); got != sum {
			t.Errorf("%s: upstream received sha256 %s, client sent %s (%d bytes)", s.o.id, got, sum, s.sent.Load())
		}
		if s.o.tls != nil && s.o.tls.PeerCertificates[0].SerialNumber.Cmp(cert1.serial) != 0 {
			t.Errorf("%s started with serial %v, want the old %v", s.o.id, s.o.tls.PeerCertificates[0].SerialNumber, cert1.serial)
		}
	}
	streams = nil

	sctx = step("outcomes are published once, not on every reload")
	evs, err := c.events(sctx, "TCPMapping", "plain")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Count > 1 {
		t.Errorf("TCPMapping plain, unchanged through several reloads, has events %+v; want one Accepted", evs)
	}

	sctx = step("deleting a TCPMapping closes its listener")
	if err := c.dyn.Resource(gvr("tcpmappings")).Namespace(ns).Delete(sctx, "plain", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, sctx, "connection refused on the deleted mapping's port", func() error {
		var dl net.Dialer
		conn, err := dl.DialContext(sctx, "tcp", plainAddr)
		if err == nil {
			conn.Close()
			return errors.New("still accepting")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return err
		}
		return nil
	})

	sctx = step("a TLSContext whose ca_secret is an Opaque Secret requires client certificates signed by it")
	// As `kubectl create secret generic client-ca --from-file=tls.crt=ca.pem`
	// makes it: not kubernetes.io/tls, so only a watch by name sees it.
	clientCA := tlstest.NewCA(t, "tcpmap e2e client CA")
	caSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "client-ca", Namespace: ns},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"tls.crt": clientCA.CertPEM}}
	if _, err := c.cs.CoreV1().Secrets(ns).Create(sctx, caSecret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.cs.CoreV1().Secrets(ns).Create(sctx, tlsSecret("mtls-cert", ca.issue(t, 303, "mtls.example")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pMTLS := testutil.FreePort(t)
	c.create(t, sctx, "{apiVersion: getambassador.io/v3alpha1, kind: TLSContext, metadata: {name: mtls-ctx}, spec: {hosts: [mtls.example], secret: mtls-cert, ca_secret: client-ca, cert_required: true}}")
	c.create(t, sctx, fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: mtls}, spec: {address: 127.0.0.1, port: %d, host: mtls.example, service: %q}}", pMTLS, upA.addr()))
	mtlsAddr := net.JoinHostPort("127.0.0.1", fmt.Sprint(pMTLS))
	keyPair := func(p tlstest.Pair) tls.Certificate {
		kp, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	withCert := clientCertDialer(mtlsAddr, "mtls.example", ca.pool, keyPair(clientCA.Client(t, "e2e-client")))
	waitFor(t, sctx, "a client with a certificate signed by the Opaque Secret's CA is relayed", func() error {
		o, err := probe(sctx, withCert)
		if err != nil {
			return err
		}
		if o.backend != "A" {
			return errStop("reached backend " + o.backend + ", want A")
		}
		return nil
	})
	foreign := keyPair(tlstest.NewCA(t, "another CA").Client(t, "intruder"))
	for _, x := range []struct {
		name string
		dial dialer
	}{
		{"a client without a certificate", clientCertDialer(mtlsAddr, "mtls.example", ca.pool)},
		{"a client with a certificate from another CA", clientCertDialer(mtlsAddr, "mtls.example", ca.pool, foreign)},
	} {
		if err := refusedTLS(sctx, x.dial); err != nil {
			t.Errorf("%s: %v", x.name, err)
		}
	}
	for _, obj := range []struct{ kind, name string }{{"TLSContext", "mtls-ctx"}, {"Secret", "client-ca"}} {
		waitAccepted(t, sctx, c, obj.kind, obj.name)
	}

	// Two more tcpmapd on the same API server, before it is stopped.
	subtest(t, ctx, "watch-namespace", time.Minute, func(t *testing.T, ctx context.Context) {
		testWatchNamespace(t, ctx, c, upA, ca)
	})
	subtest(t, ctx, "file-secret-from-kubernetes", time.Minute, func(t *testing.T, ctx context.Context) {
		testFileSecretFromKubernetes(t, ctx, c, upA, ca)
	})

	sctx = step("with the API server stopped, tcpmapd keeps serving")
	live, err := startStream(sctx, tlsB, "outage")
	if err != nil {
		t.Fatal(err)
	}
	mark := d.mark()
	c.apiserver.stop()
	if _, err := d.waitLog(sctx, mark, func(e map[string]any) bool {
		m, _ := e["msg"].(string)
		return strings.HasPrefix(m, "kubernetes API: unreachable")
	}); err != nil {
		t.Fatalf("no log line saying the API server is away: %v", err)
	}
	for _, x := range []struct {
		name    string
		dial    dialer
		backend string
	}{{"canary", canary, "B"}, {"tls.example", tlsA, "A"}, {"tls2.example", tlsB, "B"}} {
		o, err := probe(sctx, x.dial)
		if err != nil || o.backend != x.backend {
			t.Errorf("%s during the outage: %v, %+v", x.name, err, o)
		}
	}
	sum, err := live.finish(sctx)
	if err != nil {
		t.Errorf("connection across the outage: %v", err)
	} else if got := upB.received(live.o.id); got != sum {
		t.Errorf("connection across the outage: upstream received sha256 %s, client sent %s", got, sum)
	}
	out, err = d.ctl(sctx, "status")
	if err != nil {
		t.Fatalf("tcpmapctl status during the outage: %v\n%s", err, out)
	}
	for _, want := range []string{fmt.Sprint(pCanary), fmt.Sprint(pTLS)} {
		if !strings.Contains(out, want) {
			t.Errorf("status during the outage lacks listener port %s:\n%s", want, out)
		}
	}

	// client-go retries with backoff (its reflectors back off to 30 s at
	// most), so the step allows a minute.
	sctx = step("the API server comes back: tcpmapd reconnects and takes a new TCPMapping")
	mark = d.mark()
	c.startAPIServer(t, sctx)
	back := time.Now()
	pAfter := testutil.FreePort(t)
	c.create(t, sctx, fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: after-outage}, spec: {address: 127.0.0.1, port: %d, service: %q}}", pAfter, upA.addr()))
	after := plainDialer(net.JoinHostPort("127.0.0.1", fmt.Sprint(pAfter)))
	waitFor(t, sctx, "the mapping created after the outage to relay", func() error {
		o, err := probe(sctx, after)
		if err != nil {
			return err
		}
		if o.backend != "A" {
			return fmt.Errorf("backend %q, want A", o.backend)
		}
		return nil
	})
	if _, err := d.waitLog(sctx, mark, func(e map[string]any) bool {
		m, _ := e["msg"].(string)
		return m == "kubernetes API: reachable again"
	}); err != nil {
		t.Errorf("no log line saying the API server is back: %v", err)
	}
	t.Logf("a TCPMapping created once the API server was back served %v later", time.Since(back).Round(100*time.Millisecond))
	waitAccepted(t, sctx, c, "TCPMapping", "after-outage")
}

// waitAccepted waits for an Accepted (Normal) Event on the object.
func waitAccepted(t *testing.T, ctx context.Context, c *cluster, kind, name string) {
	t.Helper()
	waitFor(t, ctx, "Accepted Event on "+kind+" "+name, func() error {
		evs, err := c.events(ctx, kind, name)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if e.Reason == "Accepted" && e.Type == corev1.EventTypeNormal {
				return nil
			}
		}
		return fmt.Errorf("events %v", evs)
	})
}
