package kube

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tcpmap/tcpmap/internal/testutil"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// status is the part of `tcpmapctl status -o json` these tests read.
type status struct {
	Listeners []struct {
		Key string `json:"key"`
	} `json:"listeners"`
	Resources []statusResource `json:"resources"`
}

type statusResource struct {
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Source    string   `json:"source"`
	Outcome   string   `json:"outcome"`
	Errors    []string `json:"errors"`
}

// status runs `tcpmapctl status -o json`.
func (d *daemon) status(ctx context.Context) (status, error) {
	out, err := d.ctl(ctx, "status", "-o", "json")
	if err != nil {
		return status{}, fmt.Errorf("tcpmapctl status: %w\n%s", err, out)
	}
	var st status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return status{}, fmt.Errorf("tcpmapctl status -o json: %w\n%s", err, out)
	}
	return st, nil
}

// resource finds kind namespace/name among the status's resources.
func (st status) resource(kind, namespace, name string) (statusResource, bool) {
	for _, r := range st.Resources {
		if r.Kind == kind && r.Namespace == namespace && r.Name == name {
			return r, true
		}
	}
	return statusResource{}, false
}

// logged says whether any tcpmapd log line so far contains s.
func (d *daemon) logged(s string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.raw {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// logField returns field, printed, of every log entry whose message
// contains msg.
func (d *daemon) logField(msg, field string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, e := range d.lines {
		if m, _ := e["msg"].(string); strings.Contains(m, msg) {
			out = append(out, fmt.Sprint(e[field]))
		}
	}
	return out
}

func (c *cluster) createNamespace(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if _, err := c.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) createSecret(t *testing.T, ctx context.Context, sec *corev1.Secret) {
	t.Helper()
	if _, err := c.cs.CoreV1().Secrets(sec.Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Secret %s/%s: %v", sec.Namespace, sec.Name, err)
	}
}

// refused returns nil when a connection to addr is refused: no listener.
func refused(ctx context.Context, addr string) error {
	var dl net.Dialer
	conn, err := dl.DialContext(ctx, "tcp", addr)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%s accepts connections, want refused", addr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: %w, want connection refused", addr, err)
	}
	return nil
}

// testWatchNamespace runs a tcpmapd with --watch-namespace A next to
// resources in A and B: A's mappings relay, created before the start or
// while it runs; B's ports are never opened; B's TLS Secret is not read,
// so a TLSContext of A naming it is rejected with the reason; and
// tcpmapctl status shows nothing of B.
//
// The resources carry their own ambassador_id, so that the tcpmapd of
// TestKubernetesSource, which watches every namespace, leaves them alone.
func testWatchNamespace(t *testing.T, ctx context.Context, c *cluster, up *upstream, ca *authority) {
	nsA, nsB := "tcpmap-e2e-a", "tcpmap-e2e-b"
	const id = "watch-namespace"
	c.createNamespace(t, ctx, nsA)
	c.createNamespace(t, ctx, nsB)
	pA, pB, pALate, pBLate := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	mapping := func(name string, port int) string {
		return fmt.Sprintf("{apiVersion: getambassador.io/v3alpha1, kind: TCPMapping, metadata: {name: %s}, spec: {ambassador_id: [%s], address: 127.0.0.1, port: %d, service: %q}}", name, id, port, up.addr())
	}
	bCert := tlsSecret("b-cert", ca.issue(t, 401, "b.example"))
	bCert.Namespace = nsB
	c.createSecret(t, ctx, bCert)
	c.createIn(t, ctx, nsB, "{apiVersion: getambassador.io/v3alpha1, kind: TLSContext, metadata: {name: b-ctx}, spec: {ambassador_id: ["+id+"], hosts: [b.example], secret: b-cert}}")
	c.createIn(t, ctx, nsB, mapping("b", pB))
	c.createIn(t, ctx, nsA, mapping("a", pA))
	// secret_namespacing (the default): "name.namespace" names B's Secret.
	c.createIn(t, ctx, nsA, "{apiVersion: getambassador.io/v3alpha1, kind: TLSContext, metadata: {name: a-ctx}, spec: {ambassador_id: ["+id+"], hosts: [a.example], secret: b-cert."+nsB+"}}")

	d := startDaemon(t, ctx, c.kubeconfig, "--watch-namespace", nsA, "--ambassador-id", id)
	addr := func(p int) string { return net.JoinHostPort("127.0.0.1", fmt.Sprint(p)) }
	waitFor(t, ctx, "A's mapping relays", func() error {
		_, err := probe(ctx, plainDialer(addr(pA)))
		return err
	})
	// B's mapping was there before the start: had it been read, the
	// reload that opened A's port would have opened B's.
	if err := refused(ctx, addr(pB)); err != nil {
		t.Errorf("B's mapping: %v", err)
	}

	// Changes while it runs: B's new mapping first, then A's; once A's
	// relays, B's would have too.
	c.createIn(t, ctx, nsB, mapping("b-late", pBLate))
	c.createIn(t, ctx, nsA, mapping("a-late", pALate))
	waitFor(t, ctx, "A's mapping created while tcpmapd runs relays", func() error {
		_, err := probe(ctx, plainDialer(addr(pALate)))
		return err
	})
	for _, p := range []int{pB, pBLate} {
		if err := refused(ctx, addr(p)); err != nil {
			t.Errorf("B's mapping: %v", err)
		}
		if d.logged(addr(p)) {
			t.Errorf("tcpmapd's log mentions B's listener %s", addr(p))
		}
	}

	st, err := d.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Resources {
		if r.Namespace == nsB {
			t.Errorf("status lists %s %s/%s (%s) of the unwatched namespace", r.Kind, r.Namespace, r.Name, r.Source)
		}
	}
	for _, l := range st.Listeners {
		if strings.HasSuffix(l.Key, fmt.Sprintf(":%d", pB)) || strings.HasSuffix(l.Key, fmt.Sprintf(":%d", pBLate)) {
			t.Errorf("status lists B's listener %s", l.Key)
		}
	}
	for _, name := range []string{"a", "a-late"} {
		if r, ok := st.resource("TCPMapping", nsA, name); !ok || r.Outcome != "accepted" || r.Source != "kubernetes" {
			t.Errorf("status: TCPMapping %s/%s: %+v (found %t), want accepted from kubernetes", nsA, name, r, ok)
		}
	}
	r, ok := st.resource("TLSContext", nsA, "a-ctx")
	want := "Secret " + nsB + "/b-cert is outside the watched namespace " + nsA
	if !ok || r.Outcome != "rejected" || !strings.Contains(strings.Join(r.Errors, "\n"), want) {
		t.Errorf("status: TLSContext %s/a-ctx: %+v (found %t), want rejected: %q", nsA, r, ok, want)
	}
}

