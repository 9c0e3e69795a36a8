package kube

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/tcpmap/tcpmap/userspace/config"
	"github.com/tcpmap/tcpmap/userspace/tlsconfig/tlstest"
)

func unstructuredObj(kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": Group + "/" + Version, "kind": kind,
		"metadata": map[string]any{"name": name, "namespace": ns, "uid": "uid-" + name, "resourceVersion": "1"},
		"spec":     spec,
	}}
	return u
}

func tlsSecret(t *testing.T, ns, name string) *corev1.Secret {
	p := tlstest.NewCA(t, name+" CA").Server(t, name+".example")
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, UID: types.UID("uid-" + name), ResourceVersion: "1"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": p.CertPEM, "tls.key": p.KeyPEM},
	}
}

// startSource starts a source with opts and waits for its first sync; it
// is closed when the test ends.
func startSource(t *testing.T, ctx context.Context, opts Options) *Source {
	t.Helper()
	if opts.Discovery == nil {
		opts.Discovery = newServedAPI(allResources()...)
	}
	src, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	src.Start(ctx)
	t.Cleanup(func() { src.Close() })
	if pending := src.WaitForSync(ctx); len(pending) > 0 {
		t.Fatalf("not synced: %v", pending)
	}
	return src
}

// TestSourceWithFakeClients runs the informers against fake clients: the
// objects load, only referenced Secrets are passed on, OnChange fires on a
// change, and Publish emits one Event per outcome change.
func TestSourceWithFakeClients(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	listKinds := map[schema.GroupVersionResource]string{}
	for _, k := range Kinds {
		listKinds[schema.GroupVersionResource{Group: Group, Version: Version, Resource: k.Resource}] = k.Kind + "List"
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds,
		unstructuredObj("TCPMapping", "apps", "tls", map[string]any{"port": int64(8443), "service": "b:1", "host": "a.example", "tls": "ctx"}),
		unstructuredObj("TCPMapping", "apps", "bad", map[string]any{"port": int64(70000), "service": "b:1"}),
		unstructuredObj("TLSContext", "apps", "ctx", map[string]any{"hosts": []any{"a.example"}, "secret": "used"}),
	)
	cs := fake.NewClientset(tlsSecret(t, "apps", "used"), tlsSecret(t, "apps", "unrelated"))
	changes := make(chan struct{}, 10)
	rec := record.NewFakeRecorder(100)
	src := startSource(t, ctx, Options{Dynamic: dyn, Clientset: cs, Recorder: rec, Debounce: 10 * time.Millisecond,
		OnChange: func() { changes <- struct{}{} }})

	rs, probs := src.Resources()
	var got []string
	for _, r := range rs {
		got = append(got, r.Ref.String())
	}
	sort.Strings(got)
	want := []string{"Secret apps/used", "TCPMapping apps/tls", "TLSContext apps/ctx"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("resources %v, want %v (the unrelated Secret left out)", got, want)
	}
	if len(probs) != 1 || !strings.HasPrefix(probs[0].Error(), "TCPMapping apps/bad: spec.port:") {
		t.Errorf("problems %v, want one on TCPMapping apps/bad spec.port", probs)
	}

	events := func() []string {
		var out []string
		for {
			select {
			case e := <-rec.Events:
				out = append(out, e)
			default:
				sort.Strings(out)
				return out
			}
		}
	}
	src.Publish(config.Outcomes(rs, probs, "default"))
	first := events()
	if len(first) != 4 {
		t.Fatalf("events after the first reload: %q, want 4", first)
	}
	if !strings.HasPrefix(first[0], "Normal Accepted") || !strings.HasPrefix(first[3], "Warning Rejected rejected by tcpmap: spec.port:") {
		t.Errorf("events %q", first)
	}
	src.Publish(config.Outcomes(rs, probs, "default"))
	if again := events(); len(again) != 0 {
		t.Errorf("same outcomes published again: %q", again)
	}

	// A change reaches OnChange.
	drain := func() {
		for len(changes) > 0 {
			<-changes
		}
	}
	drain()
	gvr := schema.GroupVersionResource{Group: Group, Version: Version, Resource: "tcpmappings"}
	if err := dyn.Resource(gvr).Namespace("apps").Delete(ctx, "bad", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changes:
	case <-ctx.Done():
		t.Fatal("no OnChange after a delete")
	}
	rs, probs = src.Resources()
	if len(probs) != 0 || len(rs) != 3 {
		t.Errorf("after the delete: %v, %v", rs, probs)
	}
	src.Publish(config.Outcomes(rs, probs, "default"))
	if e := events(); len(e) != 0 {
		t.Errorf("a deleted object's outcome is not an event: %q", e)
	}
}

// TestSourceWatchNamespace: with Namespace set, objects of other
// namespaces are not read.
func TestSourceWatchNamespace(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listKinds := map[schema.GroupVersionResource]string{}
	for _, k := range Kinds {
		listKinds[schema.GroupVersionResource{Group: Group, Version: Version, Resource: k.Resource}] = k.Kind + "List"
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), listKinds,
		unstructuredObj("TCPMapping", "apps", "mine", map[string]any{"port": int64(2222), "service": "b:1"}),
		unstructuredObj("TCPMapping", "other", "theirs", map[string]any{"port": int64(2223), "service": "b:1"}),
	)
	src := startSource(t, ctx, Options{Dynamic: dyn, Clientset: fake.NewClientset(), Recorder: record.NewFakeRecorder(10), Namespace: "apps"})
	rs, probs := src.Resources()
	if len(rs) != 1 || rs[0].Ref.String() != "TCPMapping apps/mine" || len(probs) != 0 {
		t.Errorf("got %v, %v; want only TCPMapping apps/mine", rs, probs)
	}
}
