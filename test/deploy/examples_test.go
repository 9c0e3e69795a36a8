package deploy

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/userspace/api"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/metrics"
	"github.com/tcpmap/tcpmap/userspace/snapshot"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// TestExamples loads the example resources with tcpmap's own loader and
// resolver, with the TLS Secrets their comments tell the user to create,
// and wants them served without a single problem.
func TestExamples(t *testing.T) {
	m := loadManifests(t)
	if len(m.ambassador) == 0 {
		t.Fatal("no example getambassador.io resources under deploy/kubernetes/examples")
	}
	dir := t.TempDir()
	for i, d := range m.ambassador {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02d.yaml", i)), d.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []struct{ name, host string }{{"db-example-tls", "db.example.com"}, {"api-example-tls", "api.example.com"}} {
		writeTLSSecret(t, filepath.Join(dir, "secret-"+s.name+".yaml"), s.name, "default", s.host)
	}

	// Resolved as the DaemonSet's daemon resolves them (--cluster-domain).
	o, _ := containerOptions(t, m.daemonSet(t).Spec.Template.Spec.Containers[0])
	snap, problems := manager.Load([]string{dir}, o.ResolveOptions())
	for _, p := range problems {
		t.Errorf("example problem: %v", p)
	}
	var tcp, tls int
	for _, l := range snap.Listeners {
		switch l.Protocol {
		case snapshot.ProtocolTLS:
			tls++
		default:
			tcp++
		}
	}
	if tcp == 0 || tls == 0 {
		t.Errorf("examples give %d cleartext and %d TLS listener(s); want both kinds", tcp, tls)
	}
}

// TestProbesMatchDaemonHandler sends the DaemonSet's probe requests to the
// daemon's real metrics handler.
func TestProbesMatchDaemonHandler(t *testing.T) {
	m := loadManifests(t)
	c := m.daemonSet(t).Spec.Template.Spec.Containers[0]
	h := metrics.New(statusStub{}, metrics.Options{})
	h.SetReady(true)
	srv := httptest.NewServer(h)
	defer srv.Close()
	client := &http.Client{Timeout: 5 * time.Second}
	for _, p := range []*corev1.Probe{c.ReadinessProbe, c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil {
			t.Fatal("probe without httpGet (checked in detail by TestDaemonSetMatchesDaemon)")
		}
		resp, err := client.Get(srv.URL + p.HTTPGet.Path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s on the daemon's handler: %s, want 200", p.HTTPGet.Path, resp.Status)
		}
	}
}

// TestKubectlKustomize renders the base and the privileged overlay with
// kubectl's built-in kustomize, when kubectl is installed, and checks the
// rendered DaemonSets. (TestPrivilegedOverlay covers the overlay without
// kubectl.)
func TestKubectlKustomize(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Log("kubectl not installed: rendering with kustomize not checked")
		return
	}
	m := loadManifests(t)
	tree := t.TempDir()
	if err := os.CopyFS(tree, os.DirFS(m.root)); err != nil {
		t.Fatal(err)
	}
	// Until crds/ lands, stand in an empty kustomization for it.
	if _, err := os.Stat(filepath.Join(tree, "crds")); err != nil {
		if err := os.MkdirAll(filepath.Join(tree, "crds"), 0o755); err != nil {
			t.Fatal(err)
		}
		stub := "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: []\n"
		if err := os.WriteFile(filepath.Join(tree, "crds", "kustomization.yaml"), []byte(stub), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		dir        string
		privileged bool
	}{{".", false}, {"privileged", true}} {
		t.Run(c.dir, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, kubectl, "kustomize", filepath.Join(tree, c.dir)).Output()
			if err != nil {
				t.Fatalf("kubectl kustomize %s: %v", c.dir, stderrOf(err))
			}
			var dss []appsv1.DaemonSet
			for _, doc := range strings.Split(string(out), "\n---\n") {
				var head struct{ Kind string }
				if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
					t.Fatal(err)
				}
				if head.Kind == "DaemonSet" {
					var ds appsv1.DaemonSet
					if err := yaml.UnmarshalStrict([]byte(doc), &ds); err != nil {
						t.Fatal(err)
					}
					dss = append(dss, ds)
				}
			}
			if len(dss) != 1 {
				t.Fatalf("rendered %d DaemonSets, want 1", len(dss))
			}
			checkDaemonSet(t, dss[0], c.privileged)
		})
	}
}

// statusStub stands in for the daemon's status source.
type statusStub struct{}

func (statusStub) Status() api.Status { return api.Status{} }

// writeTLSSecret writes a kubernetes.io/tls Secret with a fresh
// certificate for host.
func writeTLSSecret(t *testing.T, path, name, namespace, host string) {
	t.Helper()
	pair := tlstest.NewCA(t, host+" CA").Server(t, host)
	s := corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": pair.CertPEM, "tls.key": pair.KeyPEM},
	}
	data, err := yaml.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func stderrOf(err error) error {
	if ee, ok := err.(*exec.ExitError); ok && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}
