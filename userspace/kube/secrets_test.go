package kube

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/manager"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

// secretAPI is a fake clientset whose Secret lists and watches honour
// field selectors (type, metadata.name) as the API server does, which the
// fake alone ignores, and which counts the open Secret watches by
// "namespace?selector".
type secretAPI struct {
	*fake.Clientset
	mu   sync.Mutex
	open map[string]int
	seen map[string]bool
}

func newSecretAPI(objs ...runtime.Object) *secretAPI {
	a := &secretAPI{Clientset: fake.NewClientset(objs...), open: map[string]int{}, seen: map[string]bool{}}
	gvr := corev1.SchemeGroupVersion.WithResource("secrets")
	match := func(sel fields.Selector, obj runtime.Object) bool {
		sec, ok := obj.(*corev1.Secret)
		return ok && sel.Matches(fields.Set{"metadata.name": sec.Name, "metadata.namespace": sec.Namespace, "type": string(sec.Type)})
	}
	a.PrependReactor("list", "secrets", func(action k8stesting.Action) (bool, runtime.Object, error) {
		la := action.(k8stesting.ListActionImpl)
		obj, err := a.Tracker().List(gvr, la.GetKind(), la.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		l := obj.(*corev1.SecretList)
		var items []corev1.Secret
		for i := range l.Items {
			if match(la.GetListRestrictions().Fields, &l.Items[i]) {
				items = append(items, l.Items[i])
			}
		}
		l.Items = items
		return true, l, nil
	})
	a.PrependWatchReactor("secrets", func(action k8stesting.Action) (bool, watch.Interface, error) {
		wa := action.(k8stesting.WatchActionImpl)
		w, err := a.Tracker().Watch(gvr, wa.GetNamespace())
		if err != nil {
			return true, nil, err
		}
		sel := wa.GetWatchRestrictions().Fields
		key := wa.GetNamespace() + "?" + sel.String()
		a.mu.Lock()
		a.open[key]++
		a.seen[key] = true
		a.mu.Unlock()
		fw := watch.Filter(w, func(e watch.Event) (watch.Event, bool) { return e, match(sel, e.Object) })
		return true, &countedWatch{Interface: fw, done: func() {
			a.mu.Lock()
			a.open[key]--
			a.mu.Unlock()
		}}, nil
	})
	return a
}

// openWatches is how many Secret watches on namespace?selector are open.
func (a *secretAPI) openWatches(key string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.open[key]
}

// watched lists every namespace?selector a Secret watch was opened with.
func (a *secretAPI) watched() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return sortedKeys(a.seen)
}

type countedWatch struct {
	watch.Interface
	once sync.Once
	done func()
}

func (w *countedWatch) Stop() {
	w.once.Do(w.done)
	w.Interface.Stop()
}

func opaqueSecret(ns, name string, certPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + name), ResourceVersion: "1"},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"tls.crt": certPEM},
	}
}

func fakeDynamic(objs ...runtime.Object) *dynamicfake.FakeDynamicClient {
	listKinds := map[schema.GroupVersionResource]string{}
	for _, k := range Kinds {
		listKinds[schema.GroupVersionResource{Group: Group, Version: Version, Resource: k.Resource}] = k.Kind + "List"
	}
	return dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds, objs...)
}

func refStrings(rs []config.Resource) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Ref.String())
	}
	sort.Strings(out)
	return out
}

