package kube

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/tcpmap/tcpmap/internal/testutil"
)

// token is the bearer token of the test's cluster-admin (system:masters).
const token = "tcpmap-e2e-token"

// cluster is an etcd and a kube-apiserver on loopback.
type cluster struct {
	dir        string
	url        string
	kubeconfig string
	dyn        dynamic.Interface
	cs         kubernetes.Interface
	apiserver  *proc
	// What startAPIServer needs to start it again after an outage.
	apiserverArgs []string
	probeClient   *http.Client
	starts        int
}

// proc is a server process in its own process group.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	once   sync.Once
}

func startProc(t *testing.T, name, logFile string, bin string, args ...string) *proc {
	t.Helper()
	f, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, log: logFile, exited: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		f.Close()
		close(p.exited)
	}()
	return p
}

// stopGrace is how long stop waits after SIGTERM. kube-apiserver drains
// its open watches (tcpmapd's informers) for longer than any test wants to
// wait, and an outage is a crash as much as a shutdown, so it is short.
const stopGrace = 3 * time.Second

// stop sends SIGTERM, waits up to stopGrace, then kills the process group.
func (p *proc) stop() {
	p.once.Do(func() {
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(stopGrace):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	})
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// dumpOnFailure prints the tail of a log when the test failed.
func dumpOnFailure(t *testing.T, name, file string) {
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		b, _ := os.ReadFile(file)
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("--- last of %s log (%s) ---\n%s", name, file, b)
	})
}

// writePEM writes blocks to path, mode 0600.
func writePEM(t *testing.T, path string, blocks ...*pem.Block) {
	t.Helper()
	var b bytes.Buffer
	for _, bl := range blocks {
		if err := pem.Encode(&b, bl); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pkcs8(t *testing.T, k *ecdsa.PrivateKey) *pem.Block {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
}

// startCluster starts etcd, then kube-apiserver, and waits for /readyz.
// Cleanup stops the apiserver first: stopped together, it can hang for
// minutes retrying etcd.
func startCluster(t *testing.T, ctx context.Context) *cluster {
	t.Helper()
	dir := t.TempDir()
	c := &cluster{dir: dir}

	// Keys: the service account signing pair and a self-signed serving
	// certificate for 127.0.0.1 that the kubeconfig trusts.
	sa := ecKey(t)
	writePEM(t, filepath.Join(dir, "sa.key"), pkcs8(t, sa))
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "sa.pub"), &pem.Block{Type: "PUBLIC KEY", Bytes: pub})
	sk := ecKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &sk.PublicKey, sk)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(dir, "serving.crt")
	writePEM(t, caFile, &pem.Block{Type: "CERTIFICATE", Bytes: der})
	writePEM(t, filepath.Join(dir, "serving.key"), pkcs8(t, sk))
	if err := os.WriteFile(filepath.Join(dir, "tokens.csv"), []byte(token+",admin,admin-uid,system:masters\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	eport, pport, aport := testutil.FreePort(t), testutil.FreePort(t), testutil.FreePort(t)
	eurl := "http://127.0.0.1:" + strconv.Itoa(eport)
	purl := "http://127.0.0.1:" + strconv.Itoa(pport)
	etcd := startProc(t, "etcd", filepath.Join(dir, "etcd.log"), filepath.Join(serverBin, "etcd"),
		"--name", "test", "--data-dir", filepath.Join(dir, "etcd-data"),
		"--listen-client-urls", eurl, "--advertise-client-urls", eurl,
		"--listen-peer-urls", purl, "--initial-advertise-peer-urls", purl,
		"--initial-cluster", "test="+purl, "--listen-metrics-urls", "http://127.0.0.1:0",
		"--unsafe-no-fsync")
	t.Cleanup(etcd.stop)
	dumpOnFailure(t, "etcd", etcd.log)
	hc := &http.Client{Timeout: 2 * time.Second}
	waitFor(t, ctx, "etcd /health", func() error {
		if !etcd.alive() {
			return errStop("etcd exited")
		}
		resp, err := hc.Get(eurl + "/health")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})

	c.apiserverArgs = []string{"--etcd-servers=" + eurl,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port=" + strconv.Itoa(aport),
		"--endpoint-reconciler-type=none",
		"--tls-cert-file=" + caFile, "--tls-private-key-file=" + filepath.Join(dir, "serving.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + filepath.Join(dir, "sa.pub"),
		"--service-account-signing-key-file=" + filepath.Join(dir, "sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--token-auth-file=" + filepath.Join(dir, "tokens.csv"), "--authorization-mode=AlwaysAllow",
		"--disable-admission-plugins=ServiceAccount"}
	c.url = "https://127.0.0.1:" + strconv.Itoa(aport)
	caPEM, _ := os.ReadFile(caFile)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	c.probeClient = &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c.startAPIServer(t, ctx)

	c.kubeconfig = filepath.Join(dir, "kubeconfig")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: %q, certificate-authority: %q}
users:
- name: admin
  user: {token: %q}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, c.url, caFile, token)
	if err := os.WriteFile(c.kubeconfig, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = dynamic.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	if c.cs, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	return c
}

// installCRDs creates the CRDs of deploy/kubernetes/crds, as its
// kustomization lists them, and waits until each is Established and the
// API server's discovery lists it. With plurals ("tcpmappings"), only
// those CRDs are created.
func (c *cluster) installCRDs(t *testing.T, ctx context.Context, plurals ...string) {
	t.Helper()
	dir := filepath.Join("..", "..", "deploy", "kubernetes", "crds")
	var kust struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &kust); err != nil {
		t.Fatalf("kustomization.yaml: %v", err)
	}
	if len(kust.Resources) != 5 {
		t.Fatalf("kustomization.yaml lists %d CRDs, want 5: %v", len(kust.Resources), kust.Resources)
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	for _, f := range kust.Resources {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		u := &unstructured.Unstructured{Object: obj}
		if plural, _, _ := unstructured.NestedString(obj, "spec", "names", "plural"); len(plurals) > 0 && !slices.Contains(plurals, plural) {
			continue
		}
		if _, err := c.dyn.Resource(gvr).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create CRD %s: %v", f, err)
		}
		names = append(names, u.GetName())
	}
	for _, n := range names {
		waitFor(t, ctx, "CRD "+n+" Established", func() error {
			u, err := c.dyn.Resource(gvr).Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return err
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			for _, x := range conds {
				m, _ := x.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return nil
				}
			}
			return fmt.Errorf("not established yet")
		})
		plural, group, _ := strings.Cut(n, ".")
		waitFor(t, ctx, "discovery lists "+n, func() error {
			l, err := c.cs.Discovery().ServerResourcesForGroupVersion(group + "/v3alpha1")
			if err != nil {
				return err
			}
			for _, r := range l.APIResources {
				if r.Name == plural {
					return nil
				}
			}
			return fmt.Errorf("not listed yet")
		})
	}
}