// testFileSecretFromKubernetes runs a tcpmapd with --kubernetes and a
// configuration file whose TLSContext names a kubernetes.io/tls Secret and
// an Opaque ca_secret that exist only in the cluster: the file's TLS
// mapping terminates with the cluster's certificate and requires client
// certificates of the cluster's CA; the Secrets show in status as from
// kubernetes.
func testFileSecretFromKubernetes(t *testing.T, ctx context.Context, c *cluster, up *upstream, ca *authority) {
	nsF := "tcpmap-e2e-file"
	c.createNamespace(t, ctx, nsF)
	cert := ca.issue(t, 501, "file.example")
	sec := tlsSecret("file-cert", cert)
	sec.Namespace = nsF
	c.createSecret(t, ctx, sec)
	clientCA := tlstest.NewCA(t, "tcpmap e2e file client CA")
	c.createSecret(t, ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "file-ca", Namespace: nsF},
		Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"tls.crt": clientCA.CertPEM}})

	p := testutil.FreePort(t)
	file := filepath.Join(t.TempDir(), "file.yaml")
	conf := fmt.Sprintf(`apiVersion: getambassador.io/v3alpha1
kind: TLSContext
metadata: {name: file-ctx, namespace: %[1]s}
spec: {hosts: [file.example], secret: file-cert, ca_secret: file-ca, cert_required: true}
---
apiVersion: getambassador.io/v3alpha1
kind: TCPMapping
metadata: {name: file-tls, namespace: %[1]s}
spec: {address: 127.0.0.1, port: %[2]d, host: file.example, service: %[3]q}
`, nsF, p, up.addr())
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, ctx, c.kubeconfig, "--config", file)
	// The source learns the file's Secret names before its first sync
	// and waits for them, so the first reload already accepts the file's
	// resources: no problem is logged for them before "ready". (Others
	// are: this daemon watches every namespace of a busy cluster.)
	var early []string
	if _, err := d.waitLog(ctx, 0, func(e map[string]any) bool {
		if r, _ := e["resource"].(string); e["msg"] == "config problem" && strings.Contains(r, " "+nsF+"/") {
			early = append(early, fmt.Sprintf("%s: %v: %v", r, e["field"], e["reason"]))
		}
		return e["msg"] == "ready"
	}); err != nil {
		t.Fatal(err)
	}
	if len(early) > 0 {
		t.Errorf("the first reload rejected the file's resources: %v; the cluster's Secrets were not there yet", early)
	}

	client := clientCA.Client(t, "file-client")
	kp, err := tls.X509KeyPair(client.CertPEM, client.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort("127.0.0.1", fmt.Sprint(p))
	waitFor(t, ctx, "the file's TLS mapping relays with the cluster's Secrets", func() error {
		o, err := probe(ctx, clientCertDialer(addr, "file.example", ca.pool, kp))
		if err != nil {
			return err
		}
		if got := o.tls.PeerCertificates[0].SerialNumber; got.Cmp(cert.serial) != 0 {
			return errStop(fmt.Sprintf("certificate serial %v, want the cluster Secret's %v", got, cert.serial))
		}
		return nil
	})
	if err := refusedTLS(ctx, clientCertDialer(addr, "file.example", ca.pool)); err != nil {
		t.Errorf("a client without a certificate: %v", err)
	}
	st, err := d.status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct{ kind, name, source string }{
		{"TLSContext", "file-ctx", "file:"}, {"TCPMapping", "file-tls", "file:"},
		{"Secret", "file-cert", "kubernetes"}, {"Secret", "file-ca", "kubernetes"},
	} {
		r, ok := st.resource(x.kind, nsF, x.name)
		if !ok || r.Outcome != "accepted" || !strings.HasPrefix(r.Source, x.source) {
			t.Errorf("status: %s %s/%s: %+v (found %t), want accepted from %s", x.kind, nsF, x.name, r, ok, x.source)
		}
	}
}

// subtest runs f as a subtest with its own deadline.
func subtest(t *testing.T, ctx context.Context, name string, d time.Duration, f func(*testing.T, context.Context)) {
	t.Run(name, func(t *testing.T) {
		sctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		start := time.Now()
		f(t, sctx)
		t.Logf("%s took %s", name, time.Since(start).Round(time.Millisecond))
	})
}
