package kube

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	fakediscovery "k8s.io/client-go/discovery/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
)

// servedAPI is a discovery client that lists the getambassador.io
// resources a test chooses, and may change while the source runs; with
// none it answers 404 as an API server without the group does.
type servedAPI struct {
	*fakediscovery.FakeDiscovery
	mu        sync.Mutex
	resources []string
	err       error
	asked     int
}

func newServedAPI(resources ...string) *servedAPI {
	a := &servedAPI{FakeDiscovery: &fakediscovery.FakeDiscovery{Fake: &k8stesting.Fake{}}}
	a.serve(resources...)
	return a
}

// allResources are the plurals of every watched kind.
func allResources() []string {
	var out []string
	for _, k := range Kinds {
		out = append(out, k.Resource)
	}
	return out
}

func (a *servedAPI) serve(resources ...string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.resources, a.err = resources, nil
}

func (a *servedAPI) fail(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.err = err
}

func (a *servedAPI) requests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.asked
}

func (a *servedAPI) ServerResourcesForGroupVersion(gv string) (*metav1.APIResourceList, error) {
	return a.ServerResourcesForGroupVersionWithContext(context.Background(), gv)
}

func (a *servedAPI) ServerResourcesForGroupVersionWithContext(_ context.Context, gv string) (*metav1.APIResourceList, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.asked++
	if a.err != nil {
		return nil, a.err
	}
	if gv != Group+"/"+Version || len(a.resources) == 0 {
		return nil, apierrors.NewNotFound(schema.GroupResource{}, gv)
	}
	l := &metav1.APIResourceList{GroupVersion: gv}
	for _, r := range a.resources {
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: r, Namespaced: true}, metav1.APIResource{Name: r + "/status"})
	}
	return l, nil
}

// everyKind is one object of each kind.
func everyKind() []string {
	return []string{"Host apps/h", "Listener apps/l", "Module apps/ambassador", "TCPMapping apps/m", "TLSContext apps/c"}
}

// startEveryKind starts a source over one object of every kind with
// discovery disc; it does not wait for the sync.
func startEveryKind(t *testing.T, ctx context.Context, disc *servedAPI, recheck time.Duration, log *zap.Logger, onChange func()) *Source {
	t.Helper()
	dyn := fakeDynamic(
		unstructuredObj("TCPMapping", "apps", "m", map[string]any{"port": int64(2222), "service": "b:1"}),
		unstructuredObj("TLSContext", "apps", "c", map[string]any{"hosts": []any{"a.example"}}),
		unstructuredObj("Host", "apps", "h", map[string]any{"hostname": "a.example"}),
		unstructuredObj("Listener", "apps", "l", map[string]any{"port": int64(8080), "protocol": "TCP", "securityModel": "XFP"}),
		unstructuredObj("Module", "apps", "ambassador", map[string]any{"config": map[string]any{}}),
	)
	src, err := New(Options{Dynamic: dyn, Clientset: fake.NewClientset(), Discovery: disc, Recheck: recheck,
		Recorder: record.NewFakeRecorder(10), Logger: log, Debounce: 10 * time.Millisecond, OnChange: onChange})
	if err != nil {
		t.Fatal(err)
	}
	src.Start(ctx)
	t.Cleanup(src.Close)
	return src
}