// errStop ends waitFor at once.
type errStop string

func (e errStop) Error() string { return string(e) }

// waitFor polls f every 100 ms until it returns nil, returns an errStop,
// or ctx ends; the test fails with the last error.
func waitFor(t *testing.T, ctx context.Context, desc string, f func() error) {
	t.Helper()
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if _, stop := err.(errStop); stop {
			t.Fatalf("waiting for %s: %v", desc, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error: %v)", desc, ctx.Err(), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// startAPIServer starts kube-apiserver on the cluster's port and etcd and
// waits for /readyz; the outage test calls it again after a stop. Each
// start logs to a file of its own. Cleanup stops it before etcd: stopped
// together, it can hang for minutes retrying etcd.
func (c *cluster) startAPIServer(t *testing.T, ctx context.Context) {
	t.Helper()
	c.starts++
	logFile := filepath.Join(c.dir, fmt.Sprintf("apiserver-%d.log", c.starts))
	c.apiserver = startProc(t, "kube-apiserver", logFile, filepath.Join(serverBin, "kube-apiserver"), c.apiserverArgs...)
	t.Cleanup(c.apiserver.stop) // runs before etcd.stop
	dumpOnFailure(t, "kube-apiserver", logFile)
	waitFor(t, ctx, "kube-apiserver /readyz", func() error {
		if !c.apiserver.alive() {
			return errStop("kube-apiserver exited")
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.url+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := c.probeClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if string(b) != "ok" {
			return fmt.Errorf("readyz: %q", b)
		}
		return nil
	})
}