// TestSourceSecretByName: a TLSContext's ca_secret naming an Opaque
// Secret gets it through a watch of that name alone; an unreferenced
// Opaque Secret is not loaded; a change of the Secret reaches OnChange;
// dropping the reference stops the watch; a Secret named before it exists
// is picked up when it is created.
func TestSourceSecretByName(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca := tlstest.NewCA(t, "client-ca")
	srv := tlstest.NewCA(t, "server-ca").Server(t, "a.example")
	ctxSpec := map[string]any{"hosts": []any{"a.example"}, "secret": "srv", "ca_secret": "ca", "cert_required": true}
	dyn := fakeDynamic(unstructuredObj("TLSContext", "apps", "ctx", ctxSpec))
	srvSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "srv", Namespace: "apps", UID: "uid-srv", ResourceVersion: "1"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": srv.CertPEM, "tls.key": srv.KeyPEM},
	}
	api := newSecretAPI(srvSecret, opaqueSecret("apps", "ca", ca.CertPEM), opaqueSecret("apps", "unrelated", ca.CertPEM))
	changes := make(chan struct{}, 10)
	rec := record.NewFakeRecorder(100)
	src := startSource(t, ctx, Options{Dynamic: dyn, Clientset: api, Recorder: rec, Debounce: 10 * time.Millisecond,
		OnChange: func() { changes <- struct{}{} }})

	rs, probs := src.Resources()
	if got, want := refStrings(rs), []string{"Secret apps/ca", "Secret apps/srv", "TLSContext apps/ctx"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("resources %v, want %v (the unrelated Opaque Secret left out)", got, want)
	}
	if len(probs) != 0 {
		t.Errorf("problems %v", probs)
	}
	// The TLS Secret comes from the kubernetes.io/tls informer; only the
	// Opaque one has a watch of its own; nothing watches every Secret.
	const caWatch = "apps?metadata.name=ca"
	if got, want := api.watched(), []string{"?type=kubernetes.io/tls", caWatch}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Secret watches %v, want %v", got, want)
	}

	// The Opaque Secret gets its Event like a TLS one.
	src.Publish(config.Outcomes(rs, probs, "default"))
	var events []string
	for len(rec.Events) > 0 {
		events = append(events, <-rec.Events)
	}
	if len(events) != 3 {
		t.Errorf("events %q, want 3 Accepted (TLSContext and both Secrets)", events)
	}

	wait := func(what string) {
		t.Helper()
		select {
		case <-changes:
		case <-ctx.Done():
			t.Fatalf("no OnChange after %s", what)
		}
	}
	drain := func() {
		for len(changes) > 0 {
			<-changes
		}
	}

	// A rotation of the CA bundle reaches OnChange and the resources.
	drain()
	ca2 := tlstest.NewCA(t, "client-ca-2")
	sec := opaqueSecret("apps", "ca", ca2.CertPEM)
	sec.ResourceVersion = "2"
	if _, err := api.CoreV1().Secrets("apps").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("an update of the Opaque Secret")
	// The OnChange may be the first sync's, late: the update follows.
	waitUntil(t, ctx, "Secret apps/ca with the new certificate", func() bool {
		rs, _ = src.Resources()
		for _, r := range rs {
			if r.Ref.Name == "ca" && string(r.Secret.Cert) == string(ca2.CertPEM) {
				return true
			}
		}
		return false
	})

	// Dropping the reference stops the watch, after the reload.
	drain()
	delete(ctxSpec, "ca_secret")
	delete(ctxSpec, "cert_required")
	update := func(rv string) {
		t.Helper()
		u := unstructuredObj("TLSContext", "apps", "ctx", ctxSpec)
		u.SetResourceVersion(rv)
		if _, err := dyn.Resource(schema.GroupVersionResource{Group: Group, Version: Version, Resource: "tlscontexts"}).
			Namespace("apps").Update(ctx, u, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update("2")
	wait("the TLSContext update")
	rs, _ = src.Resources()
	if got, want := refStrings(rs), []string{"Secret apps/srv", "TLSContext apps/ctx"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after dropping ca_secret: resources %v, want %v", got, want)
	}
	for api.openWatches(caWatch) > 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("the watch of Secret apps/ca is still open after its reference was dropped")
		case <-time.After(10 * time.Millisecond):
		}
	}

	// A Secret named before it exists arrives when it is created.
	drain()
	ctxSpec["ca_secret"] = "later"
	update("3")
	wait("the TLSContext update")
	if rs, _ = src.Resources(); strings.Contains(fmt.Sprint(refStrings(rs)), "Secret apps/later") {
		t.Fatal("Secret apps/later loaded before it exists")
	}
	drain()
	if _, err := api.CoreV1().Secrets("apps").Create(ctx, opaqueSecret("apps", "later", ca.CertPEM), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	wait("the creation of the named Secret")
	rs, _ = src.Resources()
	if got, want := refStrings(rs), []string{"Secret apps/later", "Secret apps/srv", "TLSContext apps/ctx"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after creating the named Secret: resources %v, want %v", got, want)
	}
}

// TestSourceSecretOutsideWatchNamespace: with --watch-namespace, a Secret
// named in another namespace is not watched, and the problem says why.
func TestSourceSecretOutsideWatchNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca := tlstest.NewCA(t, "client-ca")
	dyn := fakeDynamic(unstructuredObj("TLSContext", "apps", "ctx",
		map[string]any{"hosts": []any{"a.example"}, "ca_secret": "ca.other"}))
	api := newSecretAPI(opaqueSecret("other", "ca", ca.CertPEM))
	src := startSource(t, ctx, Options{Dynamic: dyn, Clientset: api, Recorder: record.NewFakeRecorder(10), Namespace: "apps"})
	rs, probs := src.Resources()
	if got, want := refStrings(rs), []string{"TLSContext apps/ctx"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("resources %v, want %v", got, want)
	}
	want := "TLSContext apps/ctx: spec.ca_secret: Secret other/ca is outside the watched namespace apps (--watch-namespace)"
	if len(probs) != 1 || !strings.HasPrefix(probs[0].Error(), want) || probs[0].IsWarning() {
		t.Errorf("problems %v, want one error %q", probs, want)
	}
	for _, w := range api.watched() {
		if strings.HasPrefix(w, "other?") || !strings.HasPrefix(w, "apps?") {
			t.Errorf("Secret watch %q outside the watched namespace", w)
		}
	}
}