// TestSourceDiscovery: at start, only the kinds discovery lists are
// watched and waited for; a missing CRD is named in one warning, not
// waited for, and its kind is empty; discovery refused watches every
// kind; discovery failing leaves every kind pending.
func TestSourceDiscovery(t *testing.T) {
	for _, tc := range []struct {
		name     string
		served   []string
		err      error
		want     []string // resources after WaitForSync
		pending  []string
		warnings []string // "msg missing=[...]"
	}{
		{name: "every CRD", served: allResources(), want: everyKind()},
		{name: "TCPMapping only", served: []string{"tcpmappings"}, want: []string{"TCPMapping apps/m"},
			warnings: []string{"missing CRDs [tlscontexts.getambassador.io hosts.getambassador.io listeners.getambassador.io modules.getambassador.io]"}},
		{name: "no CRD of the group", want: nil,
			warnings: []string{"missing CRDs [tcpmappings.getambassador.io tlscontexts.getambassador.io hosts.getambassador.io listeners.getambassador.io modules.getambassador.io]"}},
		{name: "discovery forbidden", err: apierrors.NewForbidden(schema.GroupResource{}, "", errors.New("no")), want: everyKind(),
			warnings: []string{"discovery refused []"}},
		{name: "discovery failing", err: errors.New("connection refused"),
			pending:  []string{"Host", "Listener", "Module", "TCPMapping", "TLSContext"},
			warnings: []string{"discovery of getambassador.io/v3alpha1 failed []"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			disc := newServedAPI(tc.served...)
			if tc.err != nil {
				disc.fail(tc.err)
			}
			core, logs := observer.New(zapcore.WarnLevel)
			src := startEveryKind(t, ctx, disc, time.Hour, zap.New(core), nil)
			wait := 2 * time.Second
			if tc.pending != nil {
				wait = 300 * time.Millisecond
			}
			wctx, wcancel := context.WithTimeout(ctx, wait)
			defer wcancel()
			start := time.Now()
			pending := src.WaitForSync(wctx)
			if fmt.Sprint(pending) != fmt.Sprint(tc.pending) {
				t.Errorf("pending %v, want %v", pending, tc.pending)
			}
			if took := time.Since(start); tc.pending == nil && took > time.Second {
				t.Errorf("WaitForSync took %s", took)
			}
			rs, probs := src.Resources()
			if got := refStrings(rs); fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("resources %v, want %v", got, tc.want)
			}
			if len(probs) != 0 {
				t.Errorf("problems %v", probs)
			}
			var warnings []string
			for _, e := range logs.All() {
				missing := e.ContextMap()["missing"]
				if missing == nil {
					missing = []any{}
				}
				msg := strings.TrimPrefix(e.Message, "kubernetes API: ")
				msg, _, _ = strings.Cut(msg, ";")
				warnings = append(warnings, fmt.Sprintf("%s %v", msg, missing))
			}
			if fmt.Sprint(warnings) != fmt.Sprint(tc.warnings) {
				t.Errorf("warnings %q, want %q", warnings, tc.warnings)
			}
		})
	}
}

// TestSourceCRDInstalledLater: a kind whose CRD appears after the start is
// watched as soon as a reload asks discovery again (Recheck is an hour),
// and discovery stops being asked once every kind is watched.
func TestSourceCRDInstalledLater(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	disc := newServedAPI("tcpmappings")
	core, logs := observer.New(zapcore.InfoLevel)
	src := startEveryKind(t, ctx, disc, time.Hour, zap.New(core), nil)
	if pending := src.WaitForSync(ctx); len(pending) > 0 {
		t.Fatalf("pending %v", pending)
	}
	if got := refsOf(src); fmt.Sprint(got) != "[TCPMapping apps/m]" {
		t.Fatalf("resources %v, want the TCPMapping alone", got)
	}

	disc.serve("tcpmappings", "tlscontexts")
	waitUntil(t, ctx, "the TLSContext", func() bool { // each Resources is a reload asking
		return fmt.Sprint(refsOf(src)) == "[TCPMapping apps/m TLSContext apps/c]"
	})
	if n := logs.FilterMessageSnippet("CRDs now installed").Len(); n != 1 {
		t.Errorf("%d logs say a CRD was installed, want 1", n)
	}

	// The rest appear; once every kind is watched, discovery is left alone.
	disc.serve(allResources()...)
	src.Resources()
	waitUntil(t, ctx, "every kind", func() bool { return len(refsOf(src)) == 5 })
	asked := disc.requests()
	for i := 0; i < 3; i++ {
		src.Resources()
		time.Sleep(20 * time.Millisecond)
	}
	if n := disc.requests(); n != asked {
		t.Errorf("discovery asked %d more times after every kind was watched", n-asked)
	}
}

// TestSourceRecheck: with no reload asking, a discovery that failed at
// start is retried, and a missing kind is looked for again every Recheck.
func TestSourceRecheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	disc := newServedAPI()
	disc.fail(errors.New("connection refused"))
	changes := make(chan struct{}, 10)
	src := startEveryKind(t, ctx, disc, 50*time.Millisecond, nil, func() { changes <- struct{}{} })
	wctx, wcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer wcancel()
	if pending := src.WaitForSync(wctx); len(pending) != 5 {
		t.Errorf("pending %v while discovery fails, want the five kinds", pending)
	}
	for _, step := range []struct {
		served []string
		want   int
	}{{[]string{"tcpmappings"}, 1}, {allResources(), 5}} {
		disc.serve(step.served...)
		select {
		case <-changes:
		case <-ctx.Done():
			t.Fatalf("no OnChange after serving %v", step.served)
		}
		waitUntil(t, ctx, fmt.Sprint(step.want, " resources"), func() bool { return len(refsOf(src)) == step.want })
	}
}

// refsOf is what the source's Resources holds now, as refStrings.
func refsOf(src *Source) []string {
	rs, _ := src.Resources()
	return refStrings(rs)
}

// waitUntil polls cond every 10 ms until it holds or ctx ends.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}