// TestSourceReferencedByOtherSources: the Secrets a file's resources name
// are passed on from Kubernetes, a TLS one at once and an Opaque one once
// its watch by name has listed; one the files hold themselves is not
// (their copy would clash); one outside the watched namespace is no
// problem of the source's; once no file names them they are gone, and
// so is the watch.
func TestSourceReferencedByOtherSources(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ca := tlstest.NewCA(t, "client-ca")
	srv := tlstest.NewCA(t, "server-ca").Server(t, "a.example")
	tlsSec := func(name string) *corev1.Secret {
		return &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "apps", UID: types.UID("uid-" + name), ResourceVersion: "1"},
			Type:       corev1.SecretTypeTLS,
			Data:       map[string][]byte{"tls.crt": srv.CertPEM, "tls.key": srv.KeyPEM},
		}
	}
	api := newSecretAPI(tlsSec("cluster-cert"), tlsSec("file-cert"), tlsSec("unrelated"), opaqueSecret("apps", "cluster-ca", ca.CertPEM))
	changes := make(chan struct{}, 10)
	src := startSource(t, ctx, Options{Dynamic: fakeDynamic(), Clientset: api, Recorder: record.NewFakeRecorder(10),
		Namespace: "apps", Debounce: 10 * time.Millisecond, OnChange: func() { changes <- struct{}{} }})

	file := fmt.Sprintf(`apiVersion: getambassador.io/v3alpha1
kind: TLSContext
metadata: {name: ctx, namespace: apps}
spec: {hosts: [a.example], secret: cluster-cert, ca_secret: cluster-ca}
---
apiVersion: getambassador.io/v3alpha1
kind: TLSContext
metadata: {name: elsewhere, namespace: apps}
spec: {hosts: [b.example], ca_secret: ca.other}
---
apiVersion: getambassador.io/v3alpha1
kind: Host
metadata: {name: h, namespace: apps}
spec: {hostname: c.example, tlsSecret: {name: file-cert}}
---
apiVersion: v1
kind: Secret
metadata: {name: file-cert, namespace: apps}
type: kubernetes.io/tls
stringData: {tls.crt: %q, tls.key: %q}
`, srv.CertPEM, srv.KeyPEM)
	others, probs := config.LoadBytes("conf.yaml", []byte(file), config.Origin{Source: "file"})
	if len(probs) != 0 || len(others) != 4 {
		t.Fatalf("the file: %v, %v", refStrings(others), probs)
	}

	src.Referenced(others)
	rs, probs := src.Resources()
	// The TLS Secret is there at once; the Opaque one once the watch by
	// name that Referenced started has listed, which on a busy machine
	// can be this first call already.
	const both = "[Secret apps/cluster-ca Secret apps/cluster-cert]"
	first := fmt.Sprint(refStrings(rs))
	if first != "[Secret apps/cluster-cert]" && first != both {
		t.Errorf("first Resources: %v, want the TLS Secret apps/cluster-cert (and perhaps apps/cluster-ca)", first)
	}
	if len(probs) != 0 {
		t.Errorf("problems %v, want none: the files report their own", probs)
	}
	if first != both {
		select {
		case <-changes: // the Opaque Secret's watch listed it
		case <-ctx.Done():
			t.Fatal("no OnChange once the Opaque Secret's watch listed")
		}
	}
	waitUntil(t, ctx, "the Opaque Secret", func() bool {
		src.Referenced(others)
		rs, _ = src.Resources()
		return fmt.Sprint(refStrings(rs)) == both
	})
	for _, r := range rs {
		if r.Origin.Source != SourceName {
			t.Errorf("%s has origin %+v, want %s", r.Ref, r.Origin, SourceName)
		}
	}
	if got, want := api.watched(), []string{"apps?metadata.name=cluster-ca", "apps?type=kubernetes.io/tls"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("Secret watches %v, want %v", got, want)
	}

	src.Referenced(nil)
	if rs, _ := src.Resources(); len(rs) != 0 {
		t.Errorf("no file names a Secret: %v", refStrings(rs))
	}
	waitUntil(t, ctx, "the watch of the Opaque Secret to stop", func() bool {
		return api.openWatches("apps?metadata.name=cluster-ca") == 0
	})
}

// The daemon hands the source to the manager, which tells it the other
// sources' resources through this interface.
var _ manager.Referrer = (*Source)(nil)
